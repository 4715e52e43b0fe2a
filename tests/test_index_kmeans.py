"""k-means and residual k-means in JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.health import nmi, purity
from hsnn_jax.index.kmeans import (_reseed_empty, _sample_proportional, kmeans, kmeans_index,
                                     residual_kmeans)


def planted_clusters(num_points, num_clusters, dim, noise, seed=0):
  """Points around unit-norm random centers: (points [N, d] float32, labels [N] int)."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, dim))
  centers /= np.linalg.norm(centers, axis=1, keepdims=True)
  labels = rng.integers(0, num_clusters, num_points)
  points = centers[labels] + noise * rng.normal(size=(num_points, dim))
  return points.astype(np.float32), labels


def test_recovers_well_separated_planted_clusters():
  points, labels = planted_clusters(1000, 8, 16, noise=0.02)
  result = kmeans(jax.random.key(0), jnp.asarray(points), 8, num_iters=10)
  predicted = np.asarray(result.assignments)
  assert purity(labels, predicted) > 0.99
  assert nmi(labels, predicted) > 0.98
  np.testing.assert_allclose(
      result.inertia, np.sum((points - np.asarray(result.centroids)[predicted]) ** 2), rtol=1e-4)


def test_random_init_starts_from_distinct_points_and_lloyd_improves_it():
  points, _ = planted_clusters(300, 5, 8, noise=0.2)
  start = kmeans(jax.random.key(1), jnp.asarray(points), 5, num_iters=0, init="random")
  chosen = np.asarray(start.centroids)
  matches = np.all(points[None] == chosen[:, None], axis=-1)  # [K, N]
  assert np.all(matches.any(axis=1)) and len({tuple(c) for c in chosen}) == 5
  trained = kmeans(jax.random.key(1), jnp.asarray(points), 5, num_iters=5, init="random")
  assert float(trained.inertia) < float(start.inertia)


def test_chunking_does_not_change_the_result_and_the_key_fixes_it():
  points, _ = planted_clusters(500, 6, 8, noise=0.3)
  whole = kmeans(jax.random.key(3), jnp.asarray(points), 6, num_iters=5, chunk_size=500)
  chunked = kmeans(jax.random.key(3), jnp.asarray(points), 6, num_iters=5, chunk_size=128)
  again = kmeans(jax.random.key(3), jnp.asarray(points), 6, num_iters=5, chunk_size=128)
  np.testing.assert_array_equal(whole.assignments, chunked.assignments)
  np.testing.assert_allclose(whole.centroids, chunked.centroids, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(chunked.centroids, again.centroids)


def test_empty_clusters_move_to_the_farthest_points():
  points = jnp.arange(10, dtype=jnp.float32)[:, None]
  centroids = jnp.asarray([[0.0], [100.0], [1.0], [200.0]])
  counts = jnp.asarray([5.0, 0.0, 5.0, 0.0])
  min_d2 = jnp.asarray([0, 1, 4, 0, 9, 81, 0, 1, 64, 49], jnp.float32)
  reseeded = np.asarray(_reseed_empty(centroids, counts, points, min_d2))[:, 0]
  np.testing.assert_array_equal(reseeded, [0.0, 5.0, 1.0, 8.0])


def test_residual_levels_reduce_the_error():
  points, _ = planted_clusters(600, 4, 8, noise=0.3)
  result = residual_kmeans(jax.random.key(0), jnp.asarray(points), (4, 4, 4), num_iters=8)
  errors = np.asarray(result.errors)
  assert np.all(np.diff(errors) < 0)
  codes = np.asarray(result.codes)
  assert codes.shape == (600, 3) and codes.dtype == np.int32
  reconstruction = sum(np.asarray(c)[codes[:, l]] for l, c in enumerate(result.codebooks))
  assert np.mean(np.sum((points - reconstruction) ** 2, axis=1)) == pytest.approx(errors[-1],
                                                                                  rel=1e-4)


def test_seeding_samples_in_proportion_to_weight():
  picks = _sample_proportional(jax.random.key(0), jnp.asarray([1.0, 0.0, 3.0, 0.0, 4.0]), 40000)
  freq = np.bincount(np.asarray(picks), minlength=5) / 40000
  np.testing.assert_allclose(freq, [0.125, 0.0, 0.375, 0.0, 0.5], atol=0.01)
  assert freq[1] == freq[3] == 0.0  # already-chosen points (distance 0) are never re-picked
  uniform = _sample_proportional(jax.random.key(1), jnp.zeros(4), 40000)
  np.testing.assert_allclose(np.bincount(np.asarray(uniform)) / 40000, 0.25, atol=0.01)


def test_rejects_more_clusters_than_points():
  with pytest.raises(ValueError, match="num_clusters"):
    kmeans(jax.random.key(0), jnp.zeros((3, 2)), 4)


def test_kmeans_index_publishes_the_residual_kmeans_codes():
  points = np.random.default_rng(4).normal(size=(300, 5)).astype(np.float32)
  index = kmeans_index(jax.random.key(1), points, (4, 3), num_iters=5)
  result = residual_kmeans(jax.random.key(1), jnp.asarray(points), (4, 3), num_iters=5)
  np.testing.assert_array_equal(index.codes, np.asarray(result.codes))
  assert index.num_items == 300 and index.num_levels == 2
  np.testing.assert_array_equal(np.sort(index.node_items[index.node_items >= 0]), np.arange(300))
