"""Amazon Beauty (S3-Rec 5-core, leave-one-out): SASRec trained by full cross-entropy.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_sasrec.py --workdir=runs/beauty_sasrec

TIGER protocol: last item = test, second-last = validation; full-corpus Recall / NDCG @5, @10.
The two-tower's causal-transformer user tower (beauty_two_tower.py) with every window position
predicting its next item against the whole corpus (train.loss='full_softmax': 12,101 items, so
the softmax needs no sampling). Early stopping on validation Recall@10; the best checkpoint is
evaluated on test.
"""

from experiments.configs.beauty_two_tower import get_config as two_tower_config


def get_config():
  c = two_tower_config()
  c.model.history_len = 50  # SASRec's window on Beauty; 99% of sequences are shorter than 41
  c.train.loss = "full_softmax"
  c.train.num_negatives = 0
  # Users, each at its last training item: the window covers its sequence once per draw.
  c.train.sample_unit = "user"
  c.train.batch_size = 256
  # Windows are mostly padding (6.9 training items per user); score at most 2,304 positions
  # (a batch of 256 users holds ~1,750 on average).
  c.train.max_targets = 2304
  c.train.num_steps = 3000  # ~34 passes over the users
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  c.train.patience = 3
  return c
