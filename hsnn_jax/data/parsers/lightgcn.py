"""NGCF/LightGCN split files (Gowalla, Yelp2018, Amazon-Book): the given train/test split.

`train.txt` / `test.txt` hold one line per user, `user_id item_id item_id ...`, ids 0-based and
dense. `user_list.txt` / `item_list.txt` (header `org_id remap_id`) map them to original ids and
fix the number of users and items. A test line may be just `user_id ` (Amazon-Book has four);
a train line must hold at least one item.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import numpy as np
from absl import logging

from hsnn_jax.data import text_io
from hsnn_jax.data.splits import group_rows
from hsnn_jax.data.text_io import DataFormatError
from hsnn_jax.data.types import CSR, RecDataset

# An original id that int64 holds (ASCII digits only: int() would also take '+1', ' 1', '1_0').
_INT_ID = re.compile(r"-?[0-9]{1,18}")
_MAX_COUNT = int(np.iinfo(np.int32).max)


def read_id_map(path) -> tuple[int, Optional[np.ndarray]]:
  """`org_id remap_id` rows -> (number of ids, [n] int64 original id of each remapped id).

  The original ids are None (with a log line) when they are not integers (Yelp and Amazon use
  strings, which `RecDataset` cannot hold); the caller then keeps the remapped ids. The number
  of rows fixes the number of users (items) either way.
  """
  lines = text_io.split_lines(text_io.read_text(path))
  if not lines or lines[0].split() != ["org_id", "remap_id"]:
    raise DataFormatError(path, 1, "the header 'org_id remap_id'", repr(lines[0] if lines else ""))
  rows = [line.split() for line in lines[1:]]
  for i, row in enumerate(rows):
    if len(row) != 2:
      raise DataFormatError(path, i + 2, "two fields 'org_id remap_id'", repr(lines[i + 1]))
  remap = [row[1] for row in rows]
  wrong = [i for i, r in enumerate(remap) if r != str(i)]
  if wrong:
    raise DataFormatError(path, wrong[0] + 2, f"remap_id {wrong[0]} (rows in id order)",
                          repr(remap[wrong[0]]))
  if all(_INT_ID.fullmatch(row[0]) for row in rows):
    return len(rows), np.array([int(row[0]) for row in rows], np.int64)
  logging.info("%s: original ids are not all integers; keeping the remapped ids.", path)
  return len(rows), None


def _check_users(path, lines: text_io.IdLines, num_users: int) -> None:
  out = lines.head >= num_users
  if out.any():
    k = np.flatnonzero(out)[0]
    raise DataFormatError(path, int(lines.line[k]), f"a user id in [0, {num_users})",
                          str(lines.head[k]))
  lines.check_unique_heads(path)


def _check_items(path, lines: text_io.IdLines, num_items: int) -> None:
  out = np.flatnonzero(lines.values >= num_items)
  if out.size:
    raise DataFormatError(path, lines.line_of_value(int(out[0])), f"an item id in [0, {num_items})",
                          str(lines.values[out[0]]))


def _to_csr(lines: text_io.IdLines, num_users: int) -> CSR:
  rows = np.repeat(lines.head, lines.counts)
  indptr, values = group_rows(rows, num_users, lines.values)
  return CSR(indptr=indptr, values=values.astype(np.int32))


def parse(paths: Mapping[str, str], name: str) -> RecDataset:
  """Parses the files in `paths` ('train.txt', 'test.txt', optionally the two id lists)."""
  train = text_io.parse_id_lines(paths["train.txt"], text_io.read_text(paths["train.txt"]))
  test = text_io.parse_id_lines(paths["test.txt"], text_io.read_text(paths["test.txt"]))
  if not len(train.head):
    raise DataFormatError(paths["train.txt"], None, "one line 'user_id item_id ...' per user",
                          "an empty file")
  # Without the id lists the counts come from the largest ids (capped: CSR values are int32).
  if "user_list.txt" in paths:
    num_users, user_ids = read_id_map(paths["user_list.txt"])
  else:
    num_users = min(int(max(train.head.max(), test.head.max(initial=-1))) + 1, _MAX_COUNT)
    user_ids = None
  if "item_list.txt" in paths:
    num_items, item_ids = read_id_map(paths["item_list.txt"])
  else:
    num_items = min(int(max(train.values.max(initial=-1), test.values.max(initial=-1))) + 1,
                    _MAX_COUNT)
    item_ids = None
  for key, lines in (("train.txt", train), ("test.txt", test)):
    _check_users(paths[key], lines, num_users)
    _check_items(paths[key], lines, num_items)
  train.check_nonempty(paths["train.txt"], "truncated line")
  if len(train.head) != num_users:  # the heads are unique and in range, so some user lacks a line
    heads = np.sort(train.head)
    missing = int(np.flatnonzero(heads != np.arange(len(heads)))[0]) if (
        heads[-1] >= len(heads)) else len(heads)
    raise DataFormatError(paths["train.txt"], None, f"one line for each of the {num_users} users",
                          f"no line for user {missing}")
  return RecDataset(
      name=name, protocol="given_split", num_users=num_users, num_items=num_items,
      train=_to_csr(train, num_users), valid=CSR.empty(num_users), test=_to_csr(test, num_users),
      user_ids=user_ids if user_ids is not None else np.arange(num_users, dtype=np.int64),
      item_ids=item_ids if item_ids is not None else np.arange(num_items, dtype=np.int64))

