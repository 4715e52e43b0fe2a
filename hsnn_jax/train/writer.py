"""Metrics to a JSONL file and TensorBoard event files (tensorboardX: no TensorFlow needed)."""

from __future__ import annotations

import json
import os
from typing import Mapping

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
