"""Amazon Beauty (S3-Rec 5-core, leave-one-out), MoNN Small with category / brand I2IF keys.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_monn_small.py --workdir=runs/beauty_monn_small

TIGER protocol: last item = test, second-last = validation; full-corpus Recall / NDCG @5, @10.
The user tower reads the items before the label ('causal' history); item attributes
(Beauty_item2attributes.json) are the I2IF keys, so the interaction tower sees the share of the
user's history in each of the candidate's categories and brand. Early stopping on validation
Recall@10; the best checkpoint is evaluated on test.
"""

from experiments.configs import beauty_two_tower
from hsnn_jax.train import task_monn


def get_config():
  c = beauty_two_tower.get_config()  # data, schedule, early stopping, metrics
  c.model = task_monn.default_model_config(preset="monn_small", history="causal", item_attrs=True)
  c.train.num_negatives = 1024
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 200
  c.eval.user_chunk = 256
  c.eval.item_chunk = 8192
  return c
