"""Train and evaluate a retriever.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/hsnn_tiny
  python -m experiments.train --config=experiments/configs/gowalla_two_tower.py \
      --workdir=runs/gowalla --config.train.num_steps=20000

Re-running with the same --workdir resumes from its newest checkpoint.
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from hsnn_jax.train.trainer import NonFiniteError, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(std_logging.Filter):
  """Orbax logs every checkpoint operation at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietOrbax())
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, NonFiniteError) as err:
    # Config, data and numerical errors are the user's to fix: one clear message, no traceback.
    raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
  app.run(main)
