"""Gowalla (LightGCN split), 2-level HSNN trained jointly with its index (JOIM).

  python -m experiments.prepare --dataset=gowalla --manual_dir=../shared/data/lightgcn/gowalla
  python -m experiments.train --config=experiments/configs/gowalla_hsnn.py --workdir=runs/gowalla_hsnn

Levels: monn_medium on 64 coarse nodes, monn_small on 64 x 16 = 1024 leaf nodes (about 40 of
the 40,981 items per leaf when balanced), the item level monn_small (gowalla_monn_small.py's
model, so the two runs compare the item level alone with the full HSNN). Gowalla has no item
attributes: the I2IF keys are the items' index nodes, refreshed from the codes after every
chunk. The item level trains alone for the first 2000 steps, then residual k-means on its item
embeddings initialises the codebooks and everything trains jointly (on planted clusters,
building the index at step 0 from untrained embeddings collapsed to 3 of 8 nodes; see
task_hsnn.py). results.json gets index_health per level (the issue's bar: no node above 4x the
mean items at the end of JOIM) and the metrics of the exhaustively scored ensemble.
Other index modes: --config.model.index.mode=sil (or em, with --config.model.index.em_every).
"""

from experiments.configs import gowalla_monn_small
from hsnn_jax.train import task_hsnn


def get_config():
  c = gowalla_monn_small.get_config()
  c.model = task_hsnn.default_model_config(history="full")  # monn_medium / monn_small levels
  c.model.index.nodes_per_level = (64, 16)
  c.model.index.mode = "joim"
  c.model.index.start_step = 2000
  c.model.index.index_loss_warmup_steps = 500
  c.model.index.kmeans_iters = 20
  c.model.index.balance_window = 8
  return c
