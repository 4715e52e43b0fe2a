"""Train and evaluate a retriever.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/hsnn_tiny
  python -m experiments.train --config=experiments/configs/gowalla_two_tower.py \
      --workdir=runs/gowalla --config.train.num_steps=20000

Re-running with the same --workdir resumes from its newest intact checkpoint.

Devices: one ('data', 'model') mesh, --config.mesh.data / --config.mesh.model (default: every
device on 'data'). Several processes (one per host of a pod slice, or several on one host) run
the same command with --coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables, or
--distributed_auto for SLURM, Cloud TPU, Open MPI and Kubernetes); the workdir must be shared.

Exit codes: 0 done; 1 a config, data, cache, checkpoint, numerical or disk error, or a workdir
that another live run holds (one line on stderr);
75 (EX_TEMPFAIL) stopped by SIGTERM after saving a checkpoint: run the same command again.
"""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from hsnn_jax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index in [0, num_processes).")
_AUTO = flags.DEFINE_bool("distributed_auto", False,
                          "Let JAX detect the cluster (SLURM, Cloud TPU, Open MPI, Kubernetes).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(std_logging.Filter):
  """Orbax logs every checkpoint operation at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietOrbax())
  # Before anything touches a JAX backend.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         auto=_AUTO.value)
  from hsnn_jax.train import trainer  # pylint: disable=import-outside-toplevel
  try:
    trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except trainer.Preempted as stop:
    logging.warning("%s", stop)
    sys.exit(trainer.PREEMPTED_EXIT_CODE)
  except trainer.USER_ERRORS as err:
    # Config, data, cache, numerical, disk and workdir errors are the user's to fix: one clear
    # message, no traceback.
    raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
  app.run(main)
