"""A full disk or an unwritable directory while a checkpoint or results.json is written: the last
good checkpoint and results.json stay as they were, and the error says what failed and where.

The failures are simulated: ENOSPC raised where orbax writes a checkpoint's arrays or commits
it, and where the atomic writer fsyncs or creates its temporary file (EROFS)."""

import errno
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import atomicity

from experiments.configs import tiny
from hsnn_jax import atomic_write
from hsnn_jax.train import trainer, writer
from hsnn_jax.train.checkpoint import CheckpointWriteError, Checkpointer

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _raise(error):
  def fail(*args, **kwargs):
    del args, kwargs
    raise error
  return fail


def _async_raise(error):
  async def fail(*args, **kwargs):
    del args, kwargs
    raise error
  return fail


def _os_with(**functions):
  """A stand-in for the `os` module of one module under test, with some functions replaced."""
  names = {k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
  return types.SimpleNamespace(**{**names, **functions})


def test_results_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  writer.write_json_atomic(str(path), {"steps": 1})
  monkeypatch.setattr(writer, "os", _os_with(fsync=_raise(ENOSPC)))
  with pytest.raises(writer.WriteError) as err:
    writer.write_json_atomic(str(path), {"steps": 2})
  assert err.value.errno == errno.ENOSPC
  assert f"writing {path} failed: No space left on device" in str(err.value)
  monkeypatch.undo()
  assert path.read_text() == '{\n "steps": 1\n}' and os.listdir(tmp_path) == ["results.json"]


def test_results_write_in_a_read_only_directory_names_it(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  read_only = OSError(errno.EROFS, os.strerror(errno.EROFS))
  monkeypatch.setattr(atomic_write, "tempfile", types.SimpleNamespace(mkstemp=_raise(read_only)))
  with pytest.raises(writer.WriteError, match=f"writing {path} failed: Read-only file system"):
    writer.write_json_atomic(str(path), {"steps": 2})
  assert not path.exists()


def test_metrics_append_on_a_full_disk_names_the_file(tmp_path):
  metrics = writer.MetricWriter(str(tmp_path), enable_tensorboard=False)
  metrics._jsonl = types.SimpleNamespace(write=_raise(ENOSPC), close=lambda: None)  # pylint: disable=protected-access
  with pytest.raises(writer.WriteError, match=f"step 7 to {tmp_path}/metrics.jsonl failed: No space"):
    metrics.write(7, {"loss": 1.0})


def _state(scale):
  return {"table": jnp.arange(4000, dtype=jnp.float32).reshape(400, 10) * scale,
          "key": jax.random.PRNGKey(scale)}


@pytest.mark.parametrize("where", ["array_write", "commit"])
def test_checkpoint_on_a_full_disk_keeps_the_last_good_one(tmp_path, monkeypatch, where):
  directory = str(tmp_path / "ckpt")
  ckpt = Checkpointer(directory, save_every=1, keep=3)
  ckpt.save(1, _state(1))
  ckpt.wait()
  if where == "array_write":  # raised while the save starts
    monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", _async_raise(ENOSPC))
  else:  # raised in the background commit, reported by the next wait()
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", _async_raise(ENOSPC))
  with pytest.raises(CheckpointWriteError) as err:
    ckpt.save(2, _state(2))
    ckpt.wait()
  monkeypatch.undo()
  assert err.value.errno == errno.ENOSPC
  message = str(err.value)
  assert f"saving checkpoint step 2 to {directory} failed" in message
  assert "No space left on device" in message and "step 1, is intact" in message
  assert [n for n in os.listdir(directory) if n.isdigit()] == ["1"]
  restored = Checkpointer(directory, save_every=1, keep=3).restore(_state(0))
  assert restored.step == 1
  np.testing.assert_array_equal(restored.state["table"], _state(1)["table"])


def _config(tmp_path, num_steps):
  c = tiny.get_config()
  c.cache_dir, c.progress_bar = str(tmp_path / "cache"), False
  c.train.num_steps, c.train.eval_every = num_steps, 0
  c.train.checkpoint_every = c.train.log_every = 20
  return c


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())


def test_training_on_a_full_disk_stops_clearly_and_keeps_the_last_good_outputs(tmp_path,
                                                                               monkeypatch):
  workdir = str(tmp_path / "run")
  results = os.path.join(workdir, "results.json")
  trainer.train_and_evaluate(_config(tmp_path, 40), workdir)
  first = open(results, "rb").read()
  # Longer, with the disk full when checkpoint 60 is written.
  monkeypatch.setattr(ocp.StandardCheckpointHandler, "async_save", _async_raise(ENOSPC))
  with pytest.raises(CheckpointWriteError, match=r"checkpoint step 60 to .*/run/checkpoints "
                     r"failed .*No space left on device.*step 40, is intact"):
    trainer.train_and_evaluate(_config(tmp_path, 80), workdir)
  monkeypatch.undo()
  assert _steps(workdir) == [20, 40] and open(results, "rb").read() == first
  # Again, with the disk full when results.json is written: checkpoints 60 and 80 are kept.
  monkeypatch.setattr(writer, "os", _os_with(fsync=_raise(ENOSPC)))
  with pytest.raises(writer.WriteError, match=f"writing {results} failed: No space left"):
    trainer.train_and_evaluate(_config(tmp_path, 80), workdir)
  monkeypatch.undo()
  assert open(results, "rb").read() == first
  assert _steps(workdir) == [40, 60, 80]
  assert trainer.load_trained(_config(tmp_path, 80), workdir).step == 80  # intact, fingerprinted
  assert issubclass(CheckpointWriteError, trainer.USER_ERRORS)  # one line from experiments.train
  assert issubclass(writer.WriteError, trainer.USER_ERRORS)
