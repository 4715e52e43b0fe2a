"""Tiny MoNN on the planted synthetic corpus: about a minute on a CPU.

  python -m experiments.train --config=experiments/configs/tiny_monn.py --workdir=/tmp/hsnn_tiny_monn

monn_small with every width cut down for a CPU (the same sizes as the item level of
tiny_hsnn.py, so the two runs compare the item-level model alone with the full HSNN).
synthetic_tiny has no item attributes: I2IF features are empty (see task_monn.py).
"""

from experiments.configs.defaults import base_config
from experiments.configs.tiny_hsnn import TINY_MONN
from hsnn_jax.train import task_monn


def get_config():
  c = base_config()
  c.dataset = "synthetic_tiny"
  c.model = task_monn.default_model_config()
  c.model.overrides.update(TINY_MONN)
  c.model.history_len = 20
  c.train.batch_size = 64
  c.train.num_negatives = 64
  c.train.learning_rate = 1e-2
  c.train.warmup_steps = 20
  c.train.num_steps = 300
  c.train.log_every = 50
  c.train.checkpoint_every = 100
  c.train.eval_every = 0
  c.eval.ks = (10, 20)
  c.eval.user_chunk = 512
  c.eval.item_chunk = 2048
  return c
