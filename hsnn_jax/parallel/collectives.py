"""Explicit collectives for code running inside `jax.shard_map` over the ('data', 'model') mesh."""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from hsnn_jax.retrieval.topk import fast_top_k


def fold_in_shard(key: jax.Array, axis: str) -> jax.Array:
  """A key distinct per shard of `axis` and fixed by (key, shard index): deterministic."""
  return jax.random.fold_in(key, jax.lax.axis_index(axis))


def all_gather_top_k(values: jax.Array, ids: jax.Array, k: int, axis: str
                     ) -> Tuple[jax.Array, jax.Array]:
  """Global top-k from every shard's local top-k: all_gather over `axis`, then one merge.

  Args:
    values: [B, k_local] this shard's best scores, descending (-inf for empty slots).
    ids: [B, k_local] int32 global item ids of those scores.
    k: results wanted, k <= shards * k_local.
    axis: the mesh axis the candidates are split over.

  Returns:
    values [B, k] descending and ids [B, k], identical on every shard of `axis`.
  """
  all_values = jax.lax.all_gather(values, axis, axis=1, tiled=True)  # [B, shards * k_local]
  all_ids = jax.lax.all_gather(ids, axis, axis=1, tiled=True)
  top_values, pos = fast_top_k(all_values, k)
  return top_values, jnp.take_along_axis(all_ids, pos, axis=1)
