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


def _ccl_reference(cosines, positives, candidates, margin, weight, uniform_only):
  b = cosines.shape[0]
  total = 0.0
  for r in range(b):
    cols = [j for j in range(len(candidates))
            if j != r and candidates[j] != positives[r] and (j >= b or not uniform_only)]
    hinge = np.mean([max(0.0, cosines[r, j] - margin) for j in cols]) if cols else 0.0
    total += 1.0 - cosines[r, r] + weight * hinge
  return total / b


@pytest.mark.parametrize("negatives", ["uniform", "all"])
def test_cosine_contrastive_loss_matches_reference_with_accidental_hits(negatives):
  rng = np.random.default_rng(2)
  positives = np.array([3, 5, 3, 7], np.int32)
  negs = np.array([5, 1, 3, 9, 2, 8], np.int32)  # 5 and 3 collide with positives
  candidates = np.concatenate([positives, negs])
  cosines = np.tanh(rng.normal(size=(4, len(candidates)))).astype(np.float32)
  got = losses.cosine_contrastive_loss(jnp.asarray(cosines), jnp.asarray(positives),
                                       jnp.asarray(candidates), margin=0.2, negative_weight=7.0,
                                       negatives=negatives)
  want = _ccl_reference(cosines, positives, candidates, 0.2, 7.0, negatives == "uniform")
  assert float(got) == pytest.approx(want, rel=1e-5)
  with pytest.raises(ValueError, match="cosines"):
    losses.retrieval_loss(jnp.asarray(cosines), jnp.asarray(positives), jnp.asarray(candidates),
                          kind="ccl")


def test_user_weights_make_users_count_equally():
  pair_users = jnp.array([0, 0, 0, 1, 2, 2])  # user 0 has 3 pairs, user 1 one, user 2 two
  w = np.asarray(losses.user_weights(jnp.array([0, 1, 2, 0]), pair_users, 1.0))
  want = np.array([1 / 3, 1.0, 0.5, 1 / 3])
  np.testing.assert_allclose(w, want / want.mean(), rtol=1e-6)
  logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32))
  positives, candidates = jnp.array([0, 1]), jnp.array([0, 1, 2, 3])
  unweighted = losses.retrieval_loss(logits, positives, candidates, kind="softmax")
  ones = losses.retrieval_loss(logits, positives, candidates, kind="softmax", weights=jnp.ones(2))
  assert float(ones) == pytest.approx(float(unweighted), rel=1e-6)
  first = losses.retrieval_loss(logits, positives, candidates, kind="softmax",
                                weights=jnp.array([1.0, 0.0]))
  z = np.asarray(logits)[0]
  assert float(first) == pytest.approx(np.log(np.exp(z).sum()) - z[0], rel=1e-5)


def test_known_candidates_matches_membership_and_excludes_them():
  rng = np.random.default_rng(4)
  known = np.array([[-1, 3, 7, 2], [-1, -1, -1, 9], [5, 5, 1, 0]], np.int32)
  candidates = rng.integers(0, 10, size=11).astype(np.int32)  # duplicates on purpose
  got = np.asarray(losses.known_candidates(jnp.asarray(known), jnp.asarray(candidates)))
  want = np.array([[c in set(row[row >= 0].tolist()) for c in candidates] for row in known])
  np.testing.assert_array_equal(got, want)
  positives = jnp.array([3, 9])
  cands = jnp.array([3, 9, 7, 4])
  mask = losses.known_candidates(jnp.array([[3, 7], [9, -1]]), cands)
  logits = jnp.asarray(rng.normal(size=(2, 4)).astype(np.float32))
  got = losses.retrieval_loss(logits, positives, cands, kind="softmax", known=mask)
  z = np.asarray(logits)
  want = np.mean([np.log(np.exp(z[0, [0, 1, 3]]).sum()) - z[0, 0],
                  np.log(np.exp(z[1, [0, 1, 2, 3]]).sum()) - z[1, 1]])
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_full_softmax_matches_reference():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 7)).astype(np.float32) * 3
  lists = np.array([[0, 4, -1], [2, -1, -1], [-1, -1, -1]], np.int32)  # row 2: no positive
  mask = np.asarray(losses.items_mask(jnp.asarray(lists), 7))
  assert mask.sum() == 3 and mask[0, [0, 4]].all() and mask[1, 2]
  weights = np.array([1.0, 3.0, 5.0], np.float32)
  per_row = []
  for b in range(2):
    pos = [i for i in lists[b] if i >= 0]
    neg = [j for j in range(7) if j not in pos]
    terms = [np.log(np.exp(logits[b, i]) + np.exp(logits[b, neg]).sum()) - logits[b, i]
             for i in pos]
    per_row.append(np.mean(terms))
  want = (per_row[0] * 1.0 + per_row[1] * 3.0) / 4.0  # the empty row weighs nothing
  got = losses.full_softmax_loss(jnp.asarray(logits), jnp.asarray(mask), jnp.asarray(weights))
  assert float(got) == pytest.approx(want, rel=1e-5)
  unweighted = losses.full_softmax_loss(jnp.asarray(logits), jnp.asarray(mask))
  assert float(unweighted) == pytest.approx(np.mean(per_row), rel=1e-5)


def test_next_item_full_loss_matches_reference():
  rng = np.random.default_rng(4)
  reprs = rng.normal(size=(2, 3, 4)).astype(np.float32)
  table = rng.normal(size=(6, 4)).astype(np.float32)
  history = np.array([[-1, 1, 2], [0, 3, 5]], np.int32)
  positives = np.array([4, 1], np.int32)
  terms = []
  for b in range(2):
    targets = list(history[b, 1:]) + [positives[b]]
    for h in range(3):
      if history[b, h] >= 0 and targets[h] >= 0:
        z = reprs[b, h] @ table.T / 0.5
        terms.append(np.log(np.exp(z).sum()) - z[targets[h]])
  got = losses.next_item_full_loss(jnp.asarray(reprs), jnp.asarray(table), jnp.asarray(history),
                                   jnp.asarray(positives), temperature=0.5)
  assert float(got) == pytest.approx(np.mean(terms), rel=1e-5)


def test_next_item_full_loss_scores_only_the_real_positions_when_capped():
  rng = np.random.default_rng(5)
  reprs = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  history = jnp.array([[-1, -1, 1, 2], [-1, -1, -1, 0], [-1, 3, 4, 1]], jnp.int32)
  positives = jnp.array([4, 2, 0], jnp.int32)
  full = losses.next_item_full_loss(reprs, table, history, positives, temperature=1.0)
  exact = losses.next_item_full_loss(reprs, table, history, positives, temperature=1.0,
                                     max_targets=6)  # exactly the 6 real positions
  assert float(exact) == pytest.approx(float(full), rel=1e-6)
  first_two_rows = losses.next_item_full_loss(reprs[:2], table, history[:2], positives[:2],
                                              temperature=1.0)
  capped = losses.next_item_full_loss(reprs, table, history, positives, temperature=1.0,
                                      max_targets=3)  # row-major: rows 0 and 1 only
  assert float(capped) == pytest.approx(float(first_two_rows), rel=1e-6)
