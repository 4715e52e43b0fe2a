"""Gowalla (LightGCN split), the strong base: LightGCN graph towers trained by full softmax.

  python -m experiments.prepare --dataset=gowalla --manual_dir=../shared/data/lightgcn/gowalla
  python -m experiments.train --config=experiments/configs/gowalla_lightgcn.py --workdir=runs/gowalla_lightgcn

Full-corpus Recall@20 / NDCG@20 on test.txt, training items excluded (LightGCN protocol).
Both towers are id embeddings propagated over the training graph (model.user_tower='lightgcn',
hsnn_jax/models/graph.py), scored by cosine / temperature. Each step samples batch_size training
pairs and trains their users on all of their training items at once against every other item
(train.loss='full_softmax'), so one step covers ~27 pairs per row.

Tuning runs use a validation slice carved from train.txt (never test.txt), in a cache of its own:
  python -m experiments.prepare --dataset=gowalla --manual_dir=../shared/data/lightgcn/gowalla \
      --cache_dir=./cache_valid --valid_fraction=0.1
  python -m experiments.train --config=experiments/configs/gowalla_lightgcn.py \
      --workdir=runs/tune --config.cache_dir=./cache_valid --config.eval.split=valid \
      --config.train.eval_every=250
"""

from experiments.configs.defaults import base_config


def get_config():
  c = base_config()
  c.dataset = "gowalla"
  c.model.user_tower = "lightgcn"
  c.model.graph_layers = 3
  c.model.score = "cosine"
  c.model.temperature = 0.1
  c.model.embed_dim = 64  # the published baselines' width
  c.train.loss = "full_softmax"
  c.train.batch_size = 1024
  c.train.num_negatives = 0  # full softmax: every item is a candidate
  c.train.learning_rate = 0.01
  c.train.warmup_steps = 50
  c.train.num_steps = 1500
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.eval.ks = (10, 20, 50)
  return c
