"""Parsers, registry and checksums: real files (when present), the committed fixture, bad files."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import pathlib
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

from hsnn_jax.data import checksums, sources, splits, text_io
from hsnn_jax.data.checksums import ChecksumError
from hsnn_jax.data.text_io import DataFormatError
from hsnn_jax.data.types import CSR

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "ml_latest_small_mini"


def _total(ds) -> int:
  return ds.train.nnz + ds.valid.nnz + ds.test.nnz


def _write(directory: pathlib.Path, files: dict) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  for name, content in files.items():
    (directory / name).write_bytes(content if isinstance(content, bytes) else content.encode())
  return directory


def _lightgcn_dir(tmp_path, train="0 0 1\n1 2 3 4\n2 1\n", test="0 2\n1 0\n2 \n",
                  num_items=5) -> pathlib.Path:
  return _write(tmp_path / "lg", {
      "train.txt": train, "test.txt": test,
      "user_list.txt": "org_id remap_id\n" + "".join(f"{100 + u} {u}\n" for u in range(3)),
      "item_list.txt": "org_id remap_id\n" + "".join(f"{500 + i} {i}\n" for i in range(num_items)),
  })


def _load_lightgcn(directory, **kw):
  return sources.load("gowalla", str(directory), verify_checksums=False, **kw)


# --- Real datasets (../shared/data; skipped elsewhere) -------------------------------------


def test_gowalla_counts_match_readme(shared_data):
  ds = sources.load("gowalla", str(shared_data / "lightgcn" / "gowalla"))
  assert (ds.num_users, ds.num_items, ds.train.nnz, ds.test.nnz) == (29858, 40981, 810128, 217242)
  assert ds.valid.nnz == 0 and ds.protocol == "given_split"
  assert ds.user_ids[:2].tolist() == [343, 5258] and ds.item_ids[:2].tolist() == [8975, 9190]
  assert ds.train.lengths().min() == 8 and ds.test.lengths().min() == 1


def test_gowalla_valid_fraction_is_seeded_and_keeps_train(shared_data):
  plain = sources.load("gowalla")
  ds = sources.load("gowalla", valid_fraction=0.1, seed=3)
  again = sources.load("gowalla", valid_fraction=0.1, seed=3)
  lengths = plain.train.lengths()
  np.testing.assert_array_equal(ds.valid.lengths(),
                                np.minimum(np.floor(0.1 * lengths), lengths - 1).astype(int))
  assert ds.train.nnz + ds.valid.nnz == 810128
  assert ds.train.lengths().min() >= 1
  np.testing.assert_array_equal(ds.valid.values, again.valid.values)
  for u in (0, 123, 29857):  # valid + train is the original train row, as a set
    assert sorted(np.r_[ds.train.row(u), ds.valid.row(u)]) == sorted(plain.train.row(u))


def test_beauty_counts_and_leave_one_out(shared_data):
  ds = sources.load("beauty")
  assert (ds.num_users, ds.num_items, _total(ds)) == (22363, 12101, 198502)
  assert ds.valid.nnz == ds.test.nnz == 22363
  first = (shared_data / "amazon-s3rec" / "Beauty.txt").read_text().split("\n", 1)[0].split()
  items = [int(x) - 1 for x in first[1:]]  # dense ids are file ids minus one
  assert ds.test.row(0).tolist() == items[-1:] and ds.valid.row(0).tolist() == [items[-2]]
  assert ds.train.row(0).tolist() == items[:-2]
  assert ds.item_attrs.num_rows == 12101 and ds.item_attrs.lengths().min() >= 1
  assert ds.item_attrs.values.max() == ds.num_attrs - 1


def test_ml_100k_counts_order_and_features(shared_data):
  ds = sources.load("ml_100k")
  assert (ds.num_users, ds.num_items, _total(ds)) == (943, 1682, 100000)
  assert ds.train_ratings.shape == (ds.train.nnz,) and set(np.unique(ds.train_ratings)) <= {1, 2, 3, 4, 5}
  rows = np.loadtxt(shared_data / "movielens-100k" / "u.data", dtype=np.int64)
  mine = rows[rows[:, 0] == 1]
  last = mine[np.argsort(mine[:, 3], kind="stable")][-1]
  assert ds.item_ids[ds.test.row(0)].tolist() == [last[1]]
  # u.user line 1: "1|24|M|technician|85711": age 18-24 -> bucket 2, M -> 1, zip 8xxxx -> 9.
  assert ds.user_features.shape == (943, 4)
  assert ds.user_features[0, [0, 1, 3]].tolist() == [2, 1, 9]
  assert ds.num_attrs == 19 and ds.item_attrs.row(0).tolist() == [3, 4, 5]  # Toy Story


def test_ml_latest_small_counts(shared_data):
  ds = sources.load("ml_latest_small")
  assert (ds.num_users, ds.num_items, _total(ds)) == (610, 9724, 100836)


def test_ml_1m_needs_explicit_partial_flag(shared_data, caplog):
  with pytest.raises(FileNotFoundError, match="allow_partial"):
    sources.load("ml_1m")
  with caplog.at_level(logging.WARNING):
    ds = sources.load("ml_1m", allow_partial=True)
  assert ds.name == "ml_1m_partial" and "PARTIAL" in caplog.text
  assert (ds.num_users, _total(ds)) == (2999, 487650)
  assert ds.user_features.shape == (2999, 4) and ds.num_attrs == 18


# --- The committed fixture ------------------------------------------------------------------


def _reference_leave_one_out(path: pathlib.Path):
  """{userId: [movieId ...] by (timestamp, file order)} with the csv module."""
  by_user = {}
  with open(path, newline="", encoding="utf-8") as fh:
    for k, row in enumerate(csv.DictReader(fh)):
      by_user.setdefault(int(row["userId"]), []).append(
          (int(row["timestamp"]), k, int(row["movieId"]), float(row["rating"])))
  return {u: sorted(v) for u, v in by_user.items()}


def test_fixture_matches_reference_split():
  ds = sources.load("ml_latest_small", str(FIXTURE), verify_checksums=False)
  ref = _reference_leave_one_out(FIXTURE / "ratings.csv")
  assert (ds.num_users, ds.num_items, _total(ds)) == (30, 444, 617)
  assert ds.user_ids.tolist() == sorted(ref)
  ptr = ds.train.indptr
  for u, uid in enumerate(ds.user_ids):
    movies = [m for _, _, m, _ in ref[uid]]
    assert ds.item_ids[ds.test.row(u)].tolist() == movies[-1:]
    assert ds.item_ids[ds.valid.row(u)].tolist() == movies[-2:-1]
    assert ds.item_ids[ds.train.row(u)].tolist() == movies[:-2]
    np.testing.assert_array_equal(ds.train_ratings[ptr[u]:ptr[u + 1]],
                                  [r for _, _, _, r in ref[uid]][:-2])


def test_fixture_genres():
  ds = sources.load("ml_latest_small", str(FIXTURE), verify_checksums=False)
  with open(FIXTURE / "movies.csv", newline="", encoding="utf-8") as fh:
    genres = {int(r["movieId"]): r["genres"].split("|") for r in csv.DictReader(fh)}
  vocab = sorted({g for gs in genres.values() for g in gs} - {"(no genres listed)"})
  assert ds.num_attrs == len(vocab)
  for item in (0, 17, ds.num_items - 1):
    names = [vocab[a] for a in ds.item_attrs.row(item)]
    assert names == [g for g in genres[int(ds.item_ids[item])] if g in vocab]


def test_checksum_mismatch_names_file_and_both_hashes(tmp_path):
  folder = shutil.copytree(FIXTURE, tmp_path / "mini")
  actual = hashlib.sha256((folder / "ratings.csv").read_bytes()).hexdigest()
  with pytest.raises(ChecksumError) as err:
    sources.load("ml_latest_small", str(folder))
  message = str(err.value)
  assert "ratings.csv" in message and actual in message
  assert sources.SOURCES["ml_latest_small"].spec("ratings.csv").sha256 in message


def test_unknown_checksum_is_logged_not_verified(tmp_path, caplog):
  folder = _write(tmp_path / "toys", {"Toys_and_Games.txt": "1 1 2 3\n2 2 3 1\n",
                                      "Toys_and_Games_item2attributes.json": '{"1": [7], "2": [9, 7], "3": []}'})
  with caplog.at_level(logging.WARNING):
    ds = sources.load("toys", str(folder))
  assert "NOT verified" in caplog.text and "Toys_and_Games.txt" in caplog.text
  assert (ds.num_users, ds.num_items, ds.num_attrs) == (2, 3, 2)
  assert ds.item_attrs.row(1).tolist() == [1, 0] and ds.test.row(1).tolist() == [0]


# --- LightGCN format ------------------------------------------------------------------------


def test_lightgcn_small_file_and_empty_test_line(tmp_path):
  ds = _load_lightgcn(_lightgcn_dir(tmp_path))
  assert ds.train.row(1).tolist() == [2, 3, 4] and ds.test.row(2).tolist() == []
  assert ds.user_ids.tolist() == [100, 101, 102] and ds.item_ids[-1] == 504


@pytest.mark.parametrize("train, line, found", [
    ("0 0 1\n1 2 x 4\n2 1\n", 2, "'x'"),
    ("0 0 1\n1 2 -3\n2 1\n", 2, "'-3'"),
    ("0 0 1\n1 2 3\n2 1 9\n", 3, "9"),  # item id out of range vs item_list
    ("0 0 1\n7 2 3\n2 1\n", 2, "7"),  # user id out of range vs user_list
    ("0 0 1\n1\n2 1\n", 2, "truncated"),
    ("0 0 1\n1 2\n0 3\n2 1\n", 3, "duplicated user line; first on line 1"),
    ("0 0 1\n\n1 2\n2 1\n", 2, "blank line"),
])
def test_lightgcn_malformed_train_names_file_and_line(tmp_path, train, line, found):
  folder = _lightgcn_dir(tmp_path, train=train)
  with pytest.raises(DataFormatError) as err:
    _load_lightgcn(folder)
  assert str(err.value).startswith(f"{folder / 'train.txt'}:{line}: expected ")
  assert found in str(err.value)


def test_lightgcn_user_without_train_line(tmp_path):
  with pytest.raises(DataFormatError, match="no line for user 1"):
    _load_lightgcn(_lightgcn_dir(tmp_path, train="0 0 1\n2 1\n"))


def test_missing_file_message(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError) as err:
    sources.load("yelp2018", str(tmp_path / "empty"))
  message = str(err.value)
  assert "train.txt" in message and "1e9568725a9e833d0ac3bae01c94cd95367f73b3bb6104fd26b5f65ea5054093" in message
  assert "--manual_dir" in message and "downloads/manual/hsnn_lightgcn" in message
  assert "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data/yelp2018/train.txt" in message
  folder = _lightgcn_dir(tmp_path)
  (folder / "test.txt").unlink()
  with pytest.raises(FileNotFoundError, match="'test.txt'.*099a2a7"):
    _load_lightgcn(folder)


# --- S3-Rec and MovieLens formats ----------------------------------------------------------


@pytest.mark.parametrize("sequences, line, found", [
    ("1 1 2 3\n2\n", 2, "empty user"),
    ("1 1 2 3\n1 2 3\n", 2, "duplicated user line"),
    ("1 1 2 3\n2 0 1\n", 2, "0"),  # item ids start at 1
    ("1 1 2 3\n2 4 1\n", 2, "4"),  # not in the attribute file
])
def test_s3rec_malformed(tmp_path, sequences, line, found):
  folder = _write(tmp_path / "s3", {"Beauty.txt": sequences,
                                    "Beauty_item2attributes.json": '{"1": [1], "2": [2], "3": [1]}'})
  with pytest.raises(DataFormatError) as err:
    sources.load("beauty", str(folder), verify_checksums=False)
  assert str(err.value).startswith(f"{folder / 'Beauty.txt'}:{line}: ") and found in str(err.value)


def _mini_with_ratings(tmp_path, ratings: bytes) -> pathlib.Path:
  folder = shutil.copytree(FIXTURE, tmp_path / "mini")
  (folder / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\r\n" + ratings)
  return folder


@pytest.mark.parametrize("ratings, line, found", [
    (b"26,1,4.0,10\r\n26,5,3.\xe9,11\r\n", 3, "utf-8"),
    (b"26,1,4.0,10\r\n26,5,3.0\r\n", 3, "3 fields"),
    (b"26,1,4.0,10\r\n26,five,3.0,11\r\n", 3, "'five'"),
    (b"26,1,4.0,10\r\n26,999999,3.0,11\r\n", 3, "movie 999999"),
])
def test_movielens_malformed(tmp_path, ratings, line, found):
  folder = _mini_with_ratings(tmp_path, ratings)
  with pytest.raises(DataFormatError) as err:
    sources.load("ml_latest_small", str(folder), verify_checksums=False)
  assert str(err.value).startswith(f"{folder / 'ratings.csv'}:{line}: ") and found in str(err.value)


# --- Vectorised helpers against slow references ---------------------------------------------


def test_parse_id_lines_matches_split(tmp_path):
  rng = np.random.default_rng(0)
  rows = [[int(x) for x in rng.integers(0, 10**6, rng.integers(1, 8))] for _ in range(200)]
  text = "".join(" ".join(map(str, r)) + ("  \n" if i % 7 else "\r\n") for i, r in enumerate(rows))
  lines = text_io.parse_id_lines(tmp_path / "x.txt", text)
  assert lines.head.tolist() == [r[0] for r in rows]
  assert lines.counts.tolist() == [len(r) - 1 for r in rows]
  assert lines.values.tolist() == [x for r in rows for x in r[1:]]
  line_of_each_value = [i + 1 for i, r in enumerate(rows) for _ in r[1:]]
  for k in (0, 17, len(line_of_each_value) - 1):
    assert lines.line_of_value(k) == line_of_each_value[k]


def test_leave_one_out_matches_reference():
  rng = np.random.default_rng(1)
  users = rng.integers(0, 20, 300)
  items = rng.integers(0, 50, 300)
  ratings = rng.random(300).astype(np.float32)
  train, valid, test, train_ratings = splits.leave_one_out(users, items, 22, ratings)
  for u in range(22):
    seq = items[users == u].tolist()
    rs = ratings[users == u]
    n = len(seq)
    assert test.row(u).tolist() == (seq[-1:] if n >= 2 else [])
    assert valid.row(u).tolist() == (seq[-2:-1] if n >= 3 else [])
    assert train.row(u).tolist() == seq[:max(n - 2, 1)]
    ptr = train.indptr
    np.testing.assert_array_equal(train_ratings[ptr[u]:ptr[u + 1]], rs[:max(n - 2, 1)])


def test_split_random_keeps_one_and_order():
  csr = CSR.from_lists([[5, 6, 7, 8, 9], [1], [], [2, 3]])
  kept, moved, mask = splits.split_random(csr, 0.5, np.random.default_rng(0))
  assert kept.lengths().tolist() == [3, 1, 0, 1] and moved.lengths().tolist() == [2, 0, 0, 1]
  assert mask.sum() == 3
  for r in range(4):
    merged = sorted(np.r_[kept.row(r), moved.row(r)].tolist())
    assert merged == sorted(csr.row(r).tolist())
    assert kept.row(r).tolist() == [x for x in csr.row(r) if x in kept.row(r)]


def test_download_extracts_archive_members(tmp_path, monkeypatch):
  archive = tmp_path / "ml-latest-small.zip"
  with zipfile.ZipFile(archive, "w") as zf:
    for name in ("ratings.csv", "movies.csv", "README.txt"):
      zf.write(FIXTURE / name, f"ml-latest-small/{name}")
  source = sources.SOURCES["ml_latest_small"]
  files = tuple(dataclasses.replace(f, url=archive.as_uri()) for f in source.files)
  monkeypatch.setitem(sources.SOURCES, "ml_latest_small", dataclasses.replace(source, files=files))
  folder = sources.download("ml_latest_small", str(tmp_path / "manual"))
  assert sorted(p.name for p in pathlib.Path(folder).iterdir()) == ["movies.csv", "ratings.csv"]
  assert (pathlib.Path(folder) / "ratings.csv").read_bytes() == (FIXTURE / "ratings.csv").read_bytes()
  assert sources.load("ml_latest_small", folder, verify_checksums=False).num_users == 30


def test_download_plain_files(tmp_path, monkeypatch):
  upstream = _lightgcn_dir(tmp_path)
  source = sources.SOURCES["gowalla"]
  files = tuple(dataclasses.replace(f, url=(upstream / f.name).as_uri()) for f in source.files)
  monkeypatch.setitem(sources.SOURCES, "gowalla", dataclasses.replace(source, files=files))
  folder = sources.download("gowalla", str(tmp_path / "manual"))
  assert _load_lightgcn(folder).train.row(1).tolist() == [2, 3, 4]


def test_git_blob_pins_and_unconfirmed_sha256(tmp_path, caplog):
  path = tmp_path / "train.txt"
  path.write_bytes(b"0 1 2\n")
  blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                        check=True).stdout.strip()
  assert checksums.file_hashes(path)[1] == blob
  with caplog.at_level(logging.WARNING):
    checksums.verify(path, checksums.FileSpec("train.txt", sha256="0" * 64, git_blob=blob,
                                              sha256_confirmed=False))
  assert "unconfirmed sha256" in caplog.text
  with pytest.raises(ChecksumError, match=f"git blob id mismatch: expected {'1' * 40}, found {blob}"):
    checksums.verify(path, checksums.FileSpec("train.txt", git_blob="1" * 40))
  with pytest.raises(ChecksumError, match="sha256 mismatch"):
    checksums.verify(path, checksums.FileSpec("train.txt", sha256="0" * 64, git_blob=blob))
