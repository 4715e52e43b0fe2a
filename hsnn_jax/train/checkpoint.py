"""Orbax checkpointing: keep the last few train states, resume from the newest complete one.

A checkpoint is the whole `TrainState` (parameters, optimizer state, step and the PRNG key that
drives batch sampling), so a resumed run replays the same trajectory. Orbax writes each step to
a temporary directory and renames it when complete, so a run killed mid-save leaves only
complete checkpoints behind; one that is unreadable anyway (e.g. truncated on disk) is skipped
in favour of the previous one.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             create=True, enable_async_checkpointing=async_save))

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore_latest(self, like: Any) -> tuple[Any, Optional[int]]:
    """Returns (state, step) from the newest readable checkpoint, or (like, None) if none."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract)), step
      except Exception as err:  # pylint: disable=broad-except
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); trying the previous one",
                        step, self.directory, type(err).__name__, err)
    return like, None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
