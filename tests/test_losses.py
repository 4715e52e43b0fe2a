"""Retrieval losses against slow NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.train import losses


def _softmax_reference(logits, positives, candidates, logq):
  total = 0.0
  for b in range(logits.shape[0]):
    row = logits[b] - (logq if logq is not None else 0.0)
    keep = [j for j in range(len(candidates)) if j == b or candidates[j] != positives[b]]
    z = row[keep]
    total += np.log(np.sum(np.exp(z - z.max()))) + z.max() - row[b]
  return total / logits.shape[0]


@pytest.mark.parametrize("use_logq", [False, True])
def test_sampled_softmax_matches_reference_with_accidental_hits(use_logq):
  rng = np.random.default_rng(0)
  positives = np.array([3, 5, 3, 7], np.int32)  # item 3 twice: in-batch accidental hits
  negatives = np.array([5, 1, 3, 9, 2], np.int32)  # 5 and 3 collide with positives
  candidates = np.concatenate([positives, negatives])
  logits = rng.normal(size=(4, len(candidates))).astype(np.float32)
  item_logq = np.log(rng.dirichlet(np.ones(10))).astype(np.float32)
  logq = np.asarray(losses.logq_offsets(jnp.asarray(positives), jnp.asarray(negatives),
                                        jnp.asarray(item_logq), 10)) if use_logq else None
  got = losses.retrieval_loss(jnp.asarray(logits), jnp.asarray(positives), jnp.asarray(candidates),
                              kind="softmax", logq=None if logq is None else jnp.asarray(logq))
  assert float(got) == pytest.approx(_softmax_reference(logits, positives, candidates, logq), rel=1e-5)


def test_logq_offsets_are_log_expected_counts():
  item_logq = jnp.log(jnp.array([0.5, 0.25, 0.25]))
  off = losses.logq_offsets(jnp.array([0, 1]), jnp.array([2, 2, 1]), item_logq, 3)
  np.testing.assert_allclose(np.asarray(off), np.log([0.5 * 2, 0.25 * 2, 1.0, 1.0, 1.0]), rtol=1e-6)


def test_bpr_and_bce_ignore_accidental_hits():
  positives = jnp.array([1, 2])
  candidates = jnp.array([1, 2, 1])  # the third candidate is row 0's own positive
  logits = jnp.array([[2.0, 0.0, 50.0], [0.0, 1.0, -1.0]])
  bpr = losses.retrieval_loss(logits, positives, candidates, kind="bpr")
  pairs = [2.0 - 0.0, 1.0 - 0.0, 1.0 + 1.0]  # row 0 vs col 1; row 1 vs cols 0 and 2
  assert float(bpr) == pytest.approx(np.mean([np.log1p(np.exp(-d)) for d in pairs]), rel=1e-5)
  bce = losses.retrieval_loss(logits, positives, candidates, kind="bce")
  assert np.isfinite(float(bce))
  with pytest.raises(ValueError, match="hinge"):
    losses.retrieval_loss(logits, positives, candidates, kind="hinge")


def test_next_item_loss_matches_per_position_reference():
  rng = np.random.default_rng(1)
  table = rng.normal(size=(12, 4)).astype(np.float32)
  history = np.array([[-1, -1, 3, 4], [5, 6, 7, 8]], np.int32)
  positives = np.array([9, 10], np.int32)
  negatives = np.array([0, 4, 11], np.int32)
  reprs = rng.normal(size=(2, 4, 4)).astype(np.float32)
  got = losses.next_item_loss(jnp.asarray(reprs), lambda ids: jnp.asarray(table)[ids],
                              jnp.asarray(history), jnp.asarray(positives), jnp.asarray(negatives),
                              num_items=12, temperature=0.5)
  terms = []
  for b in range(2):
    seq = list(history[b]) + [positives[b]]
    for i in range(4):
      if seq[i] < 0:
        continue
      target = seq[i + 1]
      pos = reprs[b, i] @ table[target] / 0.5
      negs = [reprs[b, i] @ table[n] / 0.5 - np.log(3 / 12) for n in negatives if n != target]
      z = np.array([pos] + negs)
      terms.append(np.log(np.exp(z).sum()) - pos)
  assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)
  grads = jax.grad(lambda r: losses.next_item_loss(
      r, lambda ids: jnp.asarray(table)[ids], jnp.asarray(history), jnp.asarray(positives),
      jnp.asarray(negatives), num_items=12, temperature=0.5))(jnp.asarray(reprs))
  assert np.all(np.asarray(grads)[0, :2] == 0)  # padded positions get no gradient
