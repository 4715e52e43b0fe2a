"""Exact top-k: `fast_top_k` and `chunked_top_k` against a NumPy full sort."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.retrieval import topk


def check_exact(scores, values, indices, k, distinct):
  """Values equal the sorted top-k; indices hold them, never repeat; sets match if distinct."""
  scores, values, indices = map(np.asarray, (scores, values, indices))
  ref_idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  ref_val = np.take_along_axis(scores, ref_idx, axis=1)
  np.testing.assert_array_equal(values, ref_val)
  assert indices.dtype == np.int32
  assert ((indices >= 0) & (indices < scores.shape[1])).all()
  np.testing.assert_array_equal(np.take_along_axis(scores, indices, axis=1), values)
  assert all(len(set(row)) == k for row in indices)
  if distinct:
    assert all(set(a) == set(b) for a, b in zip(indices, ref_idx))


def distinct_scores(rng, batch, n):
  return np.stack([rng.permutation(n) for _ in range(batch)]).astype(np.float32) / n


@pytest.mark.parametrize("n,k,chunk", [
    (1000, 10, None), (1003, 10, None), (997, 7, 13), (4096, 50, 16), (5000, 1, None),
    (50, 50, None), (30, 4, 7), (20000, 100, None),  # the last recurses in step 2
])
def test_fast_top_k_matches_full_sort_on_distinct_scores(n, k, chunk):
  rng = np.random.default_rng(n + k)
  scores = distinct_scores(rng, 5, n)
  values, indices = topk.fast_top_k(jnp.asarray(scores), k, chunk)
  check_exact(scores, values, indices, k, distinct=True)


def test_fast_top_k_with_heavy_ties_returns_exact_values():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 4, size=(6, 3001)).astype(np.float32)  # ~750 copies of each value
  for chunk in (None, 8, 100):
    values, indices = topk.fast_top_k(jnp.asarray(scores), 20, chunk)
    check_exact(scores, values, indices, 20, distinct=False)


def test_fast_top_k_with_neg_inf():
  rng = np.random.default_rng(1)
  scores = rng.normal(size=(4, 2000)).astype(np.float32)
  scores[0] = -np.inf  # whole row masked
  scores[1, 5:] = -np.inf  # fewer finite entries than k
  scores[2, rng.random(2000) < 0.9] = -np.inf
  values, indices = topk.fast_top_k(jnp.asarray(scores), 16, 8)
  check_exact(scores, values, indices, 16, distinct=False)
  assert np.isneginf(np.asarray(values)[0]).all()
  np.testing.assert_array_equal(np.sort(np.asarray(indices)[1, :5]), np.arange(5))


def test_fast_top_k_when_all_large_values_share_one_chunk():
  """Adversarial for threshold methods: every top entry lies in one chunk (or the tail)."""
  rng = np.random.default_rng(2)
  n, k, chunk = 4099, 40, 64
  scores = rng.normal(size=(3, n)).astype(np.float32)
  scores[0, 128:192] += 100.0  # one whole chunk holds the 40 best and more
  scores[1, n - 3:] += 100.0  # the short last chunk
  scores[2, ::chunk] += 100.0  # the best entry of every chunk is its first
  values, indices = topk.fast_top_k(jnp.asarray(scores), k, chunk)
  check_exact(scores, values, indices, k, distinct=True)
  assert set(np.asarray(indices)[0]) <= set(range(128, 192))


def test_chunked_top_k_scan_matches_one_shot():
  rng = np.random.default_rng(3)
  scores = distinct_scores(rng, 3, 1001)
  one = topk.chunked_top_k(jnp.asarray(scores), 12)
  scanned = topk.chunked_top_k(jnp.asarray(scores), 12, column_chunk=100)
  check_exact(scores, *one, 12, distinct=True)
  np.testing.assert_array_equal(np.asarray(one[0]), np.asarray(scanned[0]))
  np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(scanned[1]))


def test_merge_top_k_keeps_ids_with_values():
  a_val = jnp.array([[5.0, 3.0, 1.0]])
  b_val = jnp.array([[4.0, 2.0]])
  values, ids = topk.merge_top_k(a_val, jnp.array([[50, 30, 10]]), b_val, jnp.array([[40, 20]]),
                                 3)
  np.testing.assert_array_equal(np.asarray(values), [[5.0, 4.0, 3.0]])
  np.testing.assert_array_equal(np.asarray(ids), [[50, 40, 30]])


def test_fast_top_k_compiles_once_per_shape():
  @jax.jit
  @chex.assert_max_traces(n=1)
  def select(scores):
    return topk.fast_top_k(scores, 10)

  rng = np.random.default_rng(4)
  for _ in range(3):
    scores = distinct_scores(rng, 2, 777)
    check_exact(scores, *select(jnp.asarray(scores)), 10, distinct=True)


def test_auto_chunk_size_gives_enough_chunks_or_falls_back():
  for n, k in [(1_000_000, 100), (1000, 10), (10_000, 1000), (100, 30), (3, 1)]:
    c = topk.auto_chunk_size(n, k)
    if c:
      assert -(-n // c) >= k and k * c < n
  assert topk.auto_chunk_size(100, 30) == 0
  with pytest.raises(ValueError):
    topk.fast_top_k(jnp.zeros((1, 5)), 6)
