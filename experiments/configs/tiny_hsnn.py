"""Tiny HSNN (JOIM) on the planted synthetic corpus: about a minute on a CPU.

  python -m experiments.train --config=experiments/configs/tiny_hsnn.py --workdir=/tmp/hsnn_tiny_hsnn

synthetic_tiny has 2,000 items in a planted 8 x 8 tree, so the index has 8 x 8 nodes (about 31
items per leaf node when balanced). Level MoNNs (monn_medium, monn_small) and the item-level
monn_small keep their Table 5 embedding counts with every width cut down for a CPU.
results.json gets index_health per level and index_recovery (NMI / purity against the planted
tree) besides the ranking metrics of the exhaustively scored ensemble.
"""

from experiments.configs.defaults import base_config
from hsnn_jax.train import task_hsnn

# Every MoNN's widths, shrunk for a CPU run (the embedding counts stay the presets').
TINY_MONN = dict(dim_user=16, dim_item=16, dim_ui=16, field_dim=16, user_mlp=(64,),
                 item_mlp=(32,), ui_mlp=(), afm_attention_dim=8, overarch_dim=16,
                 overarch_tokens=2, overarch_token_dim=16)


def get_config():
  c = base_config()
  c.dataset = "synthetic_tiny"
  c.model = task_hsnn.default_model_config()
  c.model.overrides.update(TINY_MONN)
  c.model.history_len = 20
  c.model.embed_dim = 16
  c.model.index.nodes_per_level = (8, 8)
  c.model.index.start_step = 150  # the item level warms up first (see task_hsnn.py)
  c.model.index.index_loss_warmup_steps = 50
  c.model.index.kmeans_iters = 10
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
