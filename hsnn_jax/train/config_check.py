"""Config validation that runs before any data is loaded or anything is compiled."""

from __future__ import annotations

import ml_collections

from hsnn_jax.models.two_tower import SCORES, USER_TOWERS
from hsnn_jax.train.losses import LOSSES
from hsnn_jax.train.tasks import MODEL_KINDS

OPTIMIZERS = ("adamw", "adam", "adagrad")
SCHEDULES = ("constant", "cosine")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError listing every bad field (dotted name, value, what was expected)."""
  errors = []

  def need(cond, field, value, expected):
    if not cond:
      errors.append(f"{field}={value!r}: {expected}")

  t, m, e = cfg.train, cfg.model, cfg.eval
  need(isinstance(cfg.dataset, str) and cfg.dataset, "dataset", cfg.dataset, "a dataset name")
  need(m.kind in MODEL_KINDS, "model.kind", m.kind, f"one of {MODEL_KINDS}")
  if m.kind == "two_tower":
    need(m.user_tower in USER_TOWERS, "model.user_tower", m.user_tower, f"one of {USER_TOWERS}")
    need(m.score in SCORES, "model.score", m.score, f"one of {SCORES}")
    need(m.embed_dim > 0, "model.embed_dim", m.embed_dim, "a positive int")
    need(m.temperature > 0, "model.temperature", m.temperature, "> 0")
    need(m.history_len > 0, "model.history_len", m.history_len, "a positive int")
  need(t.loss in LOSSES, "train.loss", t.loss, f"one of {LOSSES}")
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
  need(len(e.ks) > 0 and all(isinstance(k, int) and k > 0 for k in e.ks), "eval.ks", e.ks,
       "positive ints")
  need(e.split in ("test", "valid"), "eval.split", e.split, "'test' or 'valid'")
  need(e.selection_metric.split("@")[0] in ("recall", "ndcg", "hr", "mrr"),
       "eval.selection_metric", e.selection_metric, "e.g. 'recall@20'")
  for f in ("user_chunk", "item_chunk"):
    need(e[f] > 0, f"eval.{f}", e[f], "a positive int")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))
