"""Multi-process start-up: the same training command on one host or on every host of a slice.

`initialize` calls `jax.distributed.initialize` when the run has more than one process, from
(first found wins, field by field):
  1. explicit arguments (the `--coordinator_address`, `--num_processes`, `--process_id` flags);
  2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
  3. with `auto=True`, JAX's cluster auto-detection (Cloud TPU, SLURM, Open MPI, Kubernetes).
With none of these it does nothing and the run is single-process. It must run before anything
touches a JAX backend.

On CPU, cross-process collectives need a collectives implementation: `gloo` is selected (JAX's
default since 0.5; older versions defaulted to none and failed at the first collective).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  return int(value) if value not in (None, "") else None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, auto: bool = False) -> bool:
  """Joins the multi-process run described by the arguments or environment; see module doc.

  Returns:
    True if jax.distributed was initialized (more than one process may take part).
  """
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  count = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  explicit = (address, count, index)
  if all(v is None for v in explicit) and not auto:
    return False
  if not auto and None in explicit:
    raise ValueError(f"multi-process run needs coordinator_address, num_processes and "
                     f"process_id; got {address!r}, {count!r}, {index!r}")
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):  # an old jax without the option
    pass
  jax.distributed.initialize(address, count, index)
  logging.info("process %d of %d: %d local devices, %d in all", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def is_primary() -> bool:
  """True on the process that writes shared outputs (results, logs): process 0."""
  return jax.process_index() == 0


def agree_any(flag: bool) -> bool:
  """True on every process if `flag` is True on any process (a host-level all-reduce)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
