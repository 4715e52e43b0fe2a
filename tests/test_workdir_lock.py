"""One run per workdir: a second live run is refused at once, naming the holder; a lock left by
a killed run is taken over with a warning (so resume after SIGKILL works)."""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from experiments.configs import tiny
from hsnn_jax.train import trainer, workdir_lock
from hsnn_jax.train.workdir_lock import WorkdirBusy, WorkdirLock

REPO = pathlib.Path(__file__).resolve().parents[1]
_HOLDER = ("import sys, time; from hsnn_jax.train.workdir_lock import WorkdirLock; "
           "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)")


@pytest.fixture()
def holder(tmp_path):
  """Another process holding tmp_path/'run' (killed at the end): (workdir, Popen)."""
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.stdout.readline().strip() == "locked"
  yield workdir, proc
  proc.kill()
  proc.wait()


def _lock_contents(workdir):
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME)) as fh:
    return fh.read()


def test_a_live_holder_refuses_a_second_run_naming_it(holder):
  workdir, proc = holder
  holder_info = json.loads(_lock_contents(workdir))
  assert holder_info["pid"] == proc.pid and holder_info["host"] == socket.gethostname()
  with pytest.raises(WorkdirBusy) as err:
    WorkdirLock(workdir).acquire()
  message = str(err.value)
  assert os.path.abspath(workdir) in message
  assert f"pid {proc.pid} on host {socket.gethostname()}" in message
  assert json.loads(_lock_contents(workdir))["pid"] == proc.pid  # the holder's record is kept


def test_a_killed_holder_is_taken_over_with_a_warning(holder, caplog):
  workdir, proc = holder
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with caplog.at_level(logging.WARNING):
    lock = WorkdirLock(workdir)
    lock.acquire()
  assert f"pid {proc.pid}" in caplog.text and "taking over" in caplog.text
  assert json.loads(_lock_contents(workdir))["pid"] == os.getpid()
  lock.release()
  assert _lock_contents(workdir) == ""  # a clean end: the next run warns about nothing


def test_release_on_exception_and_clean_reacquire(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  with pytest.raises(KeyError):
    with workdir_lock.hold(workdir):
      with pytest.raises(WorkdirBusy):  # the same process, another open: refused too
        WorkdirLock(workdir).acquire()
      raise KeyError("boom")
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(workdir) as lock:
      assert lock.held
  assert "taking over" not in caplog.text


def test_only_the_primary_process_locks_and_all_refuse_together(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir, primary=False) as lock:
    assert not lock.held
    with workdir_lock.hold(workdir):  # process 0 of the run can still take it
      pass
  with WorkdirLock(workdir):
    with pytest.raises(WorkdirBusy, match="process 0 of this run"):
      with workdir_lock.hold(workdir, primary=False, agree_any=lambda _: True):
        pass


def test_trainer_refuses_a_busy_workdir_before_writing_anything(holder, tmp_path):
  workdir, proc = holder
  cfg = tiny.get_config()
  cfg.cache_dir = str(tmp_path / "cache")
  start = time.time()
  with pytest.raises(WorkdirBusy, match=f"pid {proc.pid}"):
    trainer.train_and_evaluate(cfg, workdir)
  assert time.time() - start < 30
  assert os.listdir(workdir) == [workdir_lock.LOCK_NAME]  # no config.json, no checkpoints
  assert not os.path.exists(tmp_path / "cache")


def test_train_command_on_a_busy_workdir_exits_with_one_line(holder):
  workdir, proc = holder
  cmd = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/tiny.py",
         f"--workdir={workdir}", f"--config.cache_dir={os.path.dirname(workdir)}/cache"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and f"pid {proc.pid}" in errors[0] and workdir in errors[0]
