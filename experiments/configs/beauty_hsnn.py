"""Amazon Beauty (S3-Rec 5-core, leave-one-out), 2-level HSNN trained jointly with its index.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_hsnn.py --workdir=runs/beauty_hsnn
  python -m experiments.train --config=experiments/configs/beauty_hsnn.py:accelerator --workdir=runs/beauty_hsnn_acc

The item level is beauty_monn_small.py's model (same preset, same batch), so the two runs compare
the item level alone with the full HSNN. I2IF keys are the item attributes (category, brand).
JOIM after a warm-up of the item level (see gowalla_hsnn.py); early stopping on validation
Recall@10 of the exhaustively scored ensemble.

Presets:
  'cpu' (default): index 16 x 16 = 256 leaves (about 47 of the 12,101 items per leaf when
        balanced); the public-data sizes of monn.py: item level monn_small_lite, levels
        monn_medium_lite (16 nodes) and monn_small_lite (256 leaves), each scored once
        per (user, node) and given to the candidates as the expected node score under their soft
        assignment (model.level_scoring='nodes'); the index is built at step 1,000 of 3,000;
        after the exhaustive test evaluation, beam search keeping 4 of 16 coarse nodes and 32
        of 256 leaves, at most 2,048 items scored (results.json 'beam_search': metrics,
        exactness, items scored, latency).
        Validation (early stopping, best checkpoint) starts at step 1,500 (3,000 for
        'accelerator'), so the best checkpoint has its index in place.
  'warm': the 'cpu' preset with the item level a residual over the frozen SASRec of
        beauty_sasrec.py (beauty_monn_small.py's 'warm'); the index levels are unchanged.
  'accelerator': Table 5's monn_small item level, monn_medium / monn_small levels, index
        32 x 16 = 512 leaves, the levels on every (user, candidate) pair
        (level_scoring='pairs'), built at step 2,000 of 6,000 (beauty_monn_small's sizes).
"""

from experiments.configs import beauty_monn_small
from hsnn_jax.train import task_hsnn


def get_config(preset: str = "cpu"):
  c = beauty_monn_small.get_config(preset)
  history_len = c.model.history_len
  c.model = task_hsnn.default_model_config(history="causal", item_attrs=True,
                                           history_len=history_len)
  c.model.index.mode = "joim"
  c.model.index.kmeans_iters = 20
  if preset == "accelerator":
    c.model.index.nodes_per_level = (32, 16)
    c.model.index.start_step = 2000
    c.model.index.index_loss_warmup_steps = 500
    c.train.eval_start = 3000
    return c
  c.model.item_model = "monn_small_lite"
  c.model.level_models = ("monn_medium_lite", "monn_small_lite")
  c.model.level_scoring = "nodes"
  c.model.index.nodes_per_level = (16, 16)
  c.model.index.start_step = 1000
  c.model.index.index_loss_warmup_steps = 300
  c.train.eval_start = 1500  # the best checkpoint is one with the index in place
  c.eval.beam_widths = (4, 32)
  c.eval.beam_max_items = 2048  # a fixed item budget: leaves are uneven, padding is not free
  if preset == "warm":
    beauty_monn_small.warm(c)
  return c
