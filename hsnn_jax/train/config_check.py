"""Config validation that runs before any data is loaded or anything is compiled."""

from __future__ import annotations

import ml_collections

from hsnn_jax.train.losses import CCL_NEGATIVES, LOSSES
from hsnn_jax.train.sampler import SAMPLE_UNITS
from hsnn_jax.train.task import Checks
from hsnn_jax.train.tasks import KINDS, MODEL_KINDS

OPTIMIZERS = ("adamw", "adam", "adagrad")
SCHEDULES = ("constant", "cosine")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError listing every bad field (dotted name, value, what was expected)."""
  check = Checks()
  need = check.need
  t, m, e = cfg.train, cfg.model, cfg.eval
  need(isinstance(cfg.dataset, str) and cfg.dataset, "dataset", cfg.dataset, "a dataset name")
  need(m.kind in MODEL_KINDS, "model.kind", m.kind, f"one of {MODEL_KINDS}")
  if m.kind in KINDS:
    check.errors += KINDS[m.kind].config_errors(cfg)
  need(t.loss in LOSSES, "train.loss", t.loss, f"one of {LOSSES}")
  need(-1 < t.ccl_margin < 1, "train.ccl_margin", t.ccl_margin, "in (-1, 1)")
  need(t.ccl_negative_weight >= 0, "train.ccl_negative_weight",
       t.ccl_negative_weight, ">= 0")
  need(t.ccl_negatives in CCL_NEGATIVES, "train.ccl_negatives",
       t.ccl_negatives, f"one of {CCL_NEGATIVES}")
  if t.loss == "ccl":
    need(m.kind == "two_tower" and m.score == "cosine" and m.user_tower != "sequence",
         "train.loss", t.loss, "'ccl' needs model.kind='two_tower', model.score='cosine' and a "
         "non-sequence user tower (it is a loss on cosines)")
    need(t.ccl_negatives != "uniform" or t.num_negatives > 0,
         "train.num_negatives", t.num_negatives, "> 0 with ccl_negatives='uniform'")
  if t.loss == "full_softmax":
    need(m.kind == "two_tower" and (m.user_tower != "sequence"
                                    or t.all_positions),
         "train.loss", t.loss, "'full_softmax' needs model.kind='two_tower' (a sequence tower "
         "with train.all_positions)")
  need(isinstance(t.max_targets, int) and t.max_targets >= 0, "train.max_targets", t.max_targets,
       "an int >= 0 (0: every window position)")
  need(0 <= t.user_weight_power <= 2, "train.user_weight_power",
       t.user_weight_power, "in [0, 2]")
  need(t.user_weight_power == 0 or t.loss in ("softmax", "ccl", "full_softmax"),
       "train.user_weight_power", t.user_weight_power,
       "0 unless train.loss is softmax, ccl or full_softmax")
  need(isinstance(t.exclude_known_negatives, bool), "train.exclude_known_negatives",
       t.exclude_known_negatives, "True or False")
  need(t.sample_unit in SAMPLE_UNITS, "train.sample_unit", t.sample_unit,
       f"one of {SAMPLE_UNITS}")
  need(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer, f"one of {OPTIMIZERS}")
  need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"one of {SCHEDULES}")
  for f in ("batch_size", "num_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
    need(isinstance(t[f], int) and t[f] > 0, f"train.{f}", t[f], "a positive int")
  need(t.num_negatives >= 0, "train.num_negatives", t.num_negatives, ">= 0")
  need(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "> 0")
  need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, ">= 0")
  need(0 <= t.warmup_steps < t.num_steps, "train.warmup_steps", t.warmup_steps, "in [0, num_steps)")
  need(t.eval_every >= 0, "train.eval_every", t.eval_every, ">= 0 (0: no validation)")
  need(t.patience >= 0, "train.patience", t.patience, ">= 0 (0: no early stopping)")
  need(isinstance(t.eval_start, int) and 0 <= t.eval_start <= t.num_steps, "train.eval_start",
       t.eval_start, "an int in [0, num_steps]")
  need(len(e.ks) > 0 and all(isinstance(k, int) and k > 0 for k in e.ks), "eval.ks", e.ks,
       "positive ints")
  need(e.split in ("test", "valid"), "eval.split", e.split, "'test' or 'valid'")
  need(e.selection_metric.split("@")[0] in ("recall", "ndcg", "hr", "mrr"),
       "eval.selection_metric", e.selection_metric, "e.g. 'recall@20'")
  for f in ("user_chunk", "item_chunk"):
    need(e[f] > 0, f"eval.{f}", e[f], "a positive int")
  need(all(isinstance(w, int) and w > 0 for w in e.beam_widths), "eval.beam_widths",
       e.beam_widths, "positive ints, one per index level")
  need(isinstance(e.beam_max_items, int) and e.beam_max_items >= 0, "eval.beam_max_items",
       e.beam_max_items, "an int >= 0")
  need(isinstance(e.valid_users, int) and e.valid_users >= 0, "eval.valid_users", e.valid_users,
       "an int >= 0 (0: every validation user)")
  need(e.ne_negatives >= 0, "eval.ne_negatives", e.ne_negatives,
       ">= 0 (0: no NE)")
  if check.errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(check.errors))

