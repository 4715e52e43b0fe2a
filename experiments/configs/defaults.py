"""Defaults shared by every config; each config file overrides what its experiment needs."""

import ml_collections

from hsnn_jax.train import task_two_tower


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.dataset = "synthetic_tiny"
  c.cache_dir = "./cache"
  c.seed = 0
  c.progress_bar = True
  c.data = ml_collections.ConfigDict()  # extra arguments for data preparation (see hsnn_jax/data/prepare.py)

  c.model = task_two_tower.default_model_config()  # each kind's defaults: its task module

  c.train = ml_collections.ConfigDict()
  # 'softmax' (sampled, in-batch + uniform negatives) | 'full_softmax' (every item; two-tower)
  # | 'bpr' | 'bce' | 'ccl'
  c.train.loss = "softmax"
  c.train.all_positions = True  # sequence tower: every window position is a next-item target
  c.train.max_targets = 0  # full_softmax, sequence tower: > 0 scores at most this many positions
  c.train.logq_correction = True  # softmax only
  # loss 'ccl' (SimpleX cosine contrastive loss; two-tower with cosine scores only):
  c.train.ccl_margin = 0.9  # negatives with cosine above this are pushed away
  c.train.ccl_negative_weight = 150.0  # weight of the mean negative hinge
  c.train.ccl_negatives = "uniform"  # 'uniform' (the S sampled ones) | 'all' (+ in-batch)
  # softmax/ccl: weight each example by n_u^-power (n_u = its user's training pairs);
  # 1.0 weighs users equally instead of pairs. Needs pairs grouped by user (the CSR order).
  c.train.user_weight_power = 0.0
  # True: a user's own training items (its latest model.history_len) are never its negatives.
  c.train.exclude_known_negatives = False
  c.train.batch_size = 1024
  # 'pair': examples are training pairs; 'user': users, each at its last training pair (with a
  # causal history and all_positions, one pass over each whole sequence; hsnn_jax/train/sampler.py)
  c.train.sample_unit = "pair"
  c.train.num_negatives = 1024
  c.train.optimizer = "adamw"
  c.train.learning_rate = 1e-3
  c.train.weight_decay = 0.0
  c.train.schedule = "cosine"
  c.train.warmup_steps = 100
  c.train.grad_clip = 0.0
  c.train.num_steps = 10_000
  c.train.max_sequence = 0  # > 0: keep only each user's latest max_sequence training items
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.eval_every = 0  # 0: no validation during training
  c.train.patience = 0  # validations without improvement before stopping; 0: never stop early
  c.train.eval_start = 0  # no validation (nor early stopping, best checkpoint) before this step
  c.train.inject_nan_at_step = -1  # fault injection for tests of the NaN guard
  # 'global': the batch drawn from the key, split over mesh.data (same trajectory on any mesh);
  # 'per_shard': each data shard draws its part from fold_in(key, shard) (hsnn_jax/train/sharded_sampler.py).
  c.train.sampling = "global"

  c.mesh = ml_collections.ConfigDict()  # the ('data', 'model') device mesh, hsnn_jax/parallel
  c.mesh.data = 0  # batch split this many ways; 0: every device not used by 'model'
  c.mesh.model = 1  # large embedding tables (rows) split this many ways
  c.mesh.shard_min_rows = 1024  # tables with fewer rows (or not divisible) stay replicated

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (10, 20, 50)
  c.eval.split = "test"
  c.eval.selection_metric = "recall@20"
  c.eval.exclude_train = True
  # > 0: validation during training (early stopping) ranks a fixed sample of this many users;
  # the final evaluation always ranks every user of eval.split.
  c.eval.valid_users = 0
  # Models with their own index ('hsnn'): after the exhaustive test evaluation, beam search with
  # these widths (one per index level; () = skip) and at most beam_max_items items scored
  # (0: every item under the kept leaves); results.json gets 'beam_search' (metrics,
  # exactness@K against the exhaustive top-K, items scored, latency ratio).
  c.eval.beam_widths = ()
  c.eval.beam_max_items = 0
  c.eval.user_chunk = 1024
  c.eval.item_chunk = 16384
  c.eval.ne_negatives = 10  # held-out NE: uniform negatives per positive (hsnn_jax/eval/ne.py); 0 = skip
  return c
