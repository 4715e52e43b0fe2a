"""Two processes on localhost (2 CPU devices each, gloo collectives) train the tiny config on one
2 x 2 mesh spanning both, and agree with a single-device run of the same config."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import tiny
from hsnn_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = {"num_steps": 40, "warmup_steps": 5, "log_every": 10, "checkpoint_every": 20,
         "eval_every": 0}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _losses(workdir) -> np.ndarray:
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    return np.array([json.loads(line)["train/loss"] for line in fh if "train/loss" in line])


@pytest.mark.slow
def test_two_processes_train_one_mesh_and_agree_with_one_device(tmp_path):
  cache_dir, workdir = tmp_path / "cache", str(tmp_path / "two_processes")
  cfg = tiny.get_config()
  cfg.cache_dir, cfg.progress_bar = str(cache_dir), False
  cfg.train.update(TRAIN)
  cfg.mesh.update(data=1, model=1)
  single = trainer.train_and_evaluate(cfg, str(tmp_path / "one_device"))  # also fills the cache

  port = _free_port()
  flags = ["--config=experiments/configs/tiny.py"] + [
      f"--config.train.{k}={v}" for k, v in TRAIN.items()] + [f"--workdir={workdir}",
      f"--config.cache_dir={cache_dir}", "--config.progress_bar=False",
      "--config.mesh.data=2", "--config.mesh.model=2", "--config.mesh.shard_min_rows=0",
      f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "experiments.train", *flags,
                             f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=400) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i}:\n{err[-4000:]}"
  assert "process 1 of 2: 2 local devices, 4 in all" in outputs[1][1]
  with open(os.path.join(workdir, "results.json")) as fh:
    results = json.load(fh)
  assert "4 x cpu (cpu) in 2 processes" in results["hardware"]
  assert "data=2 x model=2" in results["hardware"]
  assert results["steps"] == TRAIN["num_steps"]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [20, 40]
  np.testing.assert_allclose(_losses(workdir), _losses(str(tmp_path / "one_device")), rtol=1e-5)
  for k, v in single["metrics"].items():
    assert results["metrics"][k] == pytest.approx(v, abs=1e-3), k
