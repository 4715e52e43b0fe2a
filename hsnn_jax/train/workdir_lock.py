"""One run per workdir: an advisory lock file, `<workdir>/train.lock`, holding the holder's pid,
host and start time (JSON).

The lock is `fcntl.flock` on that file, so the kernel drops it when the holder dies, however it
dies: a run killed with SIGKILL leaves the file's contents but no lock, and the next run takes it
over with a warning naming the process that is gone (resume after a kill works as before). A
second run while the holder lives is refused at once with `WorkdirBusy`, naming the workdir and
the holder. The file is never deleted (deleting it would let a third run lock a fresh file while
the holder still holds the old one); a clean release empties it.

In a multi-process run the workdir is shared by the run's own processes: only process 0 locks,
and `hold` makes every process refuse together. Between hosts the lock holds where the shared
file system supports flock (Linux NFS does); where flock fails, a warning says the run goes on
unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from typing import Callable, Iterator, Optional

from absl import logging

LOCK_NAME = "train.lock"


class WorkdirBusy(RuntimeError):
  """Another live run holds the workdir."""


def _describe(holder: dict) -> str:
  if "pid" not in holder:  # locked an instant ago, not yet written; or damaged
    return "a run that is starting (no holder recorded yet)"
  return (f"pid {holder.get('pid')} on host {holder.get('host')} (started "
          f"{holder.get('started', '?')})")


class WorkdirLock:
  """acquire() / release(), or a `with` block; see the module docstring."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: Optional[int] = None

  def _read_holder(self, fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 65536).decode(errors="replace")
    try:
      holder = json.loads(text) if text.strip() else {}
    except ValueError:
      holder = {"unreadable": text[:200]}
    return holder if isinstance(holder, dict) else {"unreadable": text[:200]}

  def acquire(self) -> None:
    """Takes the lock or raises WorkdirBusy; warns when taking over one left by a dead run."""
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
      holder = self._read_holder(fd)
      os.close(fd)
      if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise WorkdirBusy(
            f"workdir {self.workdir} is in use by another run: {_describe(holder)}, see "
            f"{self.path}. Wait for it to end or stop it, or give this run another "
            f"--workdir") from None
      logging.warning("cannot lock %s (%s); running without a workdir lock", self.path, err)
      return
    left = self._read_holder(fd)
    if left:
      logging.warning("workdir %s: taking over the lock left by %s, which ended without "
                      "releasing it (killed?)", self.workdir, _describe(left))
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
      os.fsync(fd)
    except OSError as err:
      os.close(fd)
      raise OSError(err.errno, f"writing the workdir lock {self.path} failed: "
                               f"{err.strerror or err}") from err
    self._fd = fd

  def release(self) -> None:
    """Empties the file (a clean end) and unlocks; a no-op if not held."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    finally:
      os.close(fd)  # closing drops the flock

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def hold(workdir: str, primary: bool = True,
         agree_any: Callable[[bool], bool] = bool) -> Iterator[WorkdirLock]:
  """Holds the workdir for a run: process 0 (`primary`) locks it, and if it is busy every
  process raises WorkdirBusy (`agree_any`: a cross-process OR, distributed.agree_any)."""
  lock = WorkdirLock(workdir)
  refused = None
  if primary:
    try:
      lock.acquire()
    except WorkdirBusy as err:
      refused = err
  if agree_any(refused is not None):
    raise refused or WorkdirBusy(f"workdir {lock.workdir} is in use by another run (process "
                                 f"0 of this run could not lock {lock.path})")
  try:
    yield lock
  finally:
    lock.release()
