"""The in-memory dataset record shared by every loader, the cache and the trainer.

A `RecDataset` holds one public or synthetic dataset after parsing, in dense id space:
users are 0..num_users-1 and items 0..num_items-1. Per-user item lists are CSR arrays
(`*_indptr` [num_users + 1] int64, `*_items` [nnz] int32); within a user, items keep the
order of the source file (chronological for sequential protocols).

Splits:
  train: what the model may see. Excluded from ranking at evaluation time.
  valid: for early stopping and model selection (may be empty: indptr all zeros).
  test:  held out; reported metrics use it.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class CSR:
  """Per-row variable-length int lists. `indptr` [rows + 1] int64, `values` [nnz] int32."""

  indptr: np.ndarray
  values: np.ndarray

  @property
  def num_rows(self) -> int:
    return int(self.indptr.shape[0] - 1)

  @property
  def nnz(self) -> int:
    return int(self.values.shape[0])

  def row(self, i: int) -> np.ndarray:
    return self.values[self.indptr[i]:self.indptr[i + 1]]

  def lengths(self) -> np.ndarray:
    return np.diff(self.indptr)

  def row_ids(self) -> np.ndarray:
    """[nnz] int32: the row of each value (COO row index)."""
    return np.repeat(np.arange(self.num_rows, dtype=np.int32), self.lengths())

  @classmethod
  def from_lists(cls, rows) -> "CSR":
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    values = (np.concatenate([np.asarray(r, dtype=np.int32) for r in rows])
              if len(rows) and indptr[-1] > 0 else np.zeros(0, np.int32))
    return cls(indptr=indptr, values=values.astype(np.int32))

  @classmethod
  def empty(cls, num_rows: int) -> "CSR":
    return cls(indptr=np.zeros(num_rows + 1, np.int64), values=np.zeros(0, np.int32))

  def to_padded(self, max_len: Optional[int] = None, pad: int = -1, keep: str = "last"):
    """Dense [rows, max_len] int32 with `pad` fill, plus a bool mask.

    If a row is longer than max_len, `keep` says which end survives ('last' keeps the most
    recent items of a chronological row, 'first' the oldest).
    """
    lengths = self.lengths()
    if max_len is None:
      max_len = int(lengths.max()) if lengths.size else 0
    max_len = max(int(max_len), 1)
    out = np.full((self.num_rows, max_len), pad, dtype=np.int32)
    take = np.minimum(lengths, max_len)
    # Position of each kept value inside its row, vectorised (no Python loop over rows).
    starts = self.indptr[:-1] + (lengths - take if keep == "last" else 0)
    rows = np.repeat(np.arange(self.num_rows), take)
    offs = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    out[rows, offs] = self.values[np.repeat(starts, take) + offs]
    return out, np.arange(max_len)[None, :] < take[:, None]


def concat_rows(csrs: Sequence[CSR], users: np.ndarray) -> CSR:
  """Rows `users` of several CSRs, concatenated per user (row i: users[i]'s items). Vectorised."""
  lengths = sum(c.lengths()[users] for c in csrs)
  indptr = np.zeros(len(users) + 1, np.int64)
  np.cumsum(lengths, out=indptr[1:])
  values = np.empty(int(indptr[-1]), np.int32)
  offset = indptr[:-1].copy()
  for c in csrs:
    n = c.lengths()[users]
    within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # position inside its row
    values[np.repeat(offset, n) + within] = c.values[np.repeat(c.indptr[:-1][users], n) + within]
    offset += n
  return CSR(indptr=indptr, values=values)


@dataclasses.dataclass(frozen=True)
class RecDataset:
  """One dataset, parsed and split. See the module docstring for conventions."""

  name: str
  protocol: str  # 'given_split' (LightGCN files) | 'leave_one_out' | 'synthetic'
  num_users: int
  num_items: int
  train: CSR
  valid: CSR
  test: CSR
  # Original ids, so outputs can be written in the dataset's own id space.
  user_ids: np.ndarray  # [num_users] int64
  item_ids: np.ndarray  # [num_items] int64
  # Optional side information.
  train_ratings: Optional[np.ndarray] = None  # [train.nnz] float32, aligned with train.values
  item_attrs: Optional[CSR] = None  # item -> attribute keys in 0..num_attrs-1 (I2IF keys)
  num_attrs: int = 0
  user_features: Optional[np.ndarray] = None  # [num_users, F] int32 categorical, 0 = unknown
  user_feature_sizes: tuple = ()  # vocabulary size of each user feature column
  # Synthetic corpora only: the planted hierarchy, [num_items, depth] int32 cluster path.
  item_tree_paths: Optional[np.ndarray] = None

  def __post_init__(self):
    for split in ("train", "valid", "test"):
      csr = getattr(self, split)
      if csr.num_rows != self.num_users:
        raise ValueError(f"{self.name}: {split} has {csr.num_rows} rows, expected {self.num_users} users")
      if csr.nnz and (csr.values.min() < 0 or csr.values.max() >= self.num_items):
        raise ValueError(f"{self.name}: {split} holds item ids outside [0, {self.num_items})")

  def summary(self) -> str:
    return (f"{self.name} ({self.protocol}): {self.num_users} users, {self.num_items} items, "
            f"train {self.train.nnz}, valid {self.valid.nnz}, test {self.test.nnz} interactions"
            + (f", {self.num_attrs} item attribute keys" if self.item_attrs is not None else ""))
