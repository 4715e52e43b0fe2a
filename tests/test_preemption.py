"""Preemption safety: SIGTERM saves and exits 75, SIGKILL at any moment resumes from the newest
intact checkpoint, damaged checkpoints are detected and the previous one is used; a resumed run
ends bit-identical to an uninterrupted one (same seed, same mesh, CPU).

The two tests that start `python -m experiments.train` children are `slow` (about 40 s each on
2 shared cores, mostly compilation); the checkpoint tests run in the fast suite."""

import gc
import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import tiny
from hsnn_jax.train import trainer
from hsnn_jax.train.checkpoint import CheckpointError, Checkpointer
from tests.helpers import set_fields

REPO = pathlib.Path(__file__).resolve().parents[1]
# Orbax leaves the other reads of a damaged checkpoint pending; pytest reports them on exit.
_PENDING_READS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
# A 2 x 2 mesh with every table split over 'model', so resuming restores sharded arrays.
OVERRIDES = {"progress_bar": False, "train.num_steps": 240, "train.checkpoint_every": 40,
             "train.log_every": 20, "train.eval_every": 120, "train.patience": 0,
             "mesh.data": 2, "mesh.model": 2, "mesh.shard_min_rows": 0}


def _config(cache_dir):
  cfg = tiny.get_config()
  cfg.cache_dir = str(cache_dir)
  return set_fields(cfg, OVERRIDES)


def _start(workdir, cache_dir) -> subprocess.Popen:
  """`python -m experiments.train` on the tiny config in a child process (8 CPU devices)."""
  flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/tiny.py",
         f"--workdir={workdir}", f"--config.cache_dir={cache_dir}", *flags]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _steps(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def _wait_for_checkpoint(proc, workdir, min_step, timeout=300.0) -> None:
  deadline = time.time() + timeout
  while not any(s >= min_step for s in _steps(workdir)):
    if proc.poll() is not None:
      out, err = proc.communicate()
      pytest.fail(f"training exited ({proc.returncode}) before checkpoint {min_step}:\n"
                  f"{err[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      proc.wait()
      pytest.fail(f"no checkpoint >= {min_step} after {timeout}s")
    time.sleep(0.02)


def _final_fingerprints(workdir, step) -> list[int]:
  """The fingerprints (one uint32 per array of the TrainState) saved with checkpoint `step`."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    out = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return out.meta["fingerprint"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted in-process run: (results, workdir, cache_dir)."""
  base = tmp_path_factory.mktemp("preemption")
  cache_dir, workdir = base / "cache", str(base / "uninterrupted")
  results = trainer.train_and_evaluate(_config(cache_dir), workdir)
  return results, workdir, cache_dir


def _assert_same_run(results, workdir, reference):
  ref_results, ref_workdir, _ = reference
  assert results["steps"] == ref_results["steps"] == OVERRIDES["train.num_steps"]
  for k, v in ref_results["metrics"].items():
    assert results["metrics"][k] == pytest.approx(v, abs=1e-6), k
  assert results["best_valid"] == ref_results["best_valid"]
  step = OVERRIDES["train.num_steps"]
  assert _final_fingerprints(workdir, step) == _final_fingerprints(ref_workdir, step)
  logged = lambda wd: [json.loads(line)["step"] for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert logged(workdir) == logged(ref_workdir)  # no duplicated or missing log lines


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_the_rerun_continues_the_same_run(tmp_path, reference):
  workdir = str(tmp_path / "run")
  proc = _start(workdir, reference[2])
  _wait_for_checkpoint(proc, workdir, 40)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == trainer.PREEMPTED_EXIT_CODE == 75, err[-3000:]
  assert "stopped by SIGTERM after step" in err
  stopped = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
  assert 40 <= stopped < OVERRIDES["train.num_steps"]
  assert max(_steps(workdir)) == stopped  # saved at the step it stopped, not only every 40
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  results = trainer.train_and_evaluate(_config(reference[2]), workdir)
  _assert_same_run(results, workdir, reference)


@pytest.mark.slow
@_PENDING_READS
def test_sigkill_then_damaged_newest_checkpoint_still_resumes_the_same_run(tmp_path, reference):
  workdir = str(tmp_path / "run")
  proc = _start(workdir, reference[2])
  _wait_for_checkpoint(proc, workdir, 80)
  proc.kill()  # SIGKILL: no handler runs, an async save may be half written
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  steps = _steps(workdir)
  newest = os.path.join(workdir, "checkpoints", str(steps[-1]))
  data_file = max(glob.glob(os.path.join(newest, "state", "**", "d", "*"), recursive=True),
                  key=os.path.getsize)
  with open(data_file, "r+b") as fh:
    fh.truncate(os.path.getsize(data_file) // 2)
  results = trainer.train_and_evaluate(_config(reference[2]), workdir)
  aside = os.listdir(os.path.join(workdir, "checkpoints.unreadable"))
  assert [name.split(".")[0] for name in aside] == [str(steps[-1])]
  _assert_same_run(results, workdir, reference)
  gc.collect()


def _small_state(scale):
  return {"table": jnp.arange(20000, dtype=jnp.float32).reshape(2000, 10) * scale,
          "key": jax.random.PRNGKey(3), "step": jnp.int32(scale)}


def _damage(step_dir, how):
  path = max(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True),
             key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  if how == "truncate":
    data = data[:len(data) // 2]
  else:  # one flipped byte inside the array data: orbax restores it without complaint
    data[len(data) // 2] ^= 0xFF
  open(path, "wb").write(bytes(data))


@_PENDING_READS
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, how):
  directory = str(tmp_path / "ckpt")
  ckpt = Checkpointer(directory, save_every=1, keep=3)
  for step in (1, 2):
    ckpt.save(step, _small_state(step), extra={"step": step})
  ckpt.close()
  _damage(os.path.join(directory, "2"), how)
  # An unfinished save from a killed run: a temporary directory that must never be restored.
  os.makedirs(os.path.join(directory, "3.orbax-checkpoint-tmp-1700000000"))
  ckpt = Checkpointer(directory, save_every=1, keep=3)
  restored = ckpt.restore(_small_state(0))
  assert restored.step == 1 and restored.extra == {"step": 1}
  np.testing.assert_array_equal(np.asarray(restored.state["table"]),
                                np.asarray(_small_state(1)["table"]))
  assert [n.split(".")[0] for n in os.listdir(directory + ".unreadable")] == ["2"]
  assert not any("tmp" in name for name in os.listdir(directory))
  assert ckpt.save(2, _small_state(2), force=True)  # the damaged step's number is free again
  ckpt.close()
  gc.collect()  # reports orbax's abandoned reads here, where they are filtered


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
  directory = str(tmp_path / "ckpt")
  ckpt = Checkpointer(directory, save_every=1, keep=3, async_save=False)
  ckpt.save(1, _small_state(1))
  ckpt.close()
  ckpt = Checkpointer(directory, save_every=1, keep=3)
  wrong_shape = {**_small_state(1), "table": jnp.zeros((3, 3))}
  with pytest.raises(CheckpointError, match=r"none of the checkpoints \[1\]"):
    ckpt.restore(wrong_shape)
  assert os.listdir(directory) == ["1"]  # nothing moved or deleted
  ckpt.close()
