"""Tiny synthetic run: about a minute on one CPU, checkpoints every few steps.

  python -m experiments.train --config=experiments/configs/tiny.py --workdir=/tmp/hsnn_tiny
"""

from experiments.configs.defaults import base_config


def get_config():
  c = base_config()
  c.dataset = "synthetic_tiny"
  c.model.embed_dim = 32
  c.model.history_len = 20
  c.train.batch_size = 256
  c.train.num_negatives = 256
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 20
  c.train.num_steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 100
  c.train.eval_every = 200
  c.train.patience = 3
  c.eval.ks = (10, 20)
  c.eval.user_chunk = 512
  c.eval.item_chunk = 4096
  return c
