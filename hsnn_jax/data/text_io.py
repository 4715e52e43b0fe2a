"""Strict, vectorised readers for the text formats of the public datasets.

Every malformed input raises `DataFormatError` with the file, the 1-based line number, what was
expected and what was found, so a user can open the file at that line. Readers work on whole
files (the largest supported, ML-20M's ratings.csv, is read in blocks of lines).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import re
import warnings
from typing import Iterator, Sequence

import numpy as np

# Ids longer than this could overflow int64; no supported dataset comes close.
_MAX_ID_DIGITS = 18
_BLOCK_BYTES = 64 << 20


class DataFormatError(ValueError):
  """A malformed input file. The message reads `FILE:LINE: expected ..., found ...`."""

  def __init__(self, path, line: int | None, expected: str, found: str):
    where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
    super().__init__(f"{where}: expected {expected}, found {found}")
    self.path, self.line = os.fspath(path), line


def _open_binary(path):
  if os.fspath(path).endswith(".gz"):  # buffered, so readline runs in C
    return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
  return open(path, "rb")


def _decode(path, data: bytes, encoding: str, first_line: int = 1) -> str:
  try:
    return data.decode(encoding)
  except UnicodeDecodeError as e:
    line = first_line + data.count(b"\n", 0, e.start)
    bad = data[e.start:e.start + 4]
    raise DataFormatError(path, line, f"{encoding} text", f"undecodable bytes {bad!r}") from None


def split_lines(text: str) -> list[str]:
  """Lines without their LF or CRLF ending (unlike str.splitlines, keeps Latin-1 \\x85)."""
  lines = text.split("\n")
  if lines and not lines[-1]:
    lines.pop()
  return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_text(path, encoding: str = "utf-8") -> str:
  """The whole file decoded strictly (a decode error names its line). `.gz` is decompressed."""
  with _open_binary(path) as fh:
    return _decode(path, fh.read(), encoding)


def iter_line_blocks(path, encoding: str, block_bytes: int = _BLOCK_BYTES
                     ) -> Iterator[tuple[int, list[str]]]:
  """Yields (1-based number of the block's first line, its lines without line endings)."""
  first = 1
  with _open_binary(path) as fh:
    while True:
      raw = fh.readlines(block_bytes)
      if not raw:
        return
      yield first, split_lines(_decode(path, b"".join(raw), encoding, first))
      first += len(raw)


@dataclasses.dataclass(frozen=True)
class IdLines:
  """A file of lines `head id id ...` (LightGCN, S3-Rec), every token a non-negative integer.

  line:   [L] int64 1-based line number of each non-blank line
  head:   [L] int64 the first token of each line (the user id)
  counts: [L] int64 number of tokens after the head
  values: [sum(counts)] int64 the tokens after the heads, line by line
  """

  line: np.ndarray
  head: np.ndarray
  counts: np.ndarray
  values: np.ndarray

  def line_of_value(self, k: int) -> int:
    return int(self.line[np.searchsorted(np.cumsum(self.counts), k, side="right")])

  def check_unique_heads(self, path) -> None:
    """Raises on the first user id that has a second line."""
    order = np.argsort(self.head, kind="stable")
    repeat = np.flatnonzero(np.diff(self.head[order]) == 0)
    if repeat.size:
      first, again = order[repeat[0]], order[repeat[0] + 1]
      raise DataFormatError(path, int(self.line[again]), "one line per user",
                            f"user {self.head[again]} again (duplicated user line; first on "
                            f"line {self.line[first]})")

  def check_nonempty(self, path, problem: str) -> None:
    """Raises on the first line that holds a user id but no items."""
    empty = np.flatnonzero(self.counts == 0)
    if empty.size:
      k = empty[0]
      raise DataFormatError(path, int(self.line[k]), "'user_id item_id ...' with at least one item",
                            f"user {self.head[k]} with no items ({problem})")


def parse_id_lines(path, text: str) -> IdLines:
  """Parses `text` (the content of `path`) as lines of whitespace-separated integer ids.

  Blank lines are an error, except the empty string after the final newline.
  """
  bad = re.search(r"[^0-9 \t\r\n]", text)
  if bad is not None:
    line = text.count("\n", 0, bad.start()) + 1
    end = text.find("\n", bad.start())
    line_text = text[text.rfind("\n", 0, bad.start()) + 1:end if end >= 0 else len(text)]
    token = next((t for t in line_text.split() if not (t.isascii() and t.isdigit())),
                 text[bad.start()])
    raise DataFormatError(path, line, "non-negative integer ids separated by spaces", repr(token))
  chars = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
  is_digit = (chars >= ord("0")) & (chars <= ord("9"))
  starts = np.flatnonzero(is_digit & ~np.concatenate([[False], is_digit[:-1]]))
  ends = np.flatnonzero(is_digit & ~np.concatenate([is_digit[1:], [False]])) + 1
  newlines = np.flatnonzero(chars == ord("\n"))
  num_lines = len(newlines) + (1 if len(chars) and chars[-1] != ord("\n") else 0)
  token_line = np.searchsorted(newlines, starts)  # 0-based line of each token
  counts = np.bincount(token_line, minlength=num_lines).astype(np.int64)
  if (counts == 0).any():
    raise DataFormatError(path, int(np.flatnonzero(counts == 0)[0]) + 1,
                          "'user_id item_id ...'", "a blank line")
  too_long = np.flatnonzero(ends - starts > _MAX_ID_DIGITS)
  if too_long.size:
    k = too_long[0]
    raise DataFormatError(path, int(token_line[k]) + 1, f"an id of at most {_MAX_ID_DIGITS} digits",
                          repr(text[starts[k]:ends[k]]))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    tokens = np.fromstring(text, dtype=np.int64, sep=" ") if len(starts) else np.zeros(0, np.int64)
  assert tokens.shape[0] == starts.shape[0], (path, tokens.shape, starts.shape)
  first = np.concatenate([[0], np.cumsum(counts)[:-1]])
  is_head = np.zeros(len(tokens), bool)
  is_head[first] = True
  return IdLines(line=np.arange(1, num_lines + 1, dtype=np.int64), head=tokens[first],
                 counts=counts - 1, values=tokens[~is_head])


def parse_table(path, *, sep: str, dtypes: Sequence, encoding: str, header: str | None = None,
                names: Sequence[str] | None = None) -> list[np.ndarray]:
  """A delimited numeric table, one array per column (`dtypes` gives each column's type).

  `header`, when given, must be the exact first line. Lines of the wrong width and unparsable
  numbers raise `DataFormatError` naming the line. Row r of the result is line r + 1 (r + 2
  with a header).
  """
  ncols = len(dtypes)
  names = names or [f"column {c + 1}" for c in range(ncols)]
  blocks = [[] for _ in range(ncols)]
  for first, lines in iter_line_blocks(path, encoding):
    if header is not None and first == 1:
      if not lines or lines[0] != header:
        raise DataFormatError(path, 1, f"the header {header!r}", repr(lines[0] if lines else ""))
      lines, first = lines[1:], 2
    if not lines:
      continue
    fields = sep.join(lines).split(sep)
    if len(fields) != len(lines) * ncols:
      for i, line in enumerate(lines):
        if line.count(sep) != ncols - 1:
          raise DataFormatError(path, first + i, f"{ncols} fields separated by {sep!r}",
                                f"{line.count(sep) + 1} fields in {line!r}")
    for c, dtype in enumerate(dtypes):
      column = fields[c::ncols]
      parsed = _fast_numbers(column, dtype)
      blocks[c].append(parsed if parsed is not None
                       else _strict_numbers(path, first, column, dtype, names[c]))
  return [np.concatenate(b) if b else np.zeros(0, dtype) for b, dtype in zip(blocks, dtypes)]


def _in_range(values: np.ndarray) -> np.ndarray:
  """False where a parsed value is non-finite or saturated (overflowed) int64."""
  if values.dtype.kind in "iu":
    info = np.iinfo(values.dtype)
    return (values != info.max) & (values != info.min)
  return np.isfinite(values)


def _fast_numbers(column: list[str], dtype) -> np.ndarray | None:
  """The column parsed in C, or None when any field is not a plain number of `dtype`."""
  joined = " ".join(column)
  if joined.count(" ") != len(column) - 1 or "\t" in joined:
    return None  # whitespace inside a field
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)
      out = np.fromstring(joined, dtype=dtype, sep=" ")
  except ValueError:  # newer numpy raises at a bad field; older ones stop there
    return None
  return out if out.shape[0] == len(column) and _in_range(out).all() else None


def _strict_numbers(path, first: int, column: list[str], dtype, name: str) -> np.ndarray:
  """The column parsed field by field (the slow path); raises at the first bad field."""
  out = np.empty(len(column), dtype)
  for i, value in enumerate(column):
    try:
      out[i] = np.array([value]).astype(dtype)[0]
      ok = bool(_in_range(out[i:i + 1])[0])
    except (ValueError, OverflowError):
      ok = False
    if not ok:
      kind = "an integer" if np.dtype(dtype).kind in "iu" else "a finite number"
      raise DataFormatError(path, first + i, f"{kind} ({name})", repr(value))
  return out


def read_rows(path, *, sep: str, num_fields: int, encoding: str) -> list[list[str]]:
  """A small delimited text table as rows of strings; row i is line i + 1."""
  rows = [line.split(sep) for line in split_lines(read_text(path, encoding))]
  for i, row in enumerate(rows):
    if len(row) != num_fields:
      raise DataFormatError(path, i + 1, f"{num_fields} fields separated by {sep!r}",
                            f"{len(row)} fields in {sep.join(row)!r}")
  return rows


def to_int(path, line: int, value: str, what: str) -> int:
  if not (value.isascii() and value.isdigit()):
    raise DataFormatError(path, line, f"a non-negative integer {what}", repr(value))
  return int(value)


def first_line_where(mask: np.ndarray, line: np.ndarray) -> int | None:
  """The line number (from `line`, aligned with `mask`) of the first True entry, else None."""
  hit = np.flatnonzero(mask)
  return int(line[hit[0]]) if hit.size else None
