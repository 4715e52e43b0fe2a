"""Vectorised train/valid/test splitting of (user, item) interactions into CSR rows."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from hsnn_jax.data.types import CSR, RecDataset


def group_rows(rows: np.ndarray, num_rows: int, *columns: np.ndarray):
  """Stable-sorts parallel COO columns by row.

  Args:
    rows: [n] int row index of each entry.
    num_rows: number of CSR rows.
    *columns: [n] arrays to reorder along with the rows.

  Returns:
    indptr [num_rows + 1] int64, then each column reordered (entries keep their input order
    within a row).
  """
  order = np.argsort(rows, kind="stable")
  indptr = np.zeros(num_rows + 1, np.int64)
  np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
  return (indptr, *(c[order] for c in columns))


def take_rows(csr: CSR, rows: np.ndarray) -> CSR:
  """The CSR made of `csr`'s rows listed in `rows` [n] (in that order)."""
  lengths = csr.lengths()[rows]
  indptr = np.zeros(len(rows) + 1, np.int64)
  np.cumsum(lengths, out=indptr[1:])
  offsets = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
  return CSR(indptr=indptr, values=csr.values[np.repeat(csr.indptr[:-1][rows], lengths) + offsets])


def leave_one_out(rows: np.ndarray, items: np.ndarray, num_rows: int,
                  ratings: Optional[np.ndarray] = None):
  """Last interaction of each row = test, second-last = valid, the rest = train.

  Entries must be in chronological order within each row. A row with two entries gives one
  train and one test item, a row with one entry only a train item.

  Args:
    rows: [n] int user of each interaction.
    items: [n] int item of each interaction.
    num_rows: number of users.
    ratings: optional [n] float ratings, kept for the train part.

  Returns:
    (train, valid, test) CSRs and the [train.nnz] float32 train ratings (or None).
  """
  cols = (items,) if ratings is None else (items, ratings)
  indptr, *cols = group_rows(rows, num_rows, *cols)
  lengths = np.diff(indptr)
  row_of = np.repeat(np.arange(num_rows), lengths)
  from_end = indptr[1:][row_of] - 1 - np.arange(indptr[-1])
  is_test = (from_end == 0) & (lengths[row_of] >= 2)
  is_valid = (from_end == 1) & (lengths[row_of] >= 3)
  is_train = ~(is_test | is_valid)
  split = [_subset(indptr, cols[0], row_of, num_rows, m) for m in (is_train, is_valid, is_test)]
  train_ratings = cols[1][is_train].astype(np.float32) if ratings is not None else None
  return split[0], split[1], split[2], train_ratings


def _subset(indptr, values, row_of, num_rows, mask) -> CSR:
  sub = np.zeros(num_rows + 1, np.int64)
  np.cumsum(np.bincount(row_of[mask], minlength=num_rows), out=sub[1:])
  return CSR(indptr=sub, values=values[mask].astype(np.int32))


def split_random(csr: CSR, fraction: float, rng: np.random.Generator
                 ) -> tuple[CSR, CSR, np.ndarray]:
  """Moves a random `fraction` of each row to a second CSR, keeping >= 1 entry in the first.

  Each row gives floor(fraction * n) entries (at most n - 1). Entries keep their order.

  Returns:
    (kept, moved) CSRs, and the [csr.nnz] bool mask of moved entries.
  """
  lengths = csr.lengths()
  take = np.minimum(np.floor(fraction * lengths).astype(np.int64), np.maximum(lengths - 1, 0))
  row_of = csr.row_ids()
  order = np.lexsort((rng.random(csr.nnz), row_of))  # a random order inside each row
  rank = np.empty(csr.nnz, np.int64)
  rank[order] = np.arange(csr.nnz) - np.repeat(csr.indptr[:-1], lengths)
  moved = rank < take[row_of]
  return (_subset(csr.indptr, csr.values, row_of, csr.num_rows, ~moved),
          _subset(csr.indptr, csr.values, row_of, csr.num_rows, moved), moved)


def carve_valid(ds: RecDataset, fraction: float, seed: int = 0) -> RecDataset:
  """Moves a random `fraction` of each user's train items to valid (see `split_random`).

  For datasets given without a validation split; the draw depends only on `seed`.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"valid_fraction must be in [0, 1), got {fraction}")
  if fraction == 0.0:
    return ds
  if ds.valid.nnz:
    raise ValueError(f"{ds.name} already has a validation split ({ds.valid.nnz} items)")
  train, valid, moved = split_random(ds.train, fraction, np.random.default_rng(seed))
  ratings = ds.train_ratings[~moved] if ds.train_ratings is not None else None
  return dataclasses.replace(ds, train=train, valid=valid, train_ratings=ratings)
