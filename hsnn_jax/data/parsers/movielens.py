"""MovieLens 100K, latest-small, 1M and 20M as implicit feedback with leave-one-out splits.

Every rating is a positive interaction; `train_ratings` keeps the rating for a 'rating >= 4'
task. Each user's ratings are sorted by timestamp (ties keep file order): last = test,
second-last = valid, the rest = train. Items are the rated movies, densely numbered in
increasing movie id; genres become `item_attrs`. Where the release has user demographics
(100K, 1M), `user_features` holds [age bucket, gender, occupation, zip prefix], 0 = unknown.
"""

from __future__ import annotations

import csv
import io
from typing import Mapping, Optional, Sequence

import numpy as np

from hsnn_jax.data import text_io
from hsnn_jax.data.splits import leave_one_out, take_rows
from hsnn_jax.data.text_io import DataFormatError
from hsnn_jax.data.types import CSR, RecDataset

_RATING_COLUMNS = (np.int64, np.int64, np.float32, np.int64)
_RATING_NAMES = ("user id", "movie id", "rating", "timestamp")
# ML-1M's age codes (bucket = index + 1); ML-100K's raw ages are bucketed with the same edges.
_AGE_CODES = (1, 18, 25, 35, 45, 50, 56)
_NO_GENRE = "(no genres listed)"
FEATURE_NAMES = ("age_bucket", "gender", "occupation", "zip_prefix")


class _Movies:
  """Movie id -> genre ids, for the movies listed in the release. ids [M], genres CSR [M]."""

  def __init__(self, ids: Sequence[int], genres: Sequence[Sequence[int]], num_genres: int):
    self.ids = np.asarray(ids, np.int64)
    self.genres = CSR.from_lists(list(genres))
    self.num_genres = num_genres


def _user_feature_row(age_bucket: int, gender: str, occupation: int, zip_code: str) -> list[int]:
  zip_prefix = int(zip_code[0]) + 1 if zip_code[:1].isdigit() else 0
  return [age_bucket, {"M": 1, "F": 2}.get(gender, 0), occupation, zip_prefix]


def _build(name: str, ratings_path, columns, movies: _Movies, header_lines: int,
           users_table: Optional[tuple[np.ndarray, np.ndarray, tuple]] = None) -> RecDataset:
  """Common tail: id checks, dense ids, time-ordered leave-one-out, side information."""
  users, items, ratings, stamps = columns
  if not len(users):
    raise DataFormatError(ratings_path, None, "at least one rating line",
                          "none (the file is empty)" if not header_lines else
                          "none (only the header)")
  for values, what in ((users, "user id"), (items, "movie id")):
    line = text_io.first_line_where(values < 0, np.arange(len(values)) + 1 + header_lines)
    if line is not None:
      raise DataFormatError(ratings_path, line, f"a non-negative {what}",
                            str(values[line - 1 - header_lines]))
  known = np.isin(items, movies.ids)
  if not known.all():
    k = int(np.flatnonzero(~known)[0])
    raise DataFormatError(ratings_path, k + 1 + header_lines, "a movie id listed in the movies file",
                          f"movie {items[k]}")
  user_ids, dense_user = np.unique(users, return_inverse=True)
  item_ids, dense_item = np.unique(items, return_inverse=True)
  order = np.lexsort((np.arange(len(users)), stamps, dense_user))
  train, valid, test, train_ratings = leave_one_out(
      dense_user[order], dense_item[order], len(user_ids), ratings[order])
  movie_order = np.argsort(movies.ids, kind="stable")
  genres = take_rows(movies.genres, movie_order[np.searchsorted(movies.ids[movie_order], item_ids)])
  features, sizes = None, ()
  if users_table is not None:
    table_ids, table, sizes = users_table
    features = np.zeros((len(user_ids), table.shape[1]), np.int32)
    pos = np.searchsorted(table_ids, user_ids)
    found = (pos < len(table_ids)) & (table_ids[np.minimum(pos, len(table_ids) - 1)] == user_ids)
    features[found] = table[pos[found]]
  return RecDataset(
      name=name, protocol="leave_one_out", num_users=len(user_ids), num_items=len(item_ids),
      train=train, valid=valid, test=test, user_ids=user_ids.astype(np.int64),
      item_ids=item_ids.astype(np.int64), train_ratings=train_ratings,
      item_attrs=genres,
      num_attrs=movies.num_genres, user_features=features, user_feature_sizes=tuple(sizes))


def _check_unique(path, ids: np.ndarray, lines: np.ndarray, what: str) -> None:
  """Raises on the second line of the first (smallest) id listed twice; `lines` aligns."""
  order = np.argsort(ids, kind="stable")
  again = np.flatnonzero(np.diff(ids[order]) == 0)
  if again.size:
    first, second = order[again[0]], order[again[0] + 1]
    raise DataFormatError(path, int(lines[second]), f"one line per {what}",
                          f"{what} {ids[second]} again (first on line {lines[first]})")


def _sorted_table(path, ids: list[int], rows: list[list[int]], sizes: tuple):
  """(sorted user ids, their feature rows, feature sizes); line i + 1 of `path` is user i."""
  if not ids:
    raise DataFormatError(path, None, "one line per user", "an empty file")
  ids = np.asarray(ids, np.int64)
  _check_unique(path, ids, np.arange(1, len(ids) + 1), "user")
  order = np.argsort(ids, kind="stable")
  return ids[order], np.asarray(rows, np.int32).reshape(len(ids), -1)[order], sizes


def parse_100k(paths: Mapping[str, str], name: str) -> RecDataset:
  """`u.data` (tab-separated ratings), `u.item` (genre flags), `u.user` (demographics)."""
  columns = text_io.parse_table(paths["u.data"], sep="\t", dtypes=_RATING_COLUMNS,
                                encoding="latin-1", names=_RATING_NAMES)
  item_rows = text_io.read_rows(paths["u.item"], sep="|", num_fields=24, encoding="latin-1")
  genres = []
  for i, row in enumerate(item_rows):
    flags = row[5:]
    if any(f not in ("0", "1") for f in flags):
      raise DataFormatError(paths["u.item"], i + 1, "19 genre flags 0/1", repr("|".join(flags)))
    genres.append([g for g, f in enumerate(flags) if f == "1"])
  movies = _Movies([text_io.to_int(paths["u.item"], i + 1, r[0], "movie id")
                    for i, r in enumerate(item_rows)], genres, num_genres=19)
  _check_unique(paths["u.item"], movies.ids, np.arange(1, len(movies.ids) + 1), "movie")
  user_rows = text_io.read_rows(paths["u.user"], sep="|", num_fields=5, encoding="latin-1")
  occupations = sorted({r[3] for r in user_rows})
  ids, feats = [], []
  for i, (uid, age, gender, occupation, zip_code) in enumerate(user_rows):
    ids.append(text_io.to_int(paths["u.user"], i + 1, uid, "user id"))
    age = text_io.to_int(paths["u.user"], i + 1, age, "age")
    bucket = int(np.searchsorted(_AGE_CODES, age, side="right"))
    feats.append(_user_feature_row(bucket, gender, occupations.index(occupation) + 1, zip_code))
  users = _sorted_table(paths["u.user"], ids, feats,
                        (len(_AGE_CODES) + 1, 3, len(occupations) + 1, 11))
  return _build(name, paths["u.data"], columns, movies, 0, users)


def _read_movies_csv(path) -> _Movies:
  """`movieId,title,genres` (UTF-8, quoted titles); genre ids follow sorted genre names."""
  text = text_io.read_text(path, "utf-8")
  reader = csv.reader(io.StringIO(text, newline=""))
  header = next(reader, None)
  if header != ["movieId", "title", "genres"]:
    raise DataFormatError(path, 1, "the header 'movieId,title,genres'", repr(header))
  ids, names, lines = [], [], []
  for row in reader:
    if len(row) != 3:
      raise DataFormatError(path, reader.line_num, "3 fields 'movieId,title,genres'", repr(row))
    ids.append(text_io.to_int(path, reader.line_num, row[0], "movieId"))
    lines.append(reader.line_num)
    names.append([g for g in row[2].split("|") if g and g != _NO_GENRE])
  _check_unique(path, np.asarray(ids, np.int64), np.asarray(lines, np.int64), "movie")
  vocab = {g: k for k, g in enumerate(sorted({g for gs in names for g in gs}))}
  return _Movies(ids, [[vocab[g] for g in gs] for gs in names], num_genres=len(vocab))


def parse_csv_release(paths: Mapping[str, str], name: str) -> RecDataset:
  """latest-small and 20M: `ratings.csv` and `movies.csv`, UTF-8 with a header row."""
  columns = text_io.parse_table(paths["ratings.csv"], sep=",", dtypes=_RATING_COLUMNS,
                                encoding="utf-8", header="userId,movieId,rating,timestamp",
                                names=_RATING_NAMES)
  return _build(name, paths["ratings.csv"], columns, _read_movies_csv(paths["movies.csv"]), 1)


def parse_1m(paths: Mapping[str, str], name: str) -> RecDataset:
  """`ratings.dat` (or its gzipped partial copy), `movies.dat`, `users.dat`; `::`-separated Latin-1."""
  columns = text_io.parse_table(paths["ratings.dat"], sep="::", dtypes=_RATING_COLUMNS,
                                encoding="latin-1", names=_RATING_NAMES)
  movie_rows = text_io.read_rows(paths["movies.dat"], sep="::", num_fields=3, encoding="latin-1")
  vocab = {g: k for k, g in enumerate(sorted({g for r in movie_rows for g in r[2].split("|") if g}))}
  movies = _Movies([text_io.to_int(paths["movies.dat"], i + 1, r[0], "movie id")
                    for i, r in enumerate(movie_rows)],
                   [[vocab[g] for g in r[2].split("|") if g] for r in movie_rows], len(vocab))
  _check_unique(paths["movies.dat"], movies.ids, np.arange(1, len(movies.ids) + 1), "movie")
  user_rows = text_io.read_rows(paths["users.dat"], sep="::", num_fields=5, encoding="latin-1")
  ids, feats = [], []
  for i, (uid, gender, age, occupation, zip_code) in enumerate(user_rows):
    ids.append(text_io.to_int(paths["users.dat"], i + 1, uid, "user id"))
    age = text_io.to_int(paths["users.dat"], i + 1, age, "age code")
    bucket = _AGE_CODES.index(age) + 1 if age in _AGE_CODES else 0
    occupation = text_io.to_int(paths["users.dat"], i + 1, occupation, "occupation code")
    if occupation > 20:
      raise DataFormatError(paths["users.dat"], i + 1, "an occupation code in [0, 20]",
                            str(occupation))
    feats.append(_user_feature_row(bucket, gender, occupation + 1, zip_code))
  users = _sorted_table(paths["users.dat"], ids, feats, (len(_AGE_CODES) + 1, 3, 22, 11))
  return _build(name, paths["ratings.dat"], columns, movies, 0, users)
