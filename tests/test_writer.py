"""write_json_atomic: a reader sees the old file or the whole new one, never a partial write."""

import json
import os

import pytest

from hsnn_jax.train import writer


def test_writes_json_and_leaves_no_temporary_files(tmp_path):
  path = tmp_path / "sub" / "results.json"
  writer.write_json_atomic(str(path), {"metrics": {"recall@20": 0.25}})
  writer.write_json_atomic(str(path), {"metrics": {"recall@20": 0.5}})
  assert json.loads(path.read_text()) == {"metrics": {"recall@20": 0.5}}
  assert os.listdir(path.parent) == ["results.json"]


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path):
  path = tmp_path / "results.json"
  writer.write_json_atomic(str(path), {"steps": 1})
  with pytest.raises(TypeError):  # not JSON-serialisable: fails midway through json.dump
    writer.write_json_atomic(str(path), {"steps": 2, "bad": object()})
  assert json.loads(path.read_text()) == {"steps": 1}
  assert os.listdir(tmp_path) == ["results.json"]
