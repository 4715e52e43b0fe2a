"""experiments/prepare.py and the TFDS builders: cache output, atomic failure, TFDS round trip."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hsnn_jax.data import cache, prepare, sources

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "ml_latest_small_mini"


def _prepare(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "experiments.prepare", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _assert_same(a, b):
  assert (a.name, a.protocol, a.num_users, a.num_items, a.num_attrs) == (
      b.name, b.protocol, b.num_users, b.num_items, b.num_attrs)
  assert a.user_feature_sizes == b.user_feature_sizes
  for split in ("train", "valid", "test", "item_attrs"):
    x, y = getattr(a, split), getattr(b, split)
    assert (x is None) == (y is None), split
    if x is not None:
      np.testing.assert_array_equal(x.indptr, y.indptr)
      np.testing.assert_array_equal(x.values, y.values)
      assert x.values.dtype == y.values.dtype
  for field in ("user_ids", "item_ids", "train_ratings", "user_features", "item_tree_paths"):
    x, y = getattr(a, field), getattr(b, field)
    assert (x is None) == (y is None), field
    if x is not None:
      np.testing.assert_array_equal(x, y)
      assert x.dtype == y.dtype, field


def test_tfds_round_trip_on_fixture(tmp_path):
  from hsnn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  ds = tfds_builders.prepare("ml_latest_small", str(tmp_path / "tfds"), str(FIXTURE),
                             verify_checksums=False)
  _assert_same(ds, sources.load("ml_latest_small", str(FIXTURE), verify_checksums=False))
  records = list((tmp_path / "tfds" / "hsnn_movielens" / "latest_small").rglob("*.array_record*"))
  assert records
  assert "tensorflow" not in sys.modules


def test_prepare_writes_cache_without_tfds(tmp_path):
  result = _prepare("--dataset=ml_latest_small", f"--manual_dir={FIXTURE}", "--use_tfds=false",
                    "--verify_checksums=false", f"--cache_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  assert "30 users, 444 items" in result.stdout and "parsed by: parser" in result.stdout
  _assert_same(cache.load(str(tmp_path), "ml_latest_small"),
               sources.load("ml_latest_small", str(FIXTURE), verify_checksums=False))


def test_failing_parse_leaves_no_cache_entry(tmp_path):
  bad = shutil.copytree(FIXTURE, tmp_path / "bad")
  with open(bad / "ratings.csv", "ab") as fh:
    fh.write(b"26,1,4.0\r\n")
  cache_dir = tmp_path / "cache"
  result = _prepare("--dataset=ml_latest_small", f"--manual_dir={bad}", "--verify_checksums=false",
                    f"--cache_dir={cache_dir}", f"--data_dir={tmp_path / 'tfds'}")
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith("prepare: error:")]
  assert len(errors) == 1 and f"{bad / 'ratings.csv'}:619: expected 4 fields" in errors[0]
  assert "Traceback" not in result.stderr
  assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_missing_files_exit_with_one_line(tmp_path):
  result = _prepare("--dataset=toys", f"--manual_dir={tmp_path}", "--use_tfds=false",
                    f"--cache_dir={tmp_path / 'cache'}")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "Toys_and_Games.txt" in result.stderr and "RUCAIBox/CIKM2020-S3Rec" in result.stderr
  assert not (tmp_path / "cache").exists()


def test_synthetic_flags(tmp_path):
  result = _prepare("--dataset=synthetic", "--num_items=500", "--num_users=60", "--depth=3",
                    "--branching=4", "--dim=6", "--seed=2", f"--cache_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  ds = cache.load(str(tmp_path), "synthetic")
  assert ds.item_tree_paths.shape == (500, 3) and ds.num_users == 60
  assert ds.item_tree_paths[:, 2].max() < 64


def test_library_prepare_for_the_trainer(tmp_path):
  ds = prepare.prepare_dataset("synthetic_tiny", cache_dir=str(tmp_path), num_items=300,
                               num_users=40, branching=3, seed=1)
  assert ds.num_items == 300 and ds.item_tree_paths.shape == (300, 2)
  _assert_same(cache.load(str(tmp_path), "synthetic_tiny"), ds)
  with pytest.raises(ValueError, match="not synthetic"):
    prepare.prepare_dataset("ml_latest_small", cache_dir=str(tmp_path), num_items=3)


def test_import_hsnn_jax_never_imports_tfds():
  code = ("import sys, hsnn_jax, hsnn_jax.data.prepare; "
          "print('tensorflow_datasets' in sys.modules, 'tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), check=True)
  assert out.stdout.split() == ["False", "False"]


@pytest.mark.slow
def test_tfds_gowalla_round_trip(shared_data, tmp_path):
  from hsnn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
  ds = tfds_builders.prepare("gowalla", str(tmp_path), str(shared_data / "lightgcn" / "gowalla"))
  _assert_same(ds, sources.load("gowalla"))
  assert "tensorflow" not in sys.modules
