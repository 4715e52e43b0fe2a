"""Amazon Beauty (S3-Rec 5-core, leave-one-out), two-tower with a causal-transformer user tower.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_two_tower.py --workdir=runs/beauty_two_tower

TIGER protocol: last item = test, second-last = validation; full-corpus Recall / NDCG @5, @10.
Early stopping on validation Recall@10; the best checkpoint is evaluated on test.
"""

from experiments.configs.defaults import base_config


def get_config():
  c = base_config()
  c.dataset = "beauty"
  c.model.user_tower = "sequence"
  c.model.item_attrs = True
  c.model.score = "cosine"
  c.model.temperature = 0.05
  c.model.embed_dim = 64
  c.model.history_len = 20  # Beauty sequences average ~9 items; 20 slots cover nearly all
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.dropout = 0.3
  # Every window position is a training target (SASRec-style), so a batch of 256 windows
  # carries ~2,000 next-item targets against 512 shared uniform negatives.
  c.train.batch_size = 256
  c.train.num_negatives = 512
  c.train.learning_rate = 2e-3
  c.train.weight_decay = 0.0
  c.train.num_steps = 6000
  c.train.log_every = 200
  c.train.checkpoint_every = 1000
  c.train.eval_every = 1000
  c.train.patience = 3
  c.eval.ks = (5, 10, 20)
  c.eval.selection_metric = "recall@10"
  return c
