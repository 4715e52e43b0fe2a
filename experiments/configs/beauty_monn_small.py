"""Amazon Beauty (S3-Rec 5-core, leave-one-out), MoNN Small with category / brand I2IF keys.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_monn_small.py --workdir=runs/beauty_monn_small

TIGER protocol: last item = test, second-last = validation; full-corpus Recall / NDCG @5, @10.
The user tower reads the items before the label ('causal' history); item attributes
(Beauty_item2attributes.json) are the I2IF keys, so the interaction tower sees the share of the
user's history in each of the candidate's categories and brand. Early stopping on validation
Recall@10; the best checkpoint is evaluated on test.
"""

from experiments.configs.defaults import base_config
from hsnn_jax.train import task_monn


def get_config():
  c = base_config()
  c.dataset = "beauty"
  c.model = task_monn.default_model_config()
  c.model.preset = "monn_small"
  c.model.history = "causal"
  c.model.history_len = 50
  c.model.item_attrs = True
  c.train.batch_size = 512
  c.train.num_negatives = 1024
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 200
  c.train.num_steps = 8000
  c.train.log_every = 200
  c.train.checkpoint_every = 1000
  c.train.eval_every = 1000
  c.train.patience = 3
  c.eval.ks = (5, 10, 20)
  c.eval.selection_metric = "recall@10"
  c.eval.user_chunk = 256
  c.eval.item_chunk = 8192
  return c
