"""Exhaustive top-K with the item corpus split over the mesh's 'model' axis.

The encoded corpus (`EncodedCorpus`: G chunks of C consecutive item ids) is split by chunk over
'model', so each device holds about N / M items. Inside a `jax.shard_map` every device scans its
own chunks with the single-device `top_k_over_corpus`, then the per-shard top-K lists are
all-gathered over 'model' and merged into the global top-K. Users are split over 'data' when
their number divides the data size (replicated otherwise).

The result equals `exhaustive_top_k` on one device: the same scores per (user, item), the same
exact top-K. Where several items tie with the K-th score, which of them is returned may differ
(as between `fast_top_k` and `lax.top_k`).
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hsnn_jax.models.scorer import PyTree, Scorer, UserBatch
from hsnn_jax.parallel.mesh import DATA, MODEL
from hsnn_jax.retrieval.exhaustive import EncodedCorpus, encode_corpus, top_k_over_corpus
from hsnn_jax.retrieval.topk import fast_top_k


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


def shard_corpus(corpus: EncodedCorpus, mesh: Mesh) -> EncodedCorpus:
  """Splits the chunk axis G over 'model', padding it to a multiple of the model size.

  Padding chunks repeat the last chunk's ids (so every chunk still holds consecutive ids, as
  exclusion masking needs) and are marked invalid.
  """
  shards = mesh.shape[MODEL]
  pad = -corpus.ids.shape[0] % shards
  if pad:
    repeat = lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)])
    invalid = jnp.zeros((pad,) + corpus.valid.shape[1:], bool)
    corpus = EncodedCorpus(reprs=jax.tree.map(repeat, corpus.reprs), ids=repeat(corpus.ids),
                           valid=jnp.concatenate([corpus.valid, invalid]))
  split = NamedSharding(mesh, P(MODEL))
  return jax.device_put(corpus, jax.tree.map(lambda _: split, corpus))


def encode_sharded_corpus(scorer: Scorer, num_items: int, mesh: Mesh, item_chunk: int = 8192,
                          item_valid_mask: Optional[np.ndarray] = None) -> EncodedCorpus:
  """`encode_corpus` then `shard_corpus`, with chunks small enough that every shard gets items.

  The corpus is encoded chunk by chunk on the default device before it is split, so peak memory
  on that device is the whole encoded corpus once.
  """
  chunk = max(1, min(int(item_chunk), -(-num_items // mesh.shape[MODEL])))
  return shard_corpus(encode_corpus(scorer, num_items, chunk, item_valid_mask), mesh)


@functools.partial(jax.jit, static_argnames=("score", "k", "mesh"))
def _sharded_search(score: Callable, user_repr: PyTree, corpus: EncodedCorpus, k: int,
                    exclude: Optional[jax.Array], mesh: Mesh) -> Tuple[jax.Array, jax.Array]:
  batch = jax.tree.leaves(user_repr)[0].shape[0]
  users = P(DATA) if batch % mesh.shape[DATA] == 0 else P()

  def local(user_repr, corpus, exclude):
    scores, ids = top_k_over_corpus(score, user_repr, corpus, k, exclude)
    return all_gather_top_k(scores, ids, k, MODEL)

  # check_vma=False: the scan inside top_k_over_corpus starts from a shard-invariant empty
  # top-k and carries shard-varying values; the all_gather makes the result invariant again.
  return jax.shard_map(local, mesh=mesh, in_specs=(users, P(MODEL), users),
                       out_specs=(users, users), check_vma=False)(user_repr, corpus, exclude)


def sharded_top_k(scorer: Scorer, users: UserBatch, k: int, mesh: Mesh, *,
                  corpus: Optional[EncodedCorpus] = None, num_items: Optional[int] = None,
                  item_chunk: int = 8192, exclude: Optional[jax.Array] = None,
                  item_valid_mask: Optional[np.ndarray] = None) -> Tuple[jax.Array, jax.Array]:
  """Exact top-k over a corpus split across 'model'; the arguments mirror `exhaustive_top_k`.

  Args:
    scorer: any `Scorer`.
    users: B users.
    k: number of results.
    mesh: a ('data', 'model') mesh (hsnn_jax/parallel/mesh.py).
    corpus: an `encode_sharded_corpus` / `shard_corpus` result to reuse; otherwise it is built
      from num_items (or item_valid_mask [N]) and item_chunk.
    exclude: optional [B, E] int32 item ids never to return (-1 = padding).
    item_valid_mask: optional [N] bool; False items are never returned.

  Returns:
    scores [B, k] float32 descending, item_ids [B, k] int32 (-1 where the score is -inf).
  """
  if corpus is None:
    if num_items is None and item_valid_mask is None:
      raise ValueError("give num_items, item_valid_mask or corpus")
    size = num_items if num_items is not None else int(np.shape(item_valid_mask)[0])
    corpus = encode_sharded_corpus(scorer, size, mesh, item_chunk, item_valid_mask)
  user_repr = jax.jit(scorer.encode_users)(users)
  if exclude is None:
    exclude = jnp.full((users.user.shape[0], 1), -1, jnp.int32)
  chex.assert_rank(exclude, 2)
  return _sharded_search(scorer.score, user_repr, corpus, k, jnp.asarray(exclude, jnp.int32), mesh)
