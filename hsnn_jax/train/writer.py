"""Metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow needed), and
atomic JSON files for results that other code takes as a run's verdict.

A write that fails (a full disk, a read-only directory) raises `WriteError` (see
hsnn_jax/atomic_write.py), naming the file and the cause; a results file that was there before
is left unchanged.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any, Mapping

import numpy as np

from hsnn_jax.atomic_write import WriteError, atomic_path


class MetricWriter:
  """write(step, {'name': value}) appends one JSON line and one TB scalar per metric."""

  def __init__(self, workdir: str, enable_tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = open(self._path, "a")
    self._tb = None
    if enable_tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
    try:
      self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
      self._jsonl.flush()
    except OSError as err:
      raise WriteError(err.errno or errno.EIO, f"appending step {step} to {self._path} failed: "
                       f"{err.strerror or err}") from err
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
  existing results.json as a finished run. A failed write raises WriteError (see atomic_path).
  """
  with atomic_path(path) as tmp:
    with open(tmp, "w") as fh:
      json.dump(obj, fh, indent=1)
      fh.flush()
      os.fsync(fh.fileno())


def read_json(path: str, what: str, remedy: str) -> Any:
  """json.load(path), or ValueError 'WHAT PATH cannot be parsed (...); REMEDY' if it is not
  valid JSON (a truncated or damaged file)."""
  try:
    with open(path) as fh:
      return json.load(fh)
  except (ValueError, UnicodeDecodeError) as err:
    raise ValueError(f"{what} {path} cannot be parsed ({err}); {remedy}") from None
