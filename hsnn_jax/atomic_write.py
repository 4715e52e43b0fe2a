"""Atomic output files: a reader sees the old file or the whole new one, never a partial write.

A write that fails (a full disk, a read-only directory) raises `WriteError`, an OSError that
names the file and the cause; the file that was there before is left unchanged. Used for what
other code takes as a run's verdict: results.json, topk.npz, a published index.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Iterator


class WriteError(OSError):
  """An output file could not be written; any previous version of it is unchanged."""


def write_error(path: str, err: OSError) -> WriteError:
  """WriteError(errno, 'writing PATH failed: CAUSE; ...') from the OSError `err`."""
  return WriteError(err.errno or errno.EIO,
                    f"writing {path} failed: {err.strerror or err}; any previous "
                    f"{os.path.basename(path)} there is unchanged")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path` (same extension) to write; renamed onto `path` when
  the block ends. On any error the temporary is removed and `path` is untouched; an OSError
  becomes a WriteError naming `path`. The temporary lives in the same directory, so os.replace
  is a rename on one file system."""
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp" + os.path.splitext(path)[1], dir=directory)
    os.close(fd)
  except OSError as err:
    raise write_error(path, err) from err
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException as err:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(err, OSError) and not isinstance(err, WriteError):
      raise write_error(path, err) from err
    raise
