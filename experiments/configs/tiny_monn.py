"""Tiny MoNN on the planted synthetic corpus (a few minutes on a loaded 2-core CPU).

  python -m experiments.train --config=experiments/configs/tiny_monn.py --workdir=/tmp/hsnn_tiny_monn

monn_small with every width cut down for a CPU (the item level of tiny_hsnn.py, so the two runs
compare the item-level model alone with the full HSNN). synthetic_tiny has no item attributes:
the I2IF features are empty (see task_monn.py). MoNN towers learn more slowly than the
two-tower id embeddings, hence the higher learning rate than tiny.py.
"""

from experiments.configs.defaults import base_config
from hsnn_jax.train import task_monn

# Every MoNN's widths, shrunk for a CPU run (the embedding counts stay the presets').
TINY_MONN = dict(dim_user=16, dim_item=16, dim_ui=16, field_dim=16, user_mlp=(64,),
                 item_mlp=(32,), ui_mlp=(), afm_attention_dim=8, overarch_dim=16,
                 overarch_tokens=2, overarch_token_dim=16)


def tiny_schedule(c):
  """The data, training and evaluation settings shared by the tiny MoNN and HSNN runs."""
  c.dataset = "synthetic_tiny"
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


def get_config():
  c = base_config()
  c.model = task_monn.default_model_config()
  return tiny_schedule(c)
