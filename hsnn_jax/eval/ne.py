"""Held-out normalized entropy (NE, METHOD.md §6) of a retrieval model.

HSNN reports NE of calibrated click probabilities; a retrieval model trained by sampled softmax
gives scores on an arbitrary scale, so NE here is measured on a fixed binary task [ours]:
  examples: every held-out (user, item) pair of the split is a positive (the first
    `max_positives` of each user's); each such user gets
    `negatives_per_positive` x (its positive count) items drawn uniformly from the corpus as
    negatives (draws that hit one of the user's known or held-out items are dropped);
  calibration: p = sigmoid(a * score + b), (a, b) fit by Newton's method on the users of even
    rank, NE measured on the users of odd rank (so the calibration never sees what it is
    scored on).
NE < 1 beats predicting the base rate; lower is better. Only comparable between runs with the
same `negatives_per_positive` and seed.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.chunking import map_in_chunks
from hsnn_jax.data.types import RecDataset, concat_rows
from hsnn_jax.eval.metrics import normalized_entropy
from hsnn_jax.models.scorer import Scorer, UserBatch
from hsnn_jax.retrieval.beam_search import encode_ids, score_candidates


def _pairs(ds: RecDataset, split: str, negatives_per_positive: int, max_positives: int,
           seed: int):
  """users [U], candidates [U, C] (-1 padded), labels [U, C] float32 (positives first)."""
  truth_csr = getattr(ds, split)
  users = np.flatnonzero(truth_csr.lengths() > 0).astype(np.int32)
  truth = concat_rows([truth_csr], users).to_padded(
      min(max_positives, int(truth_csr.lengths().max())), keep="first")[0]
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, ds.num_items, (users.shape[0], truth.shape[1] * negatives_per_positive))
  known = concat_rows([ds.train, ds.valid, ds.test], users)
  known_keys = known.row_ids().astype(np.int64) * ds.num_items + known.values
  draw_keys = np.arange(users.shape[0], dtype=np.int64)[:, None] * ds.num_items + draws
  hit = np.isin(draw_keys, known_keys)
  wanted = np.repeat(truth >= 0, negatives_per_positive, axis=1)
  negatives = np.where(wanted & ~hit, draws, -1)
  candidates = np.concatenate([truth, negatives], 1).astype(np.int32)
  labels = np.concatenate([np.ones_like(truth), np.zeros_like(negatives)], 1).astype(np.float32)
  return users, candidates, labels


def _fit_platt(scores: np.ndarray, labels: np.ndarray, iters: int = 50) -> tuple:
  """(a, b) maximising the likelihood of sigmoid(a * s + b) by Newton steps (NumPy, float64)."""
  x = np.stack([scores, np.ones_like(scores)], 1).astype(np.float64)
  w = np.zeros(2)
  for _ in range(iters):
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    grad = x.T @ (p - labels)
    hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.abs(step).max() < 1e-9:
      break
  return float(w[0]), float(w[1])


def heldout_ne(scorer: Scorer, ds: RecDataset, make_user_batch: Callable[[np.ndarray], UserBatch],
               split: str = "test", negatives_per_positive: int = 10, max_positives: int = 20,
               seed: int = 0, user_chunk: int = 256) -> float:
  """NE of the calibrated scores on the odd-ranked users of `split` (module docstring)."""
  users, candidates, labels = _pairs(ds, split, negatives_per_positive, max_positives, seed)
  reprs = encode_ids(scorer, np.arange(ds.num_items))
  score = jax.jit(lambda ub, cand: score_candidates(scorer.score, scorer.encode_users(ub), reprs, cand))
  if not users.shape[0]:
    return float("nan")
  scores = map_in_chunks(
      lambda rows: score(make_user_batch(users[rows]), jnp.asarray(candidates[rows])),
      users.shape[0], user_chunk)
  valid = candidates >= 0
  fit_rows = (np.arange(users.shape[0]) % 2 == 0)[:, None] & valid
  test_rows = (np.arange(users.shape[0]) % 2 == 1)[:, None] & valid
  if not fit_rows.any() or not test_rows.any():
    return float("nan")
  a, b = _fit_platt(scores[fit_rows], labels[fit_rows])
  return float(normalized_entropy(jnp.asarray(labels[test_rows]),
                                  jnp.asarray(a * scores[test_rows] + b)))
