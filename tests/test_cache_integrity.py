"""Damaged inputs end in one clear line: the prepared-array cache (checksums in meta.json), a
published index file and a results record (results.json) that fails to parse."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import tables
from experiments.configs import tiny
from hsnn_jax.data import cache, prepare
from hsnn_jax.index.published import IndexFileError, PublishedIndex
from hsnn_jax.index.publish import publish_index
from hsnn_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
NAME = "synthetic_tiny"


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
  """The single 'error: ...' line of a failed command that printed no traceback."""
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-2000:]
  return errors[0]


@pytest.fixture()
def cache_dir(tmp_path):
  prepare.prepare_dataset(NAME, cache_dir=str(tmp_path), num_items=300, num_users=40, seed=1)
  return str(tmp_path)


def _flip_middle_byte(path):
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(path, "wb").write(bytes(data))


def _truncate(path):
  with open(path, "r+b") as fh:
    fh.truncate(os.path.getsize(path) - 100)


def _to_format_1(d):
  """meta.json as the format-1 code wrote it: no checksums."""
  meta = json.load(open(os.path.join(d, "meta.json")))
  for k in ("arrays_bytes", "arrays_sha256", "meta_sha256", "prepare_options"):
    meta.pop(k)
  meta["format_version"] = 1
  json.dump(meta, open(os.path.join(d, "meta.json"), "w"))


def _edit_meta(d):
  meta = json.load(open(os.path.join(d, "meta.json")))
  meta["num_items"] += 1
  json.dump(meta, open(os.path.join(d, "meta.json"), "w"))


DAMAGE = {
    "flipped_bit_in_arrays": (lambda d: _flip_middle_byte(os.path.join(d, "arrays.npz")),
                              "arrays.npz is damaged"),
    "truncated_arrays": (lambda d: _truncate(os.path.join(d, "arrays.npz")), "truncated"),
    "missing_arrays": (lambda d: os.remove(os.path.join(d, "arrays.npz")),
                       "arrays.npz missing"),
    "missing_meta": (lambda d: os.remove(os.path.join(d, "meta.json")), "meta.json missing"),
    "unparsable_meta": (lambda d: _truncate(os.path.join(d, "meta.json")),
                        "meta.json is not valid JSON"),
    "edited_meta": (_edit_meta, "meta.json was changed or damaged"),
    "older_format": (_to_format_1, "older format (version 1; this code reads version 2)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_is_one_clear_error_naming_the_rebuild_command(cache_dir, damage):
  d = cache.dataset_dir(cache_dir, NAME)
  harm, why = DAMAGE[damage]
  harm(d)
  with pytest.raises(cache.CacheError) as err:
    cache.load(cache_dir, NAME)
  message = str(err.value)
  assert "\n" not in message and d in message and why in message
  rebuild = f"python -m experiments.prepare --dataset={NAME} --cache_dir={cache_dir}"
  assert rebuild in message
  if damage not in ("missing_meta", "unparsable_meta", "older_format"):
    assert "--num_items=300 --num_users=40 --seed=1" in message  # as it was prepared


def test_an_intact_cache_loads_and_a_cache_error_is_a_value_error(cache_dir):
  assert cache.load(cache_dir, NAME).num_items == 300
  assert issubclass(cache.CacheError, ValueError)  # experiments/train.py: one line, exit 1


def test_trainer_reports_a_partial_cache_instead_of_preparing_over_it(cache_dir):
  """A missing file is damage, not an absent cache: nothing is re-prepared."""
  cfg = tiny.get_config()
  cfg.cache_dir = cache_dir
  d = cache.dataset_dir(cache_dir, NAME)
  os.remove(os.path.join(d, "arrays.npz"))
  with pytest.raises(cache.CacheError, match="arrays.npz missing"):
    trainer.load_dataset(cfg)
  assert sorted(os.listdir(d)) == ["meta.json"]
  os.remove(os.path.join(d, "meta.json"))
  os.rmdir(d)  # wholly absent: the trainer prepares it
  assert trainer.load_dataset(cfg).name == NAME


def test_train_command_on_a_damaged_cache_exits_with_one_line(cache_dir, tmp_path):
  d = cache.dataset_dir(cache_dir, NAME)
  _flip_middle_byte(os.path.join(d, "arrays.npz"))
  proc = _cli("experiments.train", "--config=experiments/configs/tiny.py",
              f"--workdir={tmp_path / 'run'}", f"--config.cache_dir={cache_dir}")
  line = _one_line_error(proc)
  assert d in line and f"--dataset={NAME} --cache_dir={cache_dir}" in line


def _small_index(path):
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(60, 4)).astype(np.float32)
  codes = np.stack([rng.integers(0, 3, 60), rng.integers(0, 4, 60)], axis=1)
  index = publish_index(codes, [rng.normal(size=(3, 4)), rng.normal(size=(4, 4))], vectors)
  index.save(path)
  return index


@pytest.mark.parametrize("harm", [_flip_middle_byte, _truncate])
def test_damaged_published_index_names_the_file_and_the_fix(tmp_path, harm):
  path = str(tmp_path / "index.npz")
  _small_index(path)
  assert os.listdir(tmp_path) == ["index.npz"]  # written atomically, no temporary left
  harm(path)
  with pytest.raises(IndexFileError) as err:
    PublishedIndex.load(path)
  assert path in str(err.value) and "experiments.train" in str(err.value)
  assert "\n" not in str(err.value)


def test_an_npz_without_the_index_arrays_is_refused(tmp_path):
  path = str(tmp_path / "index.npz")
  np.savez(path, codes=np.zeros((3, 2), np.int32))
  with pytest.raises(IndexFileError, match="missing array 'item_path'"):
    PublishedIndex.load(path)


def _first_tiny_run(runs_dir, cache_dir, table="hill_public"):
  r = tables.TABLES[table].rows[0]
  cfg = tables.cell_config(tables.TABLES[table], r, "tiny", NAME, 0, cache_dir)
  return cfg, tables.run_dir(runs_dir, "tiny", NAME, r.label, cfg)


def test_unparsable_results_record_is_named_with_the_fix(tmp_path):
  cfg, workdir = _first_tiny_run(str(tmp_path / "runs"), str(tmp_path / "cache"))
  os.makedirs(workdir)
  path = os.path.join(workdir, "results.json")
  with open(path, "w") as fh:
    fh.write('{"metrics": {"recall@20": 0.1')  # cut short
  with pytest.raises(ValueError) as err:
    tables.train_once(cfg, workdir)
  assert path in str(err.value) and "run the same command again" in str(err.value)
  with open(path, "w") as fh:
    fh.write("[]")
  with pytest.raises(ValueError, match="has no 'metrics' object"):
    tables.train_once(cfg, workdir)


def test_reproduce_command_on_an_unparsable_results_record_exits_with_one_line(tmp_path):
  runs, cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
  _, workdir = _first_tiny_run(runs, cache_dir)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "results.json"), "w") as fh:
    fh.write("{")
  proc = _cli("experiments.reproduce", "--table=hill_public", "--scale=tiny", "--seeds=0",
              f"--runs_dir={runs}", f"--cache_dir={cache_dir}", f"--out={tmp_path / 'out'}")
  assert os.path.join(workdir, "results.json") in _one_line_error(proc)
