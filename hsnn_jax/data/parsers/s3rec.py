"""Amazon 5-core sequences in the S3-Rec preprocessing (Beauty, Sports_and_Outdoors, Toys_and_Games).

`<stem>.txt` holds one line per user, `user_id item item ...`, items in time order, user ids
1..U and item ids 1..I (0 is padding upstream; here item k becomes dense id k-1 and item_ids keeps
k). `<stem>_item2attributes.json` maps item ids to category and brand ids, which become
`item_attrs` (re-indexed densely, in increasing order of the original attribute id).
Leave-one-out: last item = test, second-last = valid, the rest = train.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

from hsnn_jax.data import text_io
from hsnn_jax.data.splits import group_rows, leave_one_out
from hsnn_jax.data.text_io import DataFormatError
from hsnn_jax.data.types import CSR, RecDataset


def read_item_attributes(path) -> dict[int, list[int]]:
  """{item id: [attribute id, ...]} from the S3-Rec JSON file, with its ids checked."""
  text = text_io.read_text(path)
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFormatError(path, e.lineno, "a JSON object {\"item_id\": [attr_id, ...]}",
                          f"invalid JSON ({e.msg} at column {e.colno})") from None
  if not isinstance(raw, dict):
    raise DataFormatError(path, 1, "a JSON object", type(raw).__name__)
  out = {}
  for key, attrs in raw.items():
    if not (key.isascii() and key.isdigit()) or int(key) < 1:
      raise DataFormatError(path, None, "item ids >= 1 as keys", repr(key))
    if not isinstance(attrs, list) or not all(
        isinstance(a, int) and not isinstance(a, bool) and a >= 0 for a in attrs):
      raise DataFormatError(path, None, f"a list of non-negative attribute ids for item {key}",
                            repr(attrs))
    out[int(key)] = attrs
  return out


def _attrs_csr(attributes: dict[int, list[int]], num_items: int) -> tuple[CSR, int]:
  items = np.fromiter(attributes.keys(), np.int64, len(attributes)) - 1
  lengths = np.fromiter((len(a) for a in attributes.values()), np.int64, len(attributes))
  flat = np.fromiter((a for attrs in attributes.values() for a in attrs), np.int64, lengths.sum())
  vocab, dense = np.unique(flat, return_inverse=True)
  indptr, values = group_rows(np.repeat(items, lengths), num_items, dense.astype(np.int32))
  return CSR(indptr=indptr, values=values), len(vocab)


def parse(sequences_path, attributes_path: Optional[str], name: str) -> RecDataset:
  """Parses one category's sequence file (and its attribute file when given)."""
  lines = text_io.parse_id_lines(sequences_path, text_io.read_text(sequences_path))
  attributes = read_item_attributes(attributes_path) if attributes_path else None
  if attributes is not None:
    num_items = max(attributes, default=0)
    item_range = f"[1, {num_items}] (the items of {attributes_path})"
  else:
    num_items = int(lines.values.max(initial=0))
    item_range = "[1, ...]"
  bad_item = np.flatnonzero((lines.values < 1) | (lines.values > num_items))
  if bad_item.size:
    k = int(bad_item[0])
    raise DataFormatError(sequences_path, lines.line_of_value(k), f"an item id in {item_range}",
                          str(lines.values[k]))
  bad_user = text_io.first_line_where(lines.head < 1, lines.line)
  if bad_user is not None:
    raise DataFormatError(sequences_path, bad_user, "a user id >= 1", "0")
  lines.check_nonempty(sequences_path, "empty user")
  lines.check_unique_heads(sequences_path)
  user_ids, dense_user = np.unique(lines.head, return_inverse=True)
  num_users = len(user_ids)
  train, valid, test, _ = leave_one_out(np.repeat(dense_user, lines.counts), lines.values - 1,
                                        num_users)
  item_attrs, num_attrs = (_attrs_csr(attributes, num_items) if attributes is not None
                           else (None, 0))
  return RecDataset(
      name=name, protocol="leave_one_out", num_users=num_users, num_items=num_items,
      train=train, valid=valid, test=test, user_ids=user_ids.astype(np.int64),
      item_ids=np.arange(1, num_items + 1, dtype=np.int64), item_attrs=item_attrs,
      num_attrs=num_attrs)
