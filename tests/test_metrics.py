"""Ranking metrics and NE against slow pure-NumPy references; the published-reference table."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.eval import metrics, reference


def numpy_user_metrics(ranked, truth, k):
  """One user, by the definitions in hsnn_jax/eval/metrics.py, written the slow way."""
  rel = {t for t in truth if t >= 0}
  top = [i for i in ranked[:k]]
  hits = [i >= 0 and i in rel for i in top]
  if not rel:
    return None
  dcg = sum(1.0 / math.log2(r + 2) for r, h in enumerate(hits) if h)
  idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(rel), k)))
  first = next((r + 1 for r, h in enumerate(hits) if h), None)
  return {"recall": sum(hits) / len(rel), "precision": sum(hits) / k, "ndcg": dcg / idcg,
          "hr": float(any(hits)), "mrr": 0.0 if first is None else 1.0 / first}


def random_case(rng, users, k, num_items, max_truth):
  """Retrieved lists (no repeats, some -1 tails) and truth rows (repeats and -1 padding)."""
  topk = np.stack([rng.permutation(num_items)[:k] for _ in range(users)]).astype(np.int32)
  for u in range(users):
    topk[u, k - rng.integers(0, 3):] = -1
  truth = np.full((users, max_truth), -1, np.int32)
  for u in range(users):
    n = rng.integers(0, rng.integers(1, max_truth + 1) + 1)  # 0 = a user with empty truth
    truth[u, :n] = rng.integers(0, num_items, size=n)
  return topk, rng.permuted(truth, axis=1)  # padding anywhere in the row


@pytest.mark.parametrize("seed", range(6))
def test_ranking_metrics_match_numpy_reference(seed):
  rng = np.random.default_rng(seed)
  # Small corpora give many hits; max_truth > K covers truth larger than K.
  topk, truth = random_case(rng, users=40, k=12, num_items=int(rng.integers(15, 60)), max_truth=20)
  ks = (1, 5, 12)
  got = metrics.ranking_metrics(jnp.asarray(topk), jnp.asarray(truth), ks)
  for k in ks:
    per_user = [numpy_user_metrics(list(topk[u]), list(truth[u]), k) for u in range(len(topk))]
    per_user = [m for m in per_user if m is not None]
    ours = metrics.per_user_metrics(jnp.asarray(topk), jnp.asarray(truth), k)
    for name in metrics.RANKING_METRICS:
      want = np.mean([m[name] for m in per_user])
      np.testing.assert_allclose(float(got[f"{name}@{k}"]), want, rtol=1e-5, atol=1e-7)
      kept = [u for u in range(len(topk)) if (truth[u] >= 0).any()]
      np.testing.assert_allclose(np.asarray(ours[name])[kept], [m[name] for m in per_user],
                                 rtol=1e-5, atol=1e-7)
  assert float(got["mrr"]) == float(got["mrr@12"])


def test_metric_edge_cases():
  topk = jnp.array([[5, 6, 7, 8],     # no hit
                    [1, 2, 3, -1],    # truth larger than K, -1 tail
                    [9, 4, -1, -1],   # hit at rank 2
                    [3, 1, 2, 0]])    # empty truth: excluded from the means
  truth = jnp.array([[1, 2, -1, -1, -1, -1],
                     [1, 2, 3, 4, 5, 6],
                     [4, 4, -1, -1, -1, -1],  # a duplicated id counts once
                     [-1, -1, -1, -1, -1, -1]])
  per_user = metrics.per_user_metrics(topk, truth, 4)
  np.testing.assert_allclose(per_user["recall"], [0.0, 0.5, 1.0, 0.0])
  np.testing.assert_allclose(per_user["precision"], [0.0, 0.75, 0.25, 0.0])
  np.testing.assert_allclose(per_user["hr"], [0.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(per_user["mrr"], [0.0, 1.0, 0.5, 0.0])
  idcg4 = sum(1 / math.log2(r + 2) for r in range(4))
  want_ndcg1 = sum(1 / math.log2(r + 2) for r in range(3)) / idcg4
  np.testing.assert_allclose(per_user["ndcg"], [0.0, want_ndcg1, 1 / math.log2(3), 0.0], rtol=1e-6)
  means = metrics.ranking_metrics(topk, truth, (4,))
  np.testing.assert_allclose(float(means["recall@4"]), 0.5, rtol=1e-6)  # (0 + .5 + 1) / 3 users


def test_leave_one_out_recall_equals_hit_rate():
  rng = np.random.default_rng(7)
  topk, _ = random_case(rng, users=30, k=10, num_items=20, max_truth=1)
  truth = rng.integers(0, 20, size=(30, 1)).astype(np.int32)
  got = metrics.ranking_metrics(jnp.asarray(topk), jnp.asarray(truth), (5, 10))
  for k in (5, 10):
    assert float(got[f"recall@{k}"]) == float(got[f"hr@{k}"])


def test_normalized_entropy():
  rng = np.random.default_rng(8)
  labels = (rng.random(500) < 0.3).astype(np.float32)
  logits = rng.normal(size=500).astype(np.float32)
  p = labels.mean()
  prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
  log_loss = -np.mean(labels * np.log(prob) + (1 - labels) * np.log(1 - prob))
  want = log_loss / -(p * np.log(p) + (1 - p) * np.log(1 - p))
  np.testing.assert_allclose(float(metrics.normalized_entropy(labels, logits)), want, rtol=1e-5)
  base_logit = np.full(500, np.log(p / (1 - p)), np.float32)  # predicting the base rate: NE = 1
  np.testing.assert_allclose(float(metrics.normalized_entropy(labels, base_logit)), 1.0, rtol=1e-5)


def test_format_comparison_prints_published_rows_and_ours():
  text = reference.format_comparison("Sports_and_Outdoors", {"recall@10": 0.0312, "ndcg@10": 0.02,
                                                             "hr@50": 0.5})
  assert "TIGER (paper)" in text and "0.0400" in text and "0.0312" in text
  assert "hsnn_jax (this run)" in text and "quoted" in text
  assert "recall@5" not in text and "hr@50" not in text  # only metrics both sides have
  assert "Amazon" not in reference.format_comparison("gowalla", {"recall@20": 0.1})
  assert reference.published_for("Amazon-Book")[0].metrics == {"recall@20": 0.0624}
  assert "No published" in reference.format_comparison("synthetic_tiny", {"recall@20": 0.1})
