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


def _iter_byte_blocks(path, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
  """Yields (1-based number of the block's first line, the block's bytes: whole lines)."""
  first = 1
  with _open_binary(path) as fh:
    while True:
      data = fh.read(block_bytes)
      if not data:
        return
      if not data.endswith(b"\n"):
        data += fh.readline()  # complete the last line
      yield first, data
      first += data.count(b"\n")


def iter_line_blocks(path, encoding: str, block_bytes: int = _BLOCK_BYTES
                     ) -> Iterator[tuple[int, list[str]]]:
  """Yields (1-based number of the block's first line, its lines without line endings)."""
  for first, data in _iter_byte_blocks(path, block_bytes):
    yield first, split_lines(_decode(path, data, encoding, first))


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

  Blank lines are an error, except the empty string after the final newline. An empty `text`
  gives no lines (the caller decides whether that is an error).
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
  if num_lines == 0:
    empty = np.zeros(0, np.int64)
    return IdLines(line=empty, head=empty, counts=empty, values=empty)
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

  `header`, when given, must be the exact first line. Every line must hold exactly
  `len(dtypes)` fields; the first line that does not, and the first unparsable number, raise
  `DataFormatError` naming the line. Row r of the result is line r + 1 (r + 2 with a header).
  A file without data lines gives empty columns (the caller decides whether that is an error).
  """
  ncols = len(dtypes)
  names = names or [f"column {c + 1}" for c in range(ncols)]
  blocks = [[] for _ in range(ncols)]
  # A multi-character separator is replaced by a NUL byte at each occurrence (left to right, as
  # str.split finds them), so that fields are split, and counted in the bytes, as single bytes.
  unit = sep if len(sep) == 1 else "\0"
  pending_header = header
  for first, data in _iter_byte_blocks(path):
    replaced = unit != sep and b"\0" not in data
    if replaced:
      data = data.replace(sep.encode(encoding), b"\0")
    text = _decode(path, data, encoding, first)
    if unit == sep or replaced:
      counts = _count_per_line(data, unit.encode(encoding)) + 1
    else:  # NUL bytes in a file with a multi-character separator: count line by line
      counts = np.array([line.count(sep) + 1 for line in split_lines(text)], np.int64)
    skip = 0
    if pending_header is not None:
      found = _line_in(data, 0, encoding, sep, replaced)
      if found != pending_header:
        raise DataFormatError(path, 1, f"the header {pending_header!r}", repr(found))
      pending_header, skip = None, 1
    bad = np.flatnonzero(counts[skip:] != ncols)
    if bad.size:
      i = int(bad[0]) + skip
      found = _line_in(data, i, encoding, sep, replaced)
      raise DataFormatError(path, first + i, f"{ncols} fields separated by {sep!r}",
                            f"{counts[i]} fields in {found!r}")
    if len(counts) == skip:
      continue
    # Every line holds ncols - 1 separators: make each line end one more and split once.
    if skip:
      text = text[text.index("\n") + 1:]
    if "\r" in text:  # CRLF endings (a CR inside a line stays, as in split_lines)
      text = text.replace("\r\n", "\n")
    if text.endswith("\n") or text.endswith("\r"):  # the end of the last line
      text = text[:-1]
    if unit == sep or replaced:
      fields = text.replace("\n", unit).split(unit)
    else:
      fields = [f for line in split_lines(text) for f in line.split(sep)]
    first += skip
    for c, dtype in enumerate(dtypes):
      column = fields[c::ncols]
      parsed = _fast_numbers(column, dtype)
      if parsed is None:
        parsed = _strict_numbers(path, first, column, dtype, names[c])
      blocks[c].append(parsed)
  if pending_header is not None:
    raise DataFormatError(path, 1, f"the header {pending_header!r}", "an empty file")
  return [np.concatenate(b) if b else np.zeros(0, dtype) for b, dtype in zip(blocks, dtypes)]


def _line_in(data: bytes, i: int, encoding: str, sep: str, replaced: bool) -> str:
  """Line i (0-based) of a block, without its line ending; NULs back to `sep` if `replaced`."""
  start = 0
  if i:
    start = int(np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))[i - 1]) + 1
  end = data.find(b"\n", start)
  line = data[start:end if end >= 0 else len(data)].decode(encoding)
  line = line[:-1] if line.endswith("\r") else line
  return line.replace("\0", sep) if replaced else line


def _count_per_line(data: bytes, char: bytes) -> np.ndarray:
  """[number of lines in `data`] int64 occurrences of the byte `char` in each line."""
  chars = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(chars == ord("\n"))
  if data and not data.endswith(b"\n"):
    ends = np.append(ends, len(data))
  before = np.searchsorted(np.flatnonzero(chars == ord(char)), ends)
  return np.diff(before, prepend=0).astype(np.int64)


def _in_range(values: np.ndarray) -> np.ndarray:
  """False where a parsed value is non-finite or saturated (overflowed) int64."""
  if values.dtype.kind in "iu":
    info = np.iinfo(values.dtype)
    return (values != info.max) & (values != info.min)
  return np.isfinite(values)


def _fast_numbers(column: list[str], dtype) -> np.ndarray | None:
  """The column parsed in C, or None when any field is not a plain number of `dtype`."""
  joined = " ".join(column)
  # np.fromstring takes any run of whitespace (or none at all) as one separator, so a field that
  # is empty or holds whitespace could shift the values of its neighbours: leave those to the
  # field-by-field path.
  if (not joined.isascii() or joined.count(" ") != len(column) - 1 or "  " in joined
      or joined.startswith(" ") or joined.endswith(" ")
      or any(c in joined for c in "\t\n\r\x0b\x0c")):
    return None
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
  """`value` as a non-negative integer (ASCII digits, at most 18 of them), else raises."""
  if not (value.isascii() and value.isdigit()) or len(value) > _MAX_ID_DIGITS:
    raise DataFormatError(path, line, f"a non-negative integer {what} of at most "
                          f"{_MAX_ID_DIGITS} digits", repr(value))
  return int(value)


def first_line_where(mask: np.ndarray, line: np.ndarray) -> int | None:
  """The line number (from `line`, aligned with `mask`) of the first True entry, else None."""
  hit = np.flatnonzero(mask)
  return int(line[hit[0]]) if hit.size else None
