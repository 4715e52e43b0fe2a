"""Parsers under hypothesis: malformed lines, out-of-range ids, duplicated users, empty files,
wrong encodings. Each input either parses to exactly what an independent reference reader of
the documented format says, or raises `DataFormatError` naming the file and a line that really
is bad; never another exception type, never a silent wrong parse."""

import json
import os
import re
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsnn_jax.data.parsers import lightgcn, movielens, s3rec
from hsnn_jax.data.text_io import DataFormatError

FUZZ = settings(max_examples=60, deadline=None, database=None,
               suppress_health_check=list(HealthCheck))
# Replacement tokens: letters, signs, decimals, exponents, too many digits (20 digits of value 1),
# non-ASCII digits, an empty field.
GARBAGE = ["x", "-1", "1.5", "1e3", "+2", "nan", "0" * 19 + "1", "99999999999999999999", "\u0663",
           "", "7x", "\u00e9"]


def _write(directory, files: dict) -> dict:
  paths = {}
  for name, data in files.items():
    paths[name] = os.path.join(directory, name)
    with open(paths[name], "wb") as fh:
      fh.write(data)
  return paths


def _check_error(err: DataFormatError, paths: dict, bad: set, whole: set) -> None:
  """The error names one of the files and a line the reference also finds bad."""
  name = next((n for n, p in paths.items() if p == err.path), None)
  assert name is not None, (err.path, paths)
  assert str(err).startswith(err.path), str(err)
  if name in whole and err.line in (None, 1):  # a whole-file problem (e.g. no lines at all)
    return
  if err.line is None:
    assert name in whole, (str(err), bad, whole)
  else:
    assert f"{err.path}:{err.line}:" in str(err)
    assert (name, err.line) in bad, (str(err), bad)


# --- 'user item item ...' files: a reference reader written from the format description ---------


def _ref_id_lines(data: bytes):
  """([(line number, [ints])] of the well-formed lines, {bad line numbers}); None rows when the
  bytes are not UTF-8 (then the bad set holds the line of the first undecodable byte)."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    return None, {data.count(b"\n", 0, e.start) + 1}
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()
  rows, bad = [], set()
  for n, line in enumerate(lines, 1):
    tokens = [t for t in re.split(r"[ \t\r]+", line) if t]
    if re.search(r"[^0-9 \t\r]", line) or not tokens or any(len(t) > 18 for t in tokens):
      bad.add(n)
    else:
      rows.append((n, [int(t) for t in tokens]))
  return rows, bad


def _render(lines, draw, allow_damage=True) -> bytes:
  """Token lines -> bytes with drawn separators and line endings, then byte-level damage."""
  sep = draw(st.sampled_from([" ", "  ", "\t", " \t"]))
  eol = draw(st.sampled_from(["\n", "\r\n"]))
  text = "".join(sep.join(tokens) + (sep if draw(st.booleans()) and len(tokens) == 1 else "") + eol
                 for tokens in lines)
  if lines and not draw(st.booleans()):
    text = text[:-len(eol)]  # no final newline
  data = text.encode("utf-8")
  if allow_damage:
    damage = draw(st.sampled_from(["none"] * 4 + ["cut", "bytes", "empty", "latin1"]))
    if damage == "cut" and data:
      data = data[:draw(st.integers(0, len(data)))]
    elif damage == "bytes":
      at = draw(st.integers(0, len(data)))
      junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xe9", b"\x00", b"\xef\xbb\xbf"]))
      data = data[:at] + junk + data[at:]
    elif damage == "empty":
      data = b""
    elif damage == "latin1":
      data = data + "caf\u00e9 1\n".encode("latin-1")
  return data


def _mutate(lines, draw, extra_ids):
  """0-3 line/token mutations: garbage or out-of-range tokens, duplicated, dropped, blank lines."""
  lines = [list(t) for t in lines]
  for _ in range(draw(st.integers(0, 3))):
    kind = draw(st.sampled_from(["token", "range", "dup", "drop", "blank"]))
    if not lines:
      break
    i = draw(st.integers(0, len(lines) - 1))
    if kind in ("token", "range") and lines[i]:
      j = draw(st.integers(0, len(lines[i]) - 1))
      lines[i][j] = draw(st.sampled_from(GARBAGE if kind == "token" else extra_ids))
    elif kind == "dup":
      lines.insert(draw(st.integers(0, len(lines))), list(lines[i]))
    elif kind == "drop":
      del lines[i]
    elif kind == "blank":
      lines.insert(i, [])
  return [[t for t in tokens if t != ""] or ([""] if tokens else []) for tokens in lines]


def _id_list(rows) -> bytes:
  return ("org_id remap_id\n" + "".join(row + "\n" for row in rows)).encode()


@st.composite
def _lightgcn_case(draw):
  num_users, num_items = draw(st.integers(1, 5)), draw(st.integers(1, 6))
  item = st.integers(0, num_items - 1).map(str)
  train = [[str(u)] + draw(st.lists(item, min_size=1, max_size=4)) for u in range(num_users)]
  test_users = draw(st.permutations(range(num_users)))[:draw(st.integers(0, num_users))]
  test = [[str(u)] + draw(st.lists(item, max_size=3)) for u in test_users]
  extra = [str(num_users), str(num_items), str(num_users + num_items + 3)]
  files = {
      "train.txt": _render(_mutate(draw(st.permutations(train)), draw, extra), draw),
      "test.txt": _render(_mutate(test, draw, extra), draw),
      "user_list.txt": _id_list(f"{900 + u} {u}" for u in range(num_users)),
      # String original ids (as Yelp's and Amazon-Book's): the list still fixes the item count.
      "item_list.txt": _id_list(f"i{i} {i}" for i in range(num_items)),
  }
  return files, num_users, num_items


def _ref_lightgcn(files, num_users, num_items):
  """(bad {(file, line)}, whole-file errors {file}, {file: {user: [items]}})."""
  bad, rows = set(), {}
  for name in ("train.txt", "test.txt"):
    parsed, syntax = _ref_id_lines(files[name])
    bad |= {(name, n) for n in syntax}
    rows[name], seen = {}, set()
    for n, (user, *items) in parsed or []:
      if (user >= num_users or any(i >= num_items for i in items) or user in seen
          or (name == "train.txt" and not items)):
        bad.add((name, n))
      seen.add(user)
      rows[name][user] = items
  whole = {"train.txt"} if set(rows["train.txt"]) != set(range(num_users)) else set()
  return bad, whole, rows


@FUZZ
@given(_lightgcn_case())
def test_lightgcn_parses_exactly_or_names_a_bad_line(case):
  files, num_users, num_items = case
  bad, whole, rows = _ref_lightgcn(files, num_users, num_items)
  with tempfile.TemporaryDirectory() as d:
    paths = _write(d, files)
    try:
      ds = lightgcn.parse(paths, "fuzz")
    except DataFormatError as err:
      _check_error(err, paths, bad, whole)
      return
  assert not bad and not whole, (bad, whole)
  assert (ds.num_users, ds.num_items) == (num_users, num_items)
  for name, csr in (("train.txt", ds.train), ("test.txt", ds.test)):
    for u in range(num_users):
      assert csr.row(u).tolist() == rows[name].get(u, []), (name, u)
  assert ds.user_ids.tolist() == [900 + u for u in range(num_users)]


@st.composite
def _s3rec_case(draw):
  num_items = draw(st.integers(1, 6))
  users = draw(st.lists(st.integers(1, 9), min_size=1, max_size=5, unique=True))
  item = st.integers(1, num_items).map(str)
  lines = [[str(u)] + draw(st.lists(item, min_size=1, max_size=5)) for u in users]
  extra = ["0", str(num_items + 1)]
  attrs = {str(i): draw(st.lists(st.integers(0, 4), max_size=2)) for i in range(1, num_items + 1)}
  return {"seq.txt": _render(_mutate(lines, draw, extra), draw),
          "attrs.json": json.dumps(attrs).encode()}, num_items


@FUZZ
@given(_s3rec_case())
def test_s3rec_parses_exactly_or_names_a_bad_line(case):
  files, num_items = case
  parsed, syntax = _ref_id_lines(files["seq.txt"])
  bad, seen, rows = {("seq.txt", n) for n in syntax}, set(), {}
  whole = {"seq.txt"} if parsed == [] else set()  # an empty file is no dataset
  for n, (user, *items) in parsed or []:
    if user < 1 or not items or any(not 1 <= i <= num_items for i in items) or user in seen:
      bad.add(("seq.txt", n))
    seen.add(user)
    rows[user] = items
  with tempfile.TemporaryDirectory() as d:
    paths = _write(d, files)
    try:
      ds = s3rec.parse(paths["seq.txt"], paths["attrs.json"], "fuzz")
    except DataFormatError as err:
      _check_error(err, paths, bad, whole)
      return
  assert not bad and not whole, (bad, whole)
  assert ds.user_ids.tolist() == sorted(rows) and ds.num_items == num_items
  for u, uid in enumerate(ds.user_ids):
    got = np.concatenate([ds.train.row(u), ds.valid.row(u), ds.test.row(u)]) + 1
    assert got.tolist() == rows[uid], uid


# --- MovieLens ratings.csv -------------------------------------------------------------------


def _ref_number(field: str, kind: str):
  """The value of a field as the documented reader takes it, or None if malformed."""
  try:
    value = int(field) if kind == "int" else float(field)
  except ValueError:
    return None
  if kind == "int":
    return value if -2**63 < value < 2**63 - 1 else None
  return value if np.isfinite(np.float32(value)) else None


@st.composite
def _ratings_case(draw):
  movies = draw(st.lists(st.integers(1, 30), min_size=1, max_size=6, unique=True))
  rows = [[str(draw(st.integers(1, 4))), str(draw(st.sampled_from(movies))),
           draw(st.sampled_from(["0.5", "4.0", "5"])), str(draw(st.integers(0, 5)))]
          for _ in range(draw(st.integers(1, 8)))]
  for _ in range(draw(st.integers(0, 2))):
    r = rows[draw(st.integers(0, len(rows) - 1))]
    kind = draw(st.sampled_from(["field", "unknown_movie", "negative_user", "extra", "missing"]))
    if kind == "field":
      r[draw(st.integers(0, 3))] = draw(st.sampled_from(GARBAGE + [" 7", "inf", "1e39"]))
    elif kind == "unknown_movie":
      r[1] = "31"
    elif kind == "negative_user":
      r[0] = "-3"
    elif kind == "extra":
      r.append("1")
    else:
      r.pop()
  text = "userId,movieId,rating,timestamp\n" + "".join(",".join(r) + "\n" for r in rows)
  movies_csv = "movieId,title,genres\n" + "".join(
      f'{m},"Film {m}, The (1999)",Drama|Comedy\n' for m in movies)
  return {"ratings.csv": text.encode(), "movies.csv": movies_csv.encode()}, rows, set(movies)


_MISALIGNED = (  # 5 + 4 + 3 fields: the right total, so only a per-line width check sees it
    {"ratings.csv": b"userId,movieId,rating,timestamp\n1,5,4,0,1\n1,6,4,7\n2,5,4\n",
     "movies.csv": b"movieId,title,genres\n1,A,Drama\n2,Z,Drama\n5,B,Drama\n6,C,Drama\n"},
    [["1", "5", "4", "0", "1"], ["1", "6", "4", "7"], ["2", "5", "4"]], {1, 2, 5, 6})


@FUZZ
@given(_ratings_case())
@example(_MISALIGNED)
def test_movielens_csv_parses_exactly_or_names_a_bad_line(case):
  files, rows, movies = case
  bad, good = set(), []
  for n, r in enumerate(rows, 2):
    values = [_ref_number(f, k) for f, k in zip(r, ("int", "int", "float", "int"))]
    if len(r) != 4 or None in values or values[0] < 0 or values[1] < 0 or values[1] not in movies:
      bad.add(("ratings.csv", n))
    else:
      good.append((values[0], values[1], values[3], n))
  with tempfile.TemporaryDirectory() as d:
    paths = _write(d, files)
    try:
      ds = movielens.parse_csv_release(paths, "fuzz")
    except DataFormatError as err:
      _check_error(err, paths, bad, set())
      return
  assert not bad, bad
  got = []
  for u, uid in enumerate(ds.user_ids):
    items = np.concatenate([ds.train.row(u), ds.valid.row(u), ds.test.row(u)])
    got += [(int(uid), int(ds.item_ids[i])) for i in items]
  assert sorted(got) == sorted((u, m) for u, m, _, _ in good)
  for u, uid in enumerate(ds.user_ids):  # the test item is the user's latest rating
    mine = sorted((t, n, m) for v, m, t, n in good if v == uid)
    if len(mine) >= 2:
      assert ds.item_ids[ds.test.row(u)].tolist() == [mine[-1][2]]


# --- Any bytes at all: only DataFormatError, naming the file ------------------------------------

_ANY_BYTES = st.one_of(st.binary(max_size=80),
                       st.text(alphabet="0123456789 \t\r\n,:|-.x\u00e9\u0663",
                               max_size=80).map(str.encode))


def _valid_files():
  """One small valid copy of every format; each test replaces one file with fuzz."""
  return {
      "lightgcn": {"train.txt": b"0 0 1\n1 1\n", "test.txt": b"0 1\n1 \n",
                   "user_list.txt": b"org_id remap_id\n10 0\n11 1\n",
                   "item_list.txt": b"org_id remap_id\n20 0\n21 1\n"},
      "s3rec": {"seq.txt": b"1 1 2 3\n2 2 1\n", "attrs.json": b'{"1": [0], "2": [1, 2], "3": []}'},
      "ml_csv": {"ratings.csv": b"userId,movieId,rating,timestamp\n1,5,4.0,10\n1,6,3.5,11\n",
                 "movies.csv": b"movieId,title,genres\n5,A,Drama\n6,\"B, The\",Comedy|Drama\n"},
      "ml_1m": {"ratings.dat": b"1::5::4::10\n1::6::3::11\n",
                "movies.dat": b"5::A::Drama\n6::B::Comedy\n", "users.dat": b"1::F::1::10::48067\n"},
      "ml_100k": {"u.data": b"1\t5\t4\t10\n1\t6\t3\t11\n",
                  "u.item": ("5|A|01-Jan-1995||http://x|" + "|".join("0" * 19) + "\n6|B|||x|"
                             + "|".join("1" + "0" * 18) + "\n").encode("latin-1"),
                  "u.user": b"1|24|M|technician|85711\n"},
  }


def _parse(fmt, paths):
  if fmt == "lightgcn":
    return lightgcn.parse(paths, "fuzz")
  if fmt == "s3rec":
    return s3rec.parse(paths["seq.txt"], paths["attrs.json"], "fuzz")
  return {"ml_csv": movielens.parse_csv_release, "ml_1m": movielens.parse_1m,
          "ml_100k": movielens.parse_100k}[fmt](paths, "fuzz")


def test_the_valid_copies_parse():
  for fmt, files in _valid_files().items():
    with tempfile.TemporaryDirectory() as d:
      assert _parse(fmt, _write(d, files)).num_users >= 1, fmt


_TARGETS = [(fmt, name) for fmt, files in _valid_files().items() for name in files]


@pytest.mark.parametrize("fmt,name", _TARGETS, ids=[f"{f}/{n}" for f, n in _TARGETS])
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=_ANY_BYTES)
@example(data=b"")
def test_any_bytes_give_a_dataset_or_a_data_format_error_naming_the_file(fmt, name, data):
  files = dict(_valid_files()[fmt], **{name: data})
  with tempfile.TemporaryDirectory() as d:
    paths = _write(d, files)
    try:
      ds = _parse(fmt, paths)
    except DataFormatError as err:
      assert err.path in paths.values() and str(err).startswith(err.path), str(err)
      return
  assert ds.num_users >= 1 and ds.train.nnz >= 1, (fmt, name, data)
