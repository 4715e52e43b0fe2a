"""Amazon Beauty (S3-Rec 5-core, leave-one-out), 2-level HSNN trained jointly with its index.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_hsnn.py --workdir=runs/beauty_hsnn

Levels: monn_medium on 32 coarse nodes, monn_small on 32 x 16 = 512 leaf nodes (about 24 of the
12,101 items per leaf when balanced), the item level monn_small (beauty_monn_small.py's model).
I2IF keys are the item attributes (category, brand). JOIM after a 2000-step warm-up of the item
level (see gowalla_hsnn.py); early stopping on validation Recall@10 of the exhaustively scored
ensemble.
"""

from experiments.configs import beauty_monn_small
from hsnn_jax.train import task_hsnn


def get_config():
  c = beauty_monn_small.get_config()
  c.model = task_hsnn.default_model_config(history="causal", item_attrs=True)
  c.model.index.nodes_per_level = (32, 16)
  c.model.index.mode = "joim"
  c.model.index.start_step = 2000
  c.model.index.index_loss_warmup_steps = 500
  c.model.index.kmeans_iters = 20
  return c
