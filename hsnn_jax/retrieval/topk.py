"""Exact top-K selection over wide score matrices.

`chunked_top_k` is the reference: `jax.lax.top_k` on every row, optionally over column chunks
with a running merge (bounded memory). Over a million items its cost dwarfs the scoring itself
(docs/BENCHMARKS.md section E), so `fast_top_k` prunes by chunk maxima first:

  1. split each row into G chunks of C consecutive entries and take each chunk's maximum;
  2. keep the k chunks with the largest maxima (a top-k over [B, G], itself by `fast_top_k`);
  3. gather those k * C entries and take the top-k among them.

This is exact, with no overflow case and no fallback pass. The k kept maxima are k distinct
entries >= t, the smallest of them, so the row's k-th largest value v_k >= t. Every entry outside
the kept chunks is <= t <= v_k: entries above v_k all lie in the kept chunks, and when v_k == t the
kept chunks already hold k entries >= t. So the top-k values of the kept entries equal the row's.

Cost: one max-reduce pass over the scores (what reading them costs) plus top-k over G + k * C
entries instead of N. Step 2 recurses, so it is cheap and C can be small; see `auto_chunk_size`.

Ties: values are always the exact top-k values of the row, in descending order. When several
entries tie with the k-th value, which of them is returned may differ from `lax.top_k` (which
prefers lower indices); every returned index holds its returned value and no index repeats.
NaN scores are not supported (mask them to -inf first).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Tuple

import chex
import jax
import jax.numpy as jnp


def chunked_top_k(scores: jax.Array, k: int, column_chunk: Optional[int] = None
                  ) -> Tuple[jax.Array, jax.Array]:
  """Reference top-k of every row by `lax.top_k`.

  Args:
    scores: [B, N] float scores.
    k: static number of results per row, k <= N.
    column_chunk: None runs one `lax.top_k` over [B, N]; otherwise a `lax.scan` over column
      chunks of this size merges per-chunk top-k into a running top-k (memory [B, k + chunk]).

  Returns:
    values [B, k] descending and indices [B, k] int32 into N.
  """
  chex.assert_rank(scores, 2)
  batch, num_items = scores.shape
  if column_chunk is None or column_chunk >= num_items:
    values, indices = jax.lax.top_k(scores, k)
    return values, indices.astype(jnp.int32)
  num_chunks = -(-num_items // column_chunk)
  padded = jnp.pad(scores, ((0, 0), (0, num_chunks * column_chunk - num_items)),
                   constant_values=-jnp.inf)
  chunks = jnp.moveaxis(padded.reshape(batch, num_chunks, column_chunk), 1, 0)

  def step(carry, xs):
    chunk, offset = xs
    ids = jnp.broadcast_to(offset + jnp.arange(column_chunk, dtype=jnp.int32), chunk.shape)
    return merge_top_k(*carry, chunk, ids, k), None

  offsets = jnp.arange(num_chunks, dtype=jnp.int32) * column_chunk
  (values, indices), _ = jax.lax.scan(step, empty_top_k(batch, k, scores.dtype),
                                      (chunks, offsets))
  return values, indices


def empty_top_k(batch: int, k: int, dtype=jnp.float32) -> Tuple[jax.Array, jax.Array]:
  """A running top-k holding nothing: values -inf [B, k], ids -1 [B, k]."""
  return jnp.full((batch, k), -jnp.inf, dtype), jnp.full((batch, k), -1, jnp.int32)


def merge_top_k(values: jax.Array, ids: jax.Array, new_values: jax.Array, new_ids: jax.Array,
                k: int) -> Tuple[jax.Array, jax.Array]:
  """Top-k of the union of two candidate lists: [B, a] and [B, b] -> [B, k] each (k <= a + b)."""
  all_values = jnp.concatenate([values, new_values], axis=1)
  all_ids = jnp.concatenate([ids, new_ids.astype(jnp.int32)], axis=1)
  top_values, pos = fast_top_k(all_values, k)
  return top_values, jnp.take_along_axis(all_ids, pos, axis=1)


def auto_chunk_size(num_items: int, k: int) -> int:
  """A chunk size C for `fast_top_k`; 0 when pruning cannot pay (then it uses `lax.top_k`).

  Step 3's top-k over k * C gathered entries costs several times more per entry than the
  max-reduce that shrinks G (and step 2 recurses), so C = sqrt(N / k) / 2 rather than the
  sqrt(N / k) that balances G against k * C; the optimum is flat (`experiments.benchmark_topk`
  sweeps C).
  """
  if num_items < 4 * k:
    return 0
  c = max(8, 8 * round(math.sqrt(num_items / k) / 16))
  while c > 1 and -(-num_items // c) < k:
    c //= 2
  return c if k * c < num_items else 0


def _chunk_maxima(scores: jax.Array, chunk_size: int) -> jax.Array:
  """[B, N] -> [B, ceil(N / C)] maximum of each chunk of C consecutive entries."""
  batch, num_items = scores.shape
  full = num_items // chunk_size
  if full * chunk_size == num_items:
    return scores.reshape(batch, full, chunk_size).max(axis=-1)
  # Slicing the divisible prefix, or padding, copies the whole matrix first (10x slower on
  # CPU); a VALID reduce_window reads it in place, and the short tail is a small extra slice.
  maxima = jax.lax.reduce_window(scores, -jnp.inf, jax.lax.max, (1, chunk_size),
                                 (1, chunk_size), "VALID")
  tail = scores[:, full * chunk_size:].max(axis=-1, keepdims=True)
  return jnp.concatenate([maxima, tail], axis=1)


def _gather_chunks(scores: jax.Array, chunk_ids: jax.Array, chunk_size: int
                   ) -> Tuple[jax.Array, jax.Array]:
  """Entries of the chosen chunks: chunk_ids [B, m] -> (values [B, m*C], indices [B, m*C]).

  The short last chunk is read from a start clamped to N - C; entries it shares with the
  previous chunk are masked to -inf, so no index can be returned twice.
  """
  batch, num_items = scores.shape
  nominal = chunk_ids * chunk_size
  start = jnp.minimum(nominal, num_items - chunk_size)
  take = jax.vmap(jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, chunk_size),
                           in_axes=(None, 0)))
  values = take(scores, start)  # [B, m, C]
  indices = start[..., None] + jnp.arange(chunk_size, dtype=jnp.int32)
  values = jnp.where(indices >= nominal[..., None], values, -jnp.inf)
  return values.reshape(batch, -1), indices.reshape(batch, -1)


@functools.partial(jax.jit, static_argnames=("k", "chunk_size"))
def fast_top_k(scores: jax.Array, k: int, chunk_size: Optional[int] = None
               ) -> Tuple[jax.Array, jax.Array]:
  """Exact top-k of every row by chunk-maximum pruning (see the module docstring).

  Args:
    scores: [B, N] float scores (no NaN; -inf allowed).
    k: static number of results per row, 1 <= k <= N.
    chunk_size: static chunk length C; None picks `auto_chunk_size(N, k)`. Uses plain
      `lax.top_k` when pruning cannot help (fewer than k chunks, or k * C >= N).

  Returns:
    values [B, k] in descending order and indices [B, k] int32 into N.
  """
  chex.assert_rank(scores, 2)
  num_items = scores.shape[1]
  if not 1 <= k <= num_items:
    raise ValueError(f"k={k} must be in [1, {num_items}]")
  c = auto_chunk_size(num_items, k) if chunk_size is None else int(chunk_size)
  if c <= 0 or c > num_items or -(-num_items // c) < k or k * c >= num_items:
    return chunked_top_k(scores, k)
  _, chunk_ids = fast_top_k(_chunk_maxima(scores, c), k)
  values, indices = _gather_chunks(scores, chunk_ids, c)
  top_values, pos = chunked_top_k(values, k)
  return top_values, jnp.take_along_axis(indices, pos, axis=1)


def hit_matrix(topk: jax.Array, truth: jax.Array) -> jax.Array:
  """[U, K] bool: whether each retrieved item is relevant. O(U * K * log T) by binary search."""
  chex.assert_rank([topk, truth], 2)
  chex.assert_equal(topk.shape[0], truth.shape[0])
  sorted_truth = jnp.sort(truth, axis=1)  # -1 padding sorts first and never matches (topk >= 0)
  pos = jax.vmap(jnp.searchsorted)(sorted_truth, topk)
  found = jnp.take_along_axis(sorted_truth, jnp.minimum(pos, truth.shape[1] - 1), axis=1)
  return (found == topk) & (topk >= 0)
