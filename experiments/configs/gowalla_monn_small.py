"""Gowalla (LightGCN split), MoNN Small (HSNN Table 5: u 8x40, i 1x40, ui 1x40).

  python -m experiments.prepare --dataset=gowalla --manual_dir=../shared/data/lightgcn/gowalla
  python -m experiments.train --config=experiments/configs/gowalla_monn_small.py --workdir=runs/gowalla_monn_small

Full-corpus Recall@20 / NDCG@20 on test.txt, training items excluded (LightGCN protocol), the
same sampled softmax as gowalla_two_tower.py. Gowalla has no item attributes, so the I2IF
features are empty and the interaction tower sees zeros (see task_monn.py); the HSNN config
(gowalla_hsnn.py) uses its learned index nodes as keys instead. The user tower reads the
user's training items ('full' history). Sized for an accelerator: every (user, candidate)
pair of the 1024 x 2048 logits runs the OverArch and the interaction tower.
"""

from experiments.configs import gowalla_two_tower
from hsnn_jax.train import task_monn


def get_config():
  c = gowalla_two_tower.get_config()  # data, schedule, metrics
  c.model = task_monn.default_model_config(preset="monn_small", history="full")
  c.train.batch_size = 1024
  c.train.num_negatives = 1024
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 200
  c.eval.user_chunk = 256
  c.eval.item_chunk = 8192
  return c
