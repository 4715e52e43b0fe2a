"""Amazon 5-core sequences in the S3-Rec preprocessing (Beauty, Sports_and_Outdoors, Toys_and_Games).

`<stem>.txt` holds one line per user, `user_id item item ...`, items in time order, user ids
1..U and item ids 1..I (0 is padding upstream; here item k becomes dense id k-1 and item_ids keeps
k). `<stem>_item2attributes.json` maps item ids to category and brand ids, which become
`item_attrs` (re-indexed densely, in increasing order of the original attribute id).
Leave-one-out: last item = test, second-last = valid, the rest = train.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Optional

import numpy as np

from hsnn_jax.data import text_io
from hsnn_jax.data.splits import group_rows, leave_one_out
from hsnn_jax.data.text_io import DataFormatError
from hsnn_jax.data.types import CSR, RecDataset

# An item id key: a positive integer in ASCII digits (int() would also take ' 1', '+1', '1_0').
_ITEM_KEY = re.compile(r"0*[1-9][0-9]{0,17}")


class _Pairs(list):
  """The (key, value) pairs of a JSON object, in file order (keeps duplicated keys)."""


def _key_line(text: str, key: str, nth: int = 1) -> Optional[int]:
  """The 1-based line of the nth `"key":` in the JSON `text`, or None if not found."""
  for quoted in dict.fromkeys((json.dumps(key), json.dumps(key, ensure_ascii=False))):
    found = list(itertools.islice(re.finditer(re.escape(quoted) + r"\s*:", text), nth))
    if len(found) == nth:
      return text.count("\n", 0, found[-1].start()) + 1
  return None


def read_item_attributes(path) -> dict[int, list[int]]:
  """{item id: [attribute id, ...]} from the S3-Rec JSON file, with its ids checked.

  The keys must be the item ids 1..N, each once (as upstream writes them); attribute ids are
  non-negative integers.
  """
  text = text_io.read_text(path)
  try:
    raw = json.loads(text, object_pairs_hook=_Pairs)
  except json.JSONDecodeError as e:
    raise DataFormatError(path, e.lineno, "a JSON object {\"item_id\": [attr_id, ...]}",
                          f"invalid JSON ({e.msg} at column {e.colno})") from None
  except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; absurd nesting
    raise DataFormatError(path, None, "a JSON object {\"item_id\": [attr_id, ...]}",
                          f"unreadable JSON ({type(e).__name__}: {str(e)[:100]})") from None
  if not isinstance(raw, _Pairs):
    raise DataFormatError(path, 1, "a JSON object {\"item_id\": [attr_id, ...]}",
                          type(raw).__name__)
  if not raw:
    raise DataFormatError(path, 1, "a JSON object {\"item_id\": [attr_id, ...]}",
                          "an empty object")
  out = {}
  for i, (key, attrs) in enumerate(raw):
    if not _ITEM_KEY.fullmatch(key):
      raise DataFormatError(path, _key_line(text, key), "item ids >= 1 as keys",
                            f"the key {key!r}")
    if int(key) in out:
      nth = 1 + sum(k == key for k, _ in raw[:i])  # this key's occurrence in the file
      raise DataFormatError(path, _key_line(text, key, nth),
                            "each item id once as a key",
                            f"item {int(key)} again (the key {key!r})")
    if not isinstance(attrs, list) or not all(
        isinstance(a, int) and not isinstance(a, bool) and 0 <= a < 2**63 for a in attrs):
      raise DataFormatError(path, _key_line(text, key),
                            f"a list of non-negative int64 attribute ids for item {key}",
                            repr(attrs))
    out[int(key)] = attrs
  if max(out) != len(out):  # unique ids >= 1: a gap iff the largest exceeds the count
    missing = next(i for i in range(1, len(out) + 1) if i not in out)
    raise DataFormatError(path, None, f"the item ids 1..{max(out)} as keys, each once",
                          f"no key for item {missing} (the largest key is {max(out)})")
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
  if not len(lines.head):
    raise DataFormatError(sequences_path, None, "one line 'user_id item_id ...' per user",
                          "an empty file")
  attributes = read_item_attributes(attributes_path) if attributes_path else None
  if attributes is not None:
    num_items = len(attributes)  # the ids 1..N, checked by read_item_attributes
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
