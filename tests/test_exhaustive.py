"""Exhaustive retrieval and end-to-end evaluation against NumPy full-sort references."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.data.types import CSR, RecDataset
from hsnn_jax.eval import evaluate as evaluation
from hsnn_jax.eval import metrics
from hsnn_jax.models.scorer import Scorer, UserBatch
from hsnn_jax.retrieval import exhaustive
from tests import helpers
from tests.helpers import dot_scorer

NUM_USERS, NUM_ITEMS, DIM = 23, 300, 4


def make_user_batch(user_ids):
  user_ids = np.asarray(user_ids, np.int32)
  return UserBatch(user=jnp.asarray(user_ids), history=jnp.full((len(user_ids), 1), -1, jnp.int32),
                   features=jnp.zeros((len(user_ids), 0), jnp.int32))


def reference_top_k(users, items, user_ids, k, exclude=None, valid=None):
  """NumPy full sort with banned items at -inf; ids -1 where the score is -inf."""
  scores = users[user_ids] @ items.T
  if valid is not None:
    scores[:, ~valid] = -np.inf
  if exclude is not None:
    for row, banned in enumerate(exclude):
      scores[row, banned[banned >= 0]] = -np.inf
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  top = np.take_along_axis(scores, order, axis=1)
  return top, np.where(np.isneginf(top), -1, order)


def random_exclusions(rng, rows, width):
  out = rng.integers(0, NUM_ITEMS, size=(rows, width)).astype(np.int32)
  out[rng.random(out.shape) < 0.3] = -1
  return out


@pytest.mark.parametrize("item_chunk", [64, 300, 1000])
def test_exhaustive_top_k_with_exclusion_and_mask_matches_full_sort(item_chunk):
  users, items = _vectors(0)
  rng = np.random.default_rng(1)
  user_ids = np.arange(8)
  exclude = random_exclusions(rng, 8, 40)
  valid = rng.random(NUM_ITEMS) > 0.2
  scores, ids = exhaustive.exhaustive_top_k(
      dot_scorer(users, items), make_user_batch(user_ids), 30, item_chunk=item_chunk,
      exclude=jnp.asarray(exclude), item_valid_mask=valid)
  want_scores, want_ids = reference_top_k(users, items, user_ids, 30, exclude, valid)
  np.testing.assert_array_equal(np.asarray(scores), want_scores)
  np.testing.assert_array_equal(np.asarray(ids), want_ids)


def test_excluded_and_padded_items_are_never_returned():
  users, items = _vectors(2)
  exclude = np.stack([np.arange(0, 150), np.arange(150, 300)]).astype(np.int32)
  valid = np.ones(NUM_ITEMS, bool)
  valid[:100] = False  # user 0 is left with items 150..299, user 1 with 100..149
  scores, ids = exhaustive.exhaustive_top_k(
      dot_scorer(users, items), make_user_batch(np.array([0, 1])), 160, item_chunk=64,
      exclude=jnp.asarray(exclude), item_valid_mask=valid)
  scores, ids = np.asarray(scores), np.asarray(ids)
  assert set(ids[0]) == set(range(150, 300)) | {-1}
  assert set(ids[1]) == set(range(100, 150)) | {-1}
  assert (ids[1, 50:] == -1).all() and np.isneginf(scores[1, 50:]).all()
  assert np.isfinite(scores[1, :50]).all()


def test_user_chunked_driver_pads_last_chunk_and_compiles_once():
  users, items = _vectors(3)
  rng = np.random.default_rng(4)
  user_ids = rng.permutation(NUM_USERS)[:17]
  exclude = random_exclusions(rng, 17, 10)
  scorer = dot_scorer(users, items, wrap_encode_users=chex.assert_max_traces(n=1))
  scores, ids = exhaustive.exhaustive_top_k_for_users(
      scorer, make_user_batch, user_ids, 12, num_items=NUM_ITEMS, user_chunk=5, item_chunk=128,
      exclude=exclude)
  want_scores, want_ids = reference_top_k(users, items, user_ids, 12, exclude)
  np.testing.assert_array_equal(scores, want_scores)
  np.testing.assert_array_equal(ids, want_ids)


def tiny_dataset():
  """Users 0..22; train/valid/test item lists drawn at random without overlap per user."""
  rng = np.random.default_rng(5)
  train, valid, test = [], [], []
  for u in range(NUM_USERS):
    items = rng.permutation(NUM_ITEMS)[:12]
    n_test = 0 if u % 7 == 0 else int(rng.integers(1, 4))  # some users have no test items
    train.append(items[:8]), valid.append(items[8:9]), test.append(items[9:9 + n_test])
  return RecDataset(name="tiny", protocol="synthetic", num_users=NUM_USERS, num_items=NUM_ITEMS,
                    train=CSR.from_lists(train), valid=CSR.from_lists(valid),
                    test=CSR.from_lists(test), user_ids=np.arange(NUM_USERS) * 10 + 7,
                    item_ids=np.arange(NUM_ITEMS) * 3 + 1000)


@pytest.mark.parametrize("split", ["test", "valid"])
def test_evaluate_end_to_end_and_save_topk(split, tmp_path):
  ds = tiny_dataset()
  users, items = _vectors(6)
  result = evaluation.evaluate(dot_scorer(users, items), ds, split, ks=(5, 10),
                               make_user_batch=make_user_batch, user_chunk=4, item_chunk=128)
  truth_csr = getattr(ds, split)
  expected_users = [u for u in range(NUM_USERS) if truth_csr.row(u).size]
  np.testing.assert_array_equal(result.users, expected_users)
  known = [np.concatenate([ds.train.row(u)] + ([ds.valid.row(u)] if split == "test" else []))
           for u in expected_users]
  exclude = CSR.from_lists(known).to_padded()[0]
  want_scores, want_ids = reference_top_k(users, items, result.users, 10, exclude)
  np.testing.assert_array_equal(result.topk_items, want_ids)
  np.testing.assert_array_equal(result.topk_scores, want_scores)
  truth = CSR.from_lists([truth_csr.row(u) for u in expected_users]).to_padded()[0]
  want = metrics.ranking_metrics(jnp.asarray(want_ids), jnp.asarray(truth), (5, 10))
  assert set(result.metrics) == set(want)
  for name, value in want.items():
    assert result.metrics[name] == pytest.approx(float(value))

  path = tmp_path / "topk.npz"
  evaluation.save_topk(str(path), result, ds)
  with np.load(path) as z:
    np.testing.assert_array_equal(z["users"], ds.user_ids[result.users])
    np.testing.assert_array_equal(z["items"], ds.item_ids[result.topk_items])


def test_evaluate_on_a_fixed_user_sample():
  """max_users ranks a seeded sample of the split's users: the same users for the same seed,
  each with exactly the top items and metrics the full evaluation gives it."""
  ds = tiny_dataset()
  users, items = _vectors(6)
  run = lambda **kw: evaluation.evaluate(dot_scorer(users, items), ds, "test", ks=(5,),
                                         make_user_batch=make_user_batch, user_chunk=4,
                                         item_chunk=128, **kw)
  full, sample = run(), run(max_users=5, seed=3)
  assert len(sample.users) == 5 and set(sample.users) < set(full.users)
  np.testing.assert_array_equal(sample.users, run(max_users=5, seed=3).users)
  rows = np.searchsorted(full.users, sample.users)
  np.testing.assert_array_equal(sample.topk_items, full.topk_items[rows])
  truth = CSR.from_lists([ds.test.row(u) for u in sample.users]).to_padded()[0]
  want = metrics.ranking_metrics(jnp.asarray(full.topk_items[rows]), jnp.asarray(truth), (5,))
  assert sample.metrics["recall@5"] == pytest.approx(float(want["recall@5"]))
  np.testing.assert_array_equal(run(max_users=10_000).users, full.users)


def test_evaluate_recall_is_one_for_an_oracle_scorer():
  """A scorer that puts each user's test items on top scores recall@10 = hr@10 = ndcg@10 = 1."""
  ds = tiny_dataset()
  oracle = np.zeros((NUM_USERS, NUM_ITEMS), np.float32)
  oracle[ds.test.row_ids(), ds.test.values] = 1.0
  scorer = Scorer(encode_users=lambda ub: jnp.asarray(oracle)[ub.user],
                  encode_items=lambda ids: jnp.eye(NUM_ITEMS, dtype=jnp.float32)[ids],
                  score=lambda u, v: u @ v.T, flops_per_pair=NUM_ITEMS)
  result = evaluation.evaluate(scorer, ds, "test", ks=(10,), make_user_batch=make_user_batch,
                               user_chunk=8, item_chunk=100)
  for name in ("recall@10", "hr@10", "ndcg@10", "mrr"):
    assert result.metrics[name] == pytest.approx(1.0)


def test_save_topk_keeps_padding(tmp_path):
  ds = tiny_dataset()
  result = evaluation.EvalResult(metrics={}, users=np.array([2, 5], np.int32),
                                 topk_items=np.array([[4, -1], [0, 299]], np.int32),
                                 topk_scores=np.zeros((2, 2), np.float32))
  evaluation.save_topk(str(tmp_path / "topk.npz"), result, ds)
  with np.load(tmp_path / "topk.npz") as z:
    np.testing.assert_array_equal(z["users"], [27, 57])
    np.testing.assert_array_equal(z["items"], [[1012, -1], [1000, 1897]])


def _vectors(seed):
  return helpers.tie_free_vectors(seed, NUM_USERS, NUM_ITEMS, DIM)


def test_mean_item_scores_match_the_dense_mean():
  users, items = helpers.tie_free_vectors(11, NUM_USERS, NUM_ITEMS, DIM)
  scorer = dot_scorer(users, items)
  corpus = exhaustive.encode_corpus(scorer, NUM_ITEMS, 64)  # 300 items: the last chunk is padded
  batches = [make_user_batch(np.arange(0, 8)), make_user_batch(np.arange(8, 16))]
  got = exhaustive.mean_item_scores(scorer, batches, corpus, NUM_ITEMS)
  np.testing.assert_allclose(got, (users[:16] @ items.T).mean(axis=0), rtol=1e-5, atol=1e-4)
