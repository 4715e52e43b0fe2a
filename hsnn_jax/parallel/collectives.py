"""Explicit collectives for code running inside `jax.shard_map` over the ('data', 'model') mesh."""

from __future__ import annotations

import jax


def fold_in_shard(key: jax.Array, axis: str) -> jax.Array:
  """A key distinct per shard of `axis` and fixed by (key, shard index): deterministic."""
  return jax.random.fold_in(key, jax.lax.axis_index(axis))
