"""Tiny HSNN (JOIM) on the planted synthetic corpus (a few minutes on a loaded 2-core CPU).

  python -m experiments.train --config=experiments/configs/tiny_hsnn.py --workdir=/tmp/hsnn_tiny_hsnn

synthetic_tiny has 2,000 items in a planted 8 x 8 tree, so the index has 8 x 8 nodes (about 31
items per leaf node when balanced). Level MoNNs (monn_medium, monn_small) and the item-level
monn_small keep their Table 5 embedding counts with every width cut down for a CPU
(tiny_monn.TINY_MONN). The item level trains alone for 150 steps, then the index is built by
residual k-means and everything trains jointly. results.json gets index_health per level and
index_recovery (NMI / purity against the planted tree) besides the ranking metrics of the
exhaustively scored ensemble; the published index is written to <workdir>/index.npz.
"""

from experiments.configs.defaults import base_config
from experiments.configs.tiny_monn import tiny_schedule
from hsnn_jax.train import task_hsnn


def get_config():
  c = base_config()
  c.model = task_hsnn.default_model_config()
  c = tiny_schedule(c)
  c.model.embed_dim = 16
  c.model.index.nodes_per_level = (8, 8)
  c.model.index.start_step = 150
  c.model.index.index_loss_warmup_steps = 50
  c.model.index.kmeans_iters = 10
  return c
