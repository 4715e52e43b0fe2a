"""Synthetic corpora: shapes, tree consistency, planted structure, determinism, scale."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hsnn_jax.data import cache, synthetic
from hsnn_jax.data.synthetic import SyntheticConfig

SMALL = SyntheticConfig(name="synthetic_small", num_items=3000, num_users=700, branching=(4, 3, 5),
                        dim=8, seed=7)


@pytest.fixture(scope="module")
def corpus():
  return synthetic.build(SMALL)


def _all_interactions(ds):
  users = np.concatenate([s.row_ids() for s in (ds.train, ds.valid, ds.test)])
  items = np.concatenate([s.values for s in (ds.train, ds.valid, ds.test)])
  return users, items


def test_shapes_and_dtypes(corpus):
  ds = corpus.dataset
  assert ds.item_tree_paths.shape == (3000, 3) and ds.item_tree_paths.dtype == np.int32
  assert ds.train.values.dtype == np.int32 and ds.protocol == "synthetic"
  assert corpus.user_interests.shape == corpus.interest_levels.shape == (700, 3)
  assert [o.shape for o in corpus.node_offsets] == [(4, 7), (12, 7), (60, 7)]
  assert corpus.item_vectors().shape == (3000, 8) and corpus.user_vectors().shape == (700, 8)
  assert ds.test.lengths().max() == 1 and ds.valid.lengths().max() == 1


def test_tree_is_consistent(corpus):
  paths = corpus.dataset.item_tree_paths
  for level, b in enumerate(SMALL.branching[1:]):
    np.testing.assert_array_equal(paths[:, level], paths[:, level + 1] // b)
  num_nodes = np.cumprod(SMALL.branching)
  assert (paths >= 0).all() and (paths < num_nodes[None, :]).all()


def test_interactions_lie_under_the_users_interests(corpus):
  ds = corpus.dataset
  users, items = _all_interactions(ds)
  levels, nodes = corpus.interest_levels[users], corpus.user_interests[users]  # [n, 3]
  under = (levels >= 0) & (ds.item_tree_paths[items[:, None], np.maximum(levels, 0)] == nodes)
  assert under.any(axis=1).all()
  counts = (corpus.interest_levels >= 0).sum(1)
  assert counts.min() >= 1 and counts.max() <= 3


def test_no_duplicate_pairs_and_popularity_skew(corpus):
  users, items = _all_interactions(corpus.dataset)
  assert len(np.unique(users.astype(np.int64) * SMALL.num_items + items)) == len(users)
  freq = np.sort(np.bincount(items, minlength=SMALL.num_items))[::-1]
  assert freq[:30].sum() > 5 * freq[-300:].sum()  # Zipf: the head is far heavier than the tail


def test_deterministic_by_seed(corpus):
  again = synthetic.build(SMALL)
  other = synthetic.build(dataclasses.replace(SMALL, seed=8))
  for split in ("train", "valid", "test"):
    np.testing.assert_array_equal(getattr(corpus.dataset, split).values,
                                  getattr(again.dataset, split).values)
  np.testing.assert_array_equal(corpus.item_vectors(), again.item_vectors())
  assert not np.array_equal(corpus.dataset.item_tree_paths, other.dataset.item_tree_paths)


def test_item_vector_slices_match_whole(corpus, monkeypatch):
  monkeypatch.setattr(synthetic, "_ITEM_CHUNK", 256)  # slices cross several chunks
  whole = corpus.item_vectors()
  np.testing.assert_array_equal(corpus.item_vectors(250, 1030), whole[250:1030])
  np.testing.assert_array_equal(corpus.item_vectors(2999), whole[2999:])


def test_planted_vectors_rank_held_out_items(corpus):
  ds = corpus.dataset
  users = np.flatnonzero(ds.test.lengths() == 1)
  test_items = ds.test.values

  def hit_rate(scores):  # share of test items ranked in the top 100
    return float(np.mean((scores > scores[np.arange(len(users)), test_items][:, None]).sum(1) < 100))

  planted = hit_rate(corpus.user_vectors()[users] @ corpus.item_vectors().T)
  popularity = np.bincount(ds.train.values, minlength=SMALL.num_items).astype(np.float32)
  assert planted > 1.1 * hit_rate(np.broadcast_to(popularity, (len(users), SMALL.num_items)))
  assert planted > 5 * 100 / SMALL.num_items


def test_random_split():
  ds = synthetic.generate(dataclasses.replace(SMALL, split="random", test_fraction=0.3))
  assert ds.valid.nnz == 0 and ds.train.lengths().min() >= 1
  total = ds.train.lengths() + ds.test.lengths()
  np.testing.assert_array_equal(ds.test.lengths(), np.minimum(np.floor(0.3 * total), total - 1))


def test_cache_round_trip(tmp_path, corpus):
  cache.save(corpus.dataset, str(tmp_path))
  back = cache.load(str(tmp_path), "synthetic_small")
  np.testing.assert_array_equal(back.item_tree_paths, corpus.dataset.item_tree_paths)
  np.testing.assert_array_equal(back.test.values, corpus.dataset.test.values)


@pytest.mark.slow
def test_one_million_items():
  cfg = synthetic.PRESETS["synthetic_1m"]
  corpus = synthetic.build(cfg)
  ds = corpus.dataset
  assert ds.num_items == 1_000_000 and ds.item_tree_paths.shape == (1_000_000, 2)
  assert ds.train.nnz > 5 * cfg.num_users
  assert corpus.item_vectors(999_000).shape == (1000, cfg.dim)
