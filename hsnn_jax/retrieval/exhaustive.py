"""Exhaustive (brute-force) top-K retrieval for any `Scorer`, memory-bounded over items and users.

The corpus is encoded once, in fixed-size chunks (`encode_corpus`). Retrieval then scans the item
chunks with `lax.scan`: score [B, item_chunk] -> mask excluded and padded items to -inf -> merge
into a running exact top-K. Peak memory is O(B * (item_chunk + K)) scores, whatever N is.
`exhaustive_top_k_for_users` drives many users through it in fixed-size user chunks (the last one
padded), so one jit compilation serves them all.

Results: scores [B, K] descending and item ids [B, K]; a slot whose score is -inf (fewer than K
eligible items, or the scorer itself returned -inf) holds item id -1. Excluded and padded items are
never returned.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.chunking import map_in_chunks
from hsnn_jax.models.scorer import PyTree, Scorer, UserBatch
from hsnn_jax.retrieval.topk import empty_top_k, fast_top_k, merge_top_k


@chex.dataclass(frozen=True)
class EncodedCorpus:
  """Item reprs in scan layout. G chunks of C items; the last chunk is padded.

  reprs: the scorer's item repr pytree, every leaf [G, C, ...].
  ids:   [G, C] int32 item ids (padding slots repeat a valid id; `valid` masks them).
  valid: [G, C] bool, False for padding and for items masked out by `item_valid_mask`.
  """

  reprs: PyTree
  ids: chex.Array
  valid: chex.Array


@functools.partial(jax.jit, static_argnums=0)
def _encode_chunk(encode_items: Callable, ids: jax.Array) -> PyTree:
  return encode_items(ids)


def encode_corpus(scorer: Scorer, num_items: int, item_chunk: int,
                  item_valid_mask: Optional[np.ndarray] = None) -> EncodedCorpus:
  """Encodes items 0..num_items-1 with `scorer.encode_items`, item_chunk at a time (host loop).

  Args:
    scorer: any `Scorer`.
    num_items: corpus size N.
    item_chunk: items per chunk C (also the scan step width of retrieval).
    item_valid_mask: optional [N] bool; False items are never returned.
  """
  item_chunk = min(int(item_chunk), num_items)
  num_chunks = -(-num_items // item_chunk)
  ids = np.arange(num_chunks * item_chunk, dtype=np.int32)
  valid = ids < num_items
  if item_valid_mask is not None:
    chex.assert_shape(item_valid_mask, (num_items,))
    valid[:num_items] &= np.asarray(item_valid_mask, bool)
  ids = np.minimum(ids, num_items - 1).reshape(num_chunks, item_chunk)
  chunks = [_encode_chunk(scorer.encode_items, jnp.asarray(row)) for row in ids]
  reprs = jax.tree.map(lambda *leaves: jnp.stack(leaves), *chunks)
  return EncodedCorpus(reprs=reprs, ids=jnp.asarray(ids),
                       valid=jnp.asarray(valid.reshape(num_chunks, item_chunk)))


def _mask_excluded(scores: jax.Array, exclude: jax.Array, first_id: jax.Array) -> jax.Array:
  """Sets scores[b, e - first_id] = -inf for each excluded id e in this chunk's id range.

  A scatter of B * E entries instead of comparing every excluded id with every item (B * E * C).
  """
  pos = exclude - first_id
  pos = jnp.where((exclude >= 0) & (pos >= 0), pos, scores.shape[1])  # out of range -> dropped
  rows = jnp.broadcast_to(jnp.arange(scores.shape[0])[:, None], pos.shape)
  return scores.at[rows, pos].set(-jnp.inf, mode="drop")


@functools.partial(jax.jit, static_argnames=("score", "k"))
def top_k_over_corpus(score: Callable, user_repr: PyTree, corpus: EncodedCorpus, k: int,
                      exclude: Optional[jax.Array] = None) -> Tuple[jax.Array, jax.Array]:
  """Exact top-k items for B encoded users by a scan over the corpus chunks.

  Args:
    score: `Scorer.score`, (user_repr [B], item_repr [C]) -> [B, C].
    user_repr: encoded users, leaves with leading dim B.
    corpus: from `encode_corpus`; its chunks hold consecutive ids (chunk g starts at g * C).
    k: static number of results.
    exclude: optional [B, E] int32 item ids never to return (-1 = padding).

  Returns:
    scores [B, k] descending, item ids [B, k] int32 (-1 where the score is -inf).
  """
  batch = jax.tree.leaves(user_repr)[0].shape[0]
  chunk = corpus.ids.shape[1]

  def step(carry, xs):
    item_repr, ids, valid = xs
    scores = jnp.where(valid[None, :], score(user_repr, item_repr), -jnp.inf)
    chex.assert_shape(scores, (batch, chunk))
    if exclude is not None:
      scores = _mask_excluded(scores, exclude, ids[0])
    top_scores, pos = fast_top_k(scores, min(k, chunk))
    return merge_top_k(*carry, top_scores, ids[pos], k), None

  (scores, ids), _ = jax.lax.scan(step, empty_top_k(batch, k),
                                  (corpus.reprs, corpus.ids, corpus.valid))
  return scores, jnp.where(jnp.isneginf(scores), -1, ids)


@functools.partial(jax.jit, static_argnames=("encode_users", "score", "k"))
def _retrieve(encode_users: Callable, score: Callable, users: UserBatch, corpus: EncodedCorpus,
              k: int, exclude: Optional[jax.Array]) -> Tuple[jax.Array, jax.Array]:
  return top_k_over_corpus(score, encode_users(users), corpus, k, exclude)


def exhaustive_top_k(scorer: Scorer, users: UserBatch, k: int, *,
                     num_items: Optional[int] = None, item_chunk: int = 8192,
                     exclude: Optional[jax.Array] = None,
                     item_valid_mask: Optional[np.ndarray] = None,
                     corpus: Optional[EncodedCorpus] = None) -> Tuple[jax.Array, jax.Array]:
  """Exact top-k over the whole corpus for one batch of users.

  Args:
    scorer: any `Scorer`.
    users: B users.
    k: number of results.
    num_items: corpus size N (or give `item_valid_mask` [N], or a prebuilt `corpus`).
    item_chunk: items scored per scan step.
    exclude: optional [B, E] int32 item ids to exclude per user, -1 padded.
    item_valid_mask: optional [N] bool; False items are never returned.
    corpus: an `encode_corpus` result to reuse (then num_items/item_chunk/mask are ignored).

  Returns:
    scores [B, k] float32 descending, item_ids [B, k] int32 (-1 where the score is -inf).
  """
  if corpus is None:
    if num_items is None:
      if item_valid_mask is None:
        raise ValueError("give num_items, item_valid_mask or corpus")
      num_items = int(np.shape(item_valid_mask)[0])
    corpus = encode_corpus(scorer, num_items, item_chunk, item_valid_mask)
  if exclude is not None:
    chex.assert_rank(exclude, 2)
    chex.assert_equal(exclude.shape[0], users.user.shape[0])
    exclude = jnp.asarray(exclude, jnp.int32)
  return _retrieve(scorer.encode_users, scorer.score, users, corpus, k, exclude)


def exhaustive_top_k_for_users(scorer: Scorer, make_user_batch: Callable[[np.ndarray], UserBatch],
                               user_ids: np.ndarray, k: int, *, num_items: int,
                               user_chunk: int = 256, item_chunk: int = 8192,
                               exclude: Optional[np.ndarray] = None,
                               item_valid_mask: Optional[np.ndarray] = None,
                               corpus: Optional[EncodedCorpus] = None
                               ) -> Tuple[np.ndarray, np.ndarray]:
  """Exhaustive top-k for many users: a host loop over fixed-size user chunks.

  Args:
    scorer: any `Scorer`.
    make_user_batch: user ids np[B] int32 -> UserBatch of those B users.
    user_ids: [U] int dense user ids.
    k, num_items, item_chunk, item_valid_mask, corpus: as in `exhaustive_top_k`.
    user_chunk: users per call; the last chunk is padded by repeating its last user, so every
      call has the same shapes and the retrieval compiles once.
    exclude: optional [U, E] int32 item ids to exclude, row-aligned with user_ids, -1 padded.

  Returns:
    numpy scores [U, k] float32 and item_ids [U, k] int32 (-1 where the score is -inf).
  """
  user_ids = np.asarray(user_ids, np.int32)
  if corpus is None:
    corpus = encode_corpus(scorer, num_items, item_chunk, item_valid_mask)
  if not user_ids.shape[0]:
    return np.empty((0, k), np.float32), np.empty((0, k), np.int32)

  def one_chunk(rows: np.ndarray):
    chunk_exclude = None if exclude is None else np.asarray(exclude)[rows]
    return exhaustive_top_k(scorer, make_user_batch(user_ids[rows]), k, exclude=chunk_exclude,
                            corpus=corpus)

  scores, ids = map_in_chunks(one_chunk, user_ids.shape[0], user_chunk)
  return scores.astype(np.float32), ids.astype(np.int32)


@functools.partial(jax.jit, static_argnames="score")
def _chunk_score_sums(score: Callable, user_repr: PyTree, corpus: EncodedCorpus) -> jax.Array:
  def step(_, xs):
    item_repr, valid = xs
    return None, jnp.where(valid, jnp.sum(score(user_repr, item_repr).astype(jnp.float32), 0), 0.0)

  return jax.lax.scan(step, None, (corpus.reprs, corpus.valid))[1].reshape(-1)


def mean_item_scores(scorer: Scorer, user_batches, corpus: EncodedCorpus, num_items: int
                     ) -> np.ndarray:
  """[num_items] float32: each item's mean score over the users of `user_batches` (an iterable
  of UserBatch, all of one shape so one compilation serves them). Memory O(B * item_chunk)."""
  total, count = np.zeros(num_items, np.float64), 0
  encode = jax.jit(scorer.encode_users)
  for users in user_batches:
    total += np.asarray(_chunk_score_sums(scorer.score, encode(users), corpus))[:num_items]
    count += int(users.user.shape[0])
  return (total / max(count, 1)).astype(np.float32)
