"""k-means and residual k-means in JAX: the SIL index, and the k-means init of LTI codebooks.

Memory is bounded by chunks: each Lloyd pass walks the points `chunk_size` rows at a time and
keeps only [chunk, K] distances plus the running centroid sums [K, d], so 1M x 1024 points never
need an [N, K] matrix. A pass that would overrun N re-reads the last full chunk instead of padding
(so the points are never copied); rows it has already counted are masked out of the sums.

Empty clusters are re-seeded after each pass with the points farthest from their current
centroid (the largest-inertia points, as scikit-learn does). Results are deterministic given the
key on a given backend.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.index.assignment import pairwise_distances
from hsnn_jax.index.config import KMEANS_INITS
from hsnn_jax.index.publish import publish_index
from hsnn_jax.index.published import PublishedIndex


@flax.struct.dataclass
class KMeansResult:
  """centroids [K, d] float32, assignments [N] int32, inertia: sum of squared distances."""

  centroids: jax.Array
  assignments: jax.Array
  inertia: jax.Array


@flax.struct.dataclass
class ResidualKMeansResult:
  """codebooks: [K_l, d] per level; codes [N, L] int32; errors [L]: mean ||residual||^2 after
  each level (the mean squared reconstruction error of the first l+1 levels)."""

  codebooks: Tuple[jax.Array, ...]
  codes: jax.Array
  errors: jax.Array


def _lloyd_pass(points: jax.Array, centroids: jax.Array, chunk_size: int):
  """One chunked pass: nearest centroid and its squared distance per point ([N] each), and
  the per-centroid sums [K, d] and counts [K] of the points assigned to it."""
  num_points, dim = points.shape
  num_clusters = centroids.shape[0]
  num_chunks = -(-num_points // chunk_size)

  def body(i, carry):
    assignments, min_d2, sums, counts = carry
    start = jnp.minimum(i * chunk_size, num_points - chunk_size)
    chunk = jax.lax.dynamic_slice_in_dim(points, start, chunk_size).astype(jnp.float32)
    d2 = pairwise_distances(chunk, centroids)
    nearest = jnp.argmin(d2, axis=-1).astype(jnp.int32)
    # The last chunk may overlap the previous one: count each row once.
    fresh = (start + jnp.arange(chunk_size)) >= i * chunk_size
    one_hot = jax.nn.one_hot(nearest, num_clusters, dtype=jnp.float32) * fresh[:, None]
    return (jax.lax.dynamic_update_slice_in_dim(assignments, nearest, start, 0),
            jax.lax.dynamic_update_slice_in_dim(min_d2, jnp.min(d2, axis=-1), start, 0),
            sums + one_hot.T @ chunk, counts + jnp.sum(one_hot, axis=0))

  init = (jnp.zeros((num_points,), jnp.int32), jnp.zeros((num_points,), jnp.float32),
          jnp.zeros((num_clusters, dim), jnp.float32), jnp.zeros((num_clusters,), jnp.float32))
  return jax.lax.fori_loop(0, num_chunks, body, init)


def _sample_proportional(key: jax.Array, weights: jax.Array, num_samples: int) -> jax.Array:
  """[num_samples] indices drawn with probability ~ weights [N] (uniform if all are 0).

  Inverse-CDF sampling: one cumsum and a binary search per sample, instead of N Gumbel draws
  per sample (which made k-means++ seeding 20x slower than a Lloyd pass on CPU).
  """
  weights = jnp.where(jnp.sum(weights) > 0, weights, 1.0)
  cdf = jnp.cumsum(weights)
  targets = jax.random.uniform(key, (num_samples,)) * cdf[-1]
  return jnp.minimum(jnp.searchsorted(cdf, targets, side="right"), weights.shape[0] - 1)


def _kmeans_plus_plus(key: jax.Array, points: jax.Array, num_clusters: int) -> jax.Array:
  """Greedy k-means++ seeding (as scikit-learn): each step samples 2 + log K candidates with
  probability ~ squared distance to the nearest chosen centroid and keeps the one that lowers
  the total squared distance most. Plain k-means++ merged two of 8 well-separated planted
  clusters in 14% of seeds, which Lloyd iterations cannot undo. K steps of O(N d log K)."""
  num_points = points.shape[0]
  num_trials = 2 + int(math.log(num_clusters))
  first_key, key = jax.random.split(key)
  first = points[jax.random.randint(first_key, (), 0, num_points)].astype(jnp.float32)
  centroids = jnp.zeros((num_clusters, points.shape[1]), jnp.float32).at[0].set(first)

  def body(i, carry):
    centroids, min_d2 = carry
    picks = _sample_proportional(jax.random.fold_in(key, i), min_d2, num_trials)
    candidates = points[picks].astype(jnp.float32)
    trial_min_d2 = jnp.minimum(min_d2[:, None], pairwise_distances(points, candidates))
    best = jnp.argmin(jnp.sum(trial_min_d2, axis=0))
    return centroids.at[i].set(candidates[best]), trial_min_d2[:, best]

  initial_min_d2 = pairwise_distances(points, first[None, :])[:, 0]
  centroids, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids, initial_min_d2))
  return centroids


def _reseed_empty(centroids, counts, points, min_d2):
  """Moves empty centroids onto the points farthest from their centroid, one point each."""
  empty = counts == 0
  _, farthest = jax.lax.top_k(min_d2, centroids.shape[0])
  rank = jnp.cumsum(empty) - 1
  replacement = points[farthest[jnp.maximum(rank, 0)]].astype(jnp.float32)
  return jnp.where(empty[:, None], replacement, centroids)


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters", "init", "chunk_size"))
def _kmeans(key, points, num_clusters, num_iters, init, chunk_size):
  if init == "kmeans++":
    centroids = _kmeans_plus_plus(key, points, num_clusters)
  else:
    picks = jax.random.choice(key, points.shape[0], (num_clusters,), replace=False)
    centroids = points[picks].astype(jnp.float32)

  def step(_, centroids):
    _, min_d2, sums, counts = _lloyd_pass(points, centroids, chunk_size)
    updated = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)
    return jax.lax.cond(jnp.any(counts == 0), _reseed_empty, lambda c, *_: c,
                        updated, counts, points, min_d2)

  centroids = jax.lax.fori_loop(0, num_iters, step, centroids)
  assignments, min_d2, _, _ = _lloyd_pass(points, centroids, chunk_size)
  return KMeansResult(centroids=centroids, assignments=assignments, inertia=jnp.sum(min_d2))


def kmeans(key: jax.Array, points: jax.Array, num_clusters: int, num_iters: int = 25,
           init: str = "kmeans++", chunk_size: int = 16384) -> KMeansResult:
  """Lloyd's k-means of points [N, d] (any float dtype) into num_clusters centroids.

  Args:
    key: PRNG key for the seeding; the result is a deterministic function of it.
    points: [N, d], N >= num_clusters.
    num_clusters: K.
    num_iters: Lloyd iterations (fixed count; a final pass assigns to the returned centroids).
    init: 'kmeans++' or 'random' (K distinct points).
    chunk_size: rows per distance chunk (clipped to N); memory is O(chunk_size * K).
  """
  chex.assert_rank(points, 2)
  if init not in KMEANS_INITS:
    raise ValueError(f"init must be one of {KMEANS_INITS}, got {init!r}")
  if not 1 <= num_clusters <= points.shape[0]:
    raise ValueError(f"num_clusters must be in [1, N={points.shape[0]}], got {num_clusters}")
  if num_iters < 0 or chunk_size < 1:
    raise ValueError(f"need num_iters >= 0 and chunk_size >= 1, got {num_iters}, {chunk_size}")
  return _kmeans(key, points, num_clusters, num_iters, init, min(chunk_size, points.shape[0]))


def residual_kmeans(key: jax.Array, points: jax.Array, nodes_per_level: Sequence[int],
                    num_iters: int = 25, init: str = "kmeans++",
                    chunk_size: int = 16384) -> ResidualKMeansResult:
  """k-means on points [N, d], then on the residuals, once per level (coarsest first).

  Holds one float32 residual copy of the points. Level l uses jax.random.fold_in(key, l).
  """
  residual = jnp.asarray(points, jnp.float32)
  codebooks, codes, errors = [], [], []
  for level, num_clusters in enumerate(nodes_per_level):
    result = kmeans(jax.random.fold_in(key, level), residual, num_clusters, num_iters, init,
                    chunk_size)
    residual = residual - result.centroids[result.assignments]
    codebooks.append(result.centroids)
    codes.append(result.assignments)
    errors.append(result.inertia / points.shape[0])
  return ResidualKMeansResult(codebooks=tuple(codebooks), codes=jnp.stack(codes, axis=1),
                              errors=jnp.stack(errors))


def kmeans_index(key: jax.Array, vectors, nodes_per_level: Sequence[int], num_iters: int = 25
                 ) -> PublishedIndex:
  """The separately learned index (SIL): residual k-means over item vectors [V, d], published.
  Node embeddings are the codeword sums; representatives the items nearest them."""
  vectors = np.asarray(vectors, np.float32)
  result = residual_kmeans(key, jnp.asarray(vectors), tuple(nodes_per_level), num_iters=num_iters)
  return publish_index(np.asarray(result.codes), [np.asarray(c) for c in result.codebooks], vectors)
