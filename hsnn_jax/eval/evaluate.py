"""Full-corpus evaluation of a `Scorer` on a `RecDataset` split, and the `topk.npz` writer.

Users evaluated: those with a non-empty truth list in the split. Each is ranked against every item
by exhaustive scoring (`hsnn_jax.retrieval.exhaustive`), with the items the user is known to have
engaged with excluded:
  split='valid': train items (when exclude_train);
  split='test':  train items (when exclude_train) and valid items (when exclude_valid and the
                 dataset has a valid split: they are known at test time).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Sequence

import numpy as np

from hsnn_jax.data.types import RecDataset, concat_rows
from hsnn_jax.eval import metrics as metrics_lib
from hsnn_jax.models.scorer import Scorer, UserBatch
from hsnn_jax.retrieval.exhaustive import exhaustive_top_k_for_users
from hsnn_jax import atomic_write


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """metrics: {'recall@20': float, ...}; users [U] int32 dense ids; topk_items [U, Kmax] int32
  dense item ids (-1 = none); topk_scores [U, Kmax] float32."""

  metrics: Dict[str, float]
  users: np.ndarray
  topk_items: np.ndarray
  topk_scores: np.ndarray


def evaluate(scorer: Scorer, dataset: RecDataset, split: str = "test", ks: Sequence[int] = (10, 20),
             *, make_user_batch: Callable[[np.ndarray], UserBatch], exclude_train: bool = True,
             exclude_valid: bool = True, user_chunk: int = 256, item_chunk: int = 8192,
             max_users: int = 0, seed: int = 0) -> EvalResult:
  """Ranks the full corpus for every user with truth in `split` and computes ranking metrics.

  Args:
    scorer: the model's retrieval view.
    dataset: the dataset (dense ids).
    split: 'test' or 'valid'.
    ks: metric cutoffs; the top max(ks) items are retrieved.
    make_user_batch: user ids np[B] int32 -> UserBatch (history construction is the model's).
    exclude_train: exclude each user's train items from the ranking.
    exclude_valid: for split='test', also exclude valid items.
    user_chunk, item_chunk: retrieval chunk sizes (memory vs speed).
    max_users: > 0: a fixed uniform sample of at most this many of those users (the same users
      for every call with the same `seed`), e.g. for early stopping during training.

  Returns:
    An `EvalResult`; metrics names are those of `metrics.ranking_metrics`.
  """
  if split not in ("test", "valid"):
    raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
  truth_csr = getattr(dataset, split)
  users = np.flatnonzero(truth_csr.lengths() > 0).astype(np.int32)
  if 0 < max_users < users.shape[0]:
    users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
  known = ([dataset.train] if exclude_train else []) + (
      [dataset.valid] if split == "test" and exclude_valid and dataset.valid.nnz else [])
  exclude = concat_rows(known, users).to_padded()[0] if known else None
  k_max = max(ks)
  scores, items = exhaustive_top_k_for_users(
      scorer, make_user_batch, users, k_max, num_items=dataset.num_items, user_chunk=user_chunk,
      item_chunk=item_chunk, exclude=exclude)
  truth = concat_rows([truth_csr], users).to_padded()[0]
  values = metrics_lib.ranking_metrics(items, truth, ks)
  return EvalResult(metrics={name: float(v) for name, v in values.items()}, users=users,
                    topk_items=items, topk_scores=scores)


def save_topk(path: str, result: EvalResult, dataset: RecDataset) -> None:
  """Writes `users` [U] and `items` [U, K] as int64 original ids (-1 padding kept) to an npz."""
  items = result.topk_items
  original = np.where(items >= 0, dataset.item_ids[np.maximum(items, 0)], -1).astype(np.int64)
  with atomic_write.atomic_path(path) as tmp:
    np.savez(tmp, users=dataset.user_ids[result.users].astype(np.int64), items=original)
