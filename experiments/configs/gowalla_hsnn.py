"""Gowalla (LightGCN split), 2-level HSNN trained jointly with its index (JOIM).

  python -m experiments.prepare --dataset=gowalla --manual_dir=../shared/data/lightgcn/gowalla
  python -m experiments.train --config=experiments/configs/gowalla_hsnn.py --workdir=runs/gowalla_hsnn
  python -m experiments.train --config=experiments/configs/gowalla_hsnn.py:accelerator --workdir=runs/gowalla_hsnn_acc

Gowalla has no item attributes: the I2IF keys are the items' index nodes, refreshed from the
codes every model.index.refresh_every steps, so the 'accelerator' preset (unlike
gowalla_monn_small.py's) keeps the interaction tower; the 'cpu' preset drops it for cost. The
item level trains alone first, then residual k-means on its
item embeddings initialises the codebooks and everything trains jointly (on planted clusters,
building the index at step 0 from untrained embeddings collapsed to 3 of 8 nodes; see
task_hsnn.py). results.json gets index_health per level (the issue's bar: no node above 4x the
mean items at the end of JOIM), the metrics of the exhaustively scored ensemble and, with
eval.beam_widths, those of beam search through the learned index.
Other index modes: --config.model.index.mode=sil (or em, with --config.model.index.em_every).

Presets:
  'cpu' (default): index 32 x 16 = 512 leaves (about 80 of the 40,981 items per leaf when
        balanced); item level monn_small_lite, levels monn_medium_lite and monn_small_lite
        (monn.py's public-data sizes) without interaction towers, each level scored once per
        (user, node) (model.level_scoring='nodes'); gowalla_monn_small's 256 x (256 + 512)
        candidates; built at step 2,000 of 6,000; beam search 8 x 64 with at most 4,096 items
        scored per query.
  'warm': the 'cpu' preset with the item level a residual over the frozen two-tower of
        gowalla_two_tower.py (gowalla_monn_small.py's 'warm'); the index levels are unchanged.
  'accelerator': Table 5's monn_small item level, monn_medium / monn_small levels on every
        (user, candidate) pair, index 64 x 16 = 1024 leaves, built at step 2,000 of 12,000.
"""

from experiments.configs import gowalla_monn_small
from hsnn_jax.train import task_hsnn


def get_config(preset: str = "cpu"):
  c = gowalla_monn_small.get_config(preset)
  c.model = task_hsnn.default_model_config(history="full")  # monn_medium / monn_small levels
  c.model.index.mode = "joim"
  c.model.index.start_step = 2000
  c.model.index.index_loss_warmup_steps = 500
  c.model.index.kmeans_iters = 20
  c.model.index.balance_window = 8
  if preset == "accelerator":
    c.model.index.nodes_per_level = (64, 16)
    return c
  c.model.item_model = "monn_small_lite"
  c.model.level_models = ("monn_medium_lite", "monn_small_lite")
  c.model.overrides.num_embed_ui = 0  # as gowalla_monn_small's cpu preset: no interaction tower
  c.model.level_scoring = "nodes"
  c.model.index.nodes_per_level = (32, 16)
  c.eval.beam_widths = (8, 64)
  c.eval.beam_max_items = 4096
  if preset == "warm":
    gowalla_monn_small.warm(c)
  return c
