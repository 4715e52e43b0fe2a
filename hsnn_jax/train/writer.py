"""Metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow needed), and
atomic JSON files for results that other code takes as a run's verdict."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping

import numpy as np


class MetricWriter:
  """write(step, {'name': value}) appends one JSON line and one TB scalar per metric."""

  def __init__(self, workdir: str, enable_tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = None
    if enable_tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.add_scalar(k.replace("@", "_at_"), v, int(step))  # TB tags reject '@'
      self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes obj as JSON to path so that a reader sees the old file or the whole new one.

  A run killed mid-write must not leave a truncated results.json: `experiments.tables` takes an
  existing results.json as a finished run. The temporary file lives in the same directory, so
  os.replace is a rename on one file system.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as fh:
      json.dump(obj, fh, indent=1)
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
