"""Orbax checkpointing: keep the last few train states, resume from the newest intact one.

A checkpoint is the whole `TrainState` (parameters, optimizer state, step and the PRNG key that
drives batch sampling), so a resumed run replays the same trajectory, plus a small JSON item:
a fingerprint of every array and the caller's `extra` host state (e.g. early stopping).

Failure modes and what catches them:
  * killed mid-save (SIGKILL, preemption): orbax writes each step to a temporary directory and
    renames it when complete; temporaries are removed at start-up and never restored.
  * a damaged file in a finalized checkpoint: a truncated or missing file usually makes orbax
    raise; but tensorstore keeps no checksums, so flipped bytes inside an array's data (or a
    truncation that only cuts array data) restore silently as wrong values (measured with
    orbax-checkpoint 0.12.8). Hence the fingerprint: a position-weighted uint32 sum of each
    array's bits, computed on device at save time and checked after restore.
A step that fails either way is moved to `<directory>.unreadable/` and the previous step is
tried. If checkpoints exist but none is readable (also what a changed model shape looks like)
`CheckpointError` is raised instead of silently starting over.
  * a save that fails (full disk, read-only directory): orbax never renames the step into
    place and deletes no older step, so the finished steps stay intact. The error, raised by
    save() or, for an async save, by the next save(), wait() or close(), becomes
    `CheckpointWriteError` (an OSError) naming the step, the directory, the cause and the
    newest finished step; those calls also check that every started step reached the disk.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; the steps finished before it are intact."""


class Restored(NamedTuple):
  state: Any
  step: Optional[int]  # None: nothing restored, `state` is the `like` argument
  extra: dict


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """[] uint32: sum_i bits_i * w_i mod 2^32 with odd weights w_i, so any one changed word shows."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  width = x.dtype.itemsize
  if width == 4:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  elif width == 8:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16}[width]
    bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  bits = bits.reshape(-1)
  weights = (jnp.arange(bits.shape[0], dtype=jnp.uint32) * 2 + 1) * jnp.uint32(0x9E3779B1)
  return jnp.sum(bits * weights, dtype=jnp.uint32) ^ jnp.uint32(bits.shape[0])


@jax.jit
def _fingerprints(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.zeros((0,), jnp.uint32)
  return jnp.stack([_leaf_fingerprint(jnp.asarray(x)) for x in leaves])


def fingerprint(tree: Any) -> list[int]:
  """One uint32 per array leaf of `tree` (sharded or not), as Python ints."""
  return [int(v) for v in np.asarray(_fingerprints(tree))]


class Checkpointer:
  """Saves and restores one pytree shape under `directory` (see the module docstring)."""

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             create=True, enable_async_checkpointing=async_save,
                                             cleanup_tmp_directories=True))
    self._started: set[int] = set()  # steps saved by this object, finalized or still in flight
    self._unconfirmed: set[int] = set()  # started steps not yet seen finished on disk

  def save(self, step: int, state: Any, *, extra: Optional[dict] = None,
           force: bool = False) -> bool:
    """Starts saving `state` at `step` (async unless disabled); False if skipped or present."""
    if step in self._started or step in self._manager.all_steps():
      return False
    if not (force or self._manager.should_save(step)):
      return False
    self.wait()  # orbax waits for the previous save anyway; this also reports if it failed
    meta = {"fingerprint": fingerprint(state), "extra": dict(extra or {})}
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as err:  # pylint: disable=broad-except
      raise self._write_error(step, err) from err
    if saved:
      self._started.add(step)
      self._unconfirmed.add(step)
    return saved

  def _finished_steps(self) -> list[int]:
    """Steps whose directory is in place (orbax renames a step there once it is complete)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())

  def _write_error(self, step: int, err: Optional[BaseException]) -> CheckpointWriteError:
    done = [s for s in self._finished_steps() if s != step]
    cause = (f"{type(err).__name__}: {err}" if err is not None else
             "its background commit failed, see the orbax error logged above")
    return CheckpointWriteError(
        getattr(err, "errno", None) or errno.EIO,
        f"saving checkpoint step {step} to {self.directory} failed ({cause}); the newest "
        f"finished checkpoint, step {done[-1] if done else None}, is intact. Free space or fix "
        f"the directory's permissions, then run the same command again to resume")

  def _confirm(self) -> None:
    """Raises CheckpointWriteError for a started step that did not reach the disk."""
    if not self._unconfirmed:
      return
    finished = set(self._finished_steps())
    missing = sorted(self._unconfirmed - finished)
    self._unconfirmed.clear()
    if missing:
      raise self._write_error(missing[0], None)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, like: Any) -> Restored:
    """The newest intact checkpoint, restored with the shapes, dtypes and shardings of `like`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    steps = sorted(self._manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        stored, actual = out.meta["fingerprint"], fingerprint(out.state)
        if stored != actual:
          bad = [i for i, (a, b) in enumerate(zip(stored, actual)) if a != b]
          raise ValueError(f"array contents differ from what was saved (leaves {bad[:5]} of "
                           f"{len(actual)}; stored {len(stored)} fingerprints)")
      except Exception as err:  # pylint: disable=broad-except
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                        step, self.directory, type(err).__name__, err)
        failed.append(step)
        continue
      self._set_aside(failed)
      return Restored(out.state, step, dict(out.meta.get("extra", {})))
    if failed:
      raise CheckpointError(
          f"none of the checkpoints {failed} in {self.directory} can be restored (see the "
          f"warnings above; a changed model or config also causes this). Move the directory "
          f"away to start over.")
    return Restored(like, None, {})

  def restore_latest(self, like: Any) -> tuple[Any, Optional[int]]:
    """Returns (state, step) from the newest intact checkpoint, or (like, None) if none."""
    restored = self.restore(like)
    return restored.state, restored.step

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable steps out of the manager's directory, so their numbers can be reused."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = self.directory + ".unreadable"
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        dest = os.path.join(aside, f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(os.path.join(self.directory, str(step)), dest)
        logging.warning("moved unreadable checkpoint %d to %s", step, dest)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"set_aside:{self.directory}")
    self._manager.reload()

  def wait(self) -> None:
    """Waits for an async save in flight; CheckpointWriteError if it did not reach the disk."""
    try:
      self._manager.wait_until_finished()
    except Exception as err:  # pylint: disable=broad-except
      step = max(self._unconfirmed, default=-1)
      self._unconfirmed.clear()
      raise self._write_error(step, err) from err
    self._confirm()

  def close(self) -> None:
    self.wait()
    self._manager.close()
