"""Config validation that runs before any data is loaded or anything is compiled."""

from __future__ import annotations

import dataclasses

import ml_collections

from hsnn_jax.index.config import IndexConfig
from hsnn_jax.models.hsnn import LEVEL_SCORING
from hsnn_jax.models.monn import PRESET_NAMES, MoNNConfig, monn_preset
from hsnn_jax.models.two_tower import HISTORY_PROJS, SCORES, USER_TOWERS
from hsnn_jax.train.losses import CCL_NEGATIVES, LOSSES
from hsnn_jax.train.sampler import SAMPLE_UNITS
from hsnn_jax.train.task_hsnn import BALANCE_OVER, EVAL_SCORERS, INDEX_SCHEDULE_FIELDS
from hsnn_jax.train.task_monn import HISTORY_MODES
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
    need(m.get("history_proj", "dense") in HISTORY_PROJS, "model.history_proj",
         m.get("history_proj"), f"one of {HISTORY_PROJS}")
    need(m.embed_dim > 0, "model.embed_dim", m.embed_dim, "a positive int")
    need(m.temperature > 0, "model.temperature", m.temperature, "> 0")
    need(m.history_len > 0, "model.history_len", m.history_len, "a positive int")
    need(isinstance(m.get("graph_layers", 3), int) and m.get("graph_layers", 3) >= 0,
         "model.graph_layers", m.get("graph_layers"), "an int >= 0 (lightgcn)")
  if m.kind in ("monn", "hsnn"):
    errors += _monn_family_errors(m, t)
  need(t.loss in LOSSES, "train.loss", t.loss, f"one of {LOSSES}")
  need(-1 < t.get("ccl_margin", 0.9) < 1, "train.ccl_margin", t.get("ccl_margin"), "in (-1, 1)")
  need(t.get("ccl_negative_weight", 150.0) >= 0, "train.ccl_negative_weight",
       t.get("ccl_negative_weight"), ">= 0")
  need(t.get("ccl_negatives", "uniform") in CCL_NEGATIVES, "train.ccl_negatives",
       t.get("ccl_negatives"), f"one of {CCL_NEGATIVES}")
  if t.loss == "ccl":
    need(m.kind == "two_tower" and m.get("score") == "cosine" and m.get("user_tower") != "sequence",
         "train.loss", t.loss, "'ccl' needs model.kind='two_tower', model.score='cosine' and a "
         "non-sequence user tower (it is a loss on cosines)")
    need(t.get("ccl_negatives", "uniform") != "uniform" or t.num_negatives > 0,
         "train.num_negatives", t.num_negatives, "> 0 with ccl_negatives='uniform'")
  if t.loss == "full_softmax":
    need(m.kind == "two_tower" and (m.get("user_tower") != "sequence"
                                    or t.get("all_positions", True)),
         "train.loss", t.loss, "'full_softmax' needs model.kind='two_tower' (a sequence tower "
         "with train.all_positions)")
  need(isinstance(t.max_targets, int) and t.max_targets >= 0, "train.max_targets", t.max_targets,
       "an int >= 0 (0: every window position)")
  need(0 <= t.get("user_weight_power", 0.0) <= 2, "train.user_weight_power",
       t.get("user_weight_power"), "in [0, 2]")
  need(t.get("user_weight_power", 0.0) == 0 or t.loss in ("softmax", "ccl", "full_softmax"),
       "train.user_weight_power", t.get("user_weight_power"),
       "0 unless train.loss is softmax, ccl or full_softmax")
  need(isinstance(t.get("exclude_known_negatives", False), bool), "train.exclude_known_negatives",
       t.get("exclude_known_negatives"), "True or False")
  need(t.get("sample_unit", "pair") in SAMPLE_UNITS, "train.sample_unit", t.get("sample_unit"),
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
  if m.kind == "hsnn" and e.beam_widths:
    levels = len(tuple(m.index.nodes_per_level))
    need(len(e.beam_widths) == levels, "eval.beam_widths", e.beam_widths,
         f"one width per index level ({levels}, from model.index.nodes_per_level)")
  need(isinstance(e.beam_max_items, int) and e.beam_max_items >= 0, "eval.beam_max_items",
       e.beam_max_items, "an int >= 0")
  need(isinstance(e.valid_users, int) and e.valid_users >= 0, "eval.valid_users", e.valid_users,
       "an int >= 0 (0: every validation user)")
  need(e.get("ne_negatives", 10) >= 0, "eval.ne_negatives", e.get("ne_negatives"),
       ">= 0 (0: no NE)")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def _override_errors(overrides, presets) -> list:
  """Errors of model.overrides over each preset it applies to: unknown fields; then, if a
  preset rejects the combination, every field it rejects alone (or the combination itself)."""
  known = {f.name for f in dataclasses.fields(MoNNConfig)}
  values = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  errors = [f"model.overrides.{k}={v!r}: not a MoNNConfig field" for k, v in values.items()
            if k not in known]
  if errors:
    return errors
  for preset in sorted(set(p for p in presets if p in PRESET_NAMES)):
    try:
      monn_preset(preset, **values)
      continue
    except (ValueError, TypeError) as err:
      combined = f"model.overrides with preset {preset!r}: {err}"
    alone = []
    for k, v in values.items():
      try:
        monn_preset(preset, **{k: v})
      except (ValueError, TypeError) as err:
        alone.append(f"model.overrides.{k}={v!r} (preset {preset!r}): {err}")
    errors += alone or [combined]
  return errors


def _index_errors(index, t) -> list:
  """Every bad model.index field: IndexConfig fields one at a time, then the schedule fields."""
  values = {k: v for k, v in index.to_dict().items() if k not in INDEX_SCHEDULE_FIELDS}
  known = {f.name for f in dataclasses.fields(IndexConfig)}
  errors = [f"model.index.{k}={v!r}: not an IndexConfig field" for k, v in values.items()
            if k not in known]
  for k, v in values.items():
    if k in known:
      try:
        IndexConfig(**{k: tuple(v) if isinstance(v, list) else v}).validate()
      except (ValueError, TypeError) as err:
        errors.append(f"model.index.{k}={v!r}: {err}")
  if not errors:
    try:
      IndexConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}).validate()
    except (ValueError, TypeError) as err:
      errors.append(f"model.index: {err}")
  mode, start = index.get("mode"), index.get("start_step", 0)
  if not (isinstance(start, int) and 0 <= start < t.num_steps):
    errors.append(f"model.index.start_step={start!r}: an int in [0, train.num_steps)")
  elif mode in ("sil", "em") and start == 0:
    errors.append(f"model.index.start_step=0: mode {mode!r} clusters a trained item model, "
                  "so the index must be built after step 0")
  if mode == "em" and not (isinstance(index.get("em_every"), int) and index.em_every > 0):
    errors.append(f"model.index.em_every={index.get('em_every')!r}: a positive int")
  if mode in ("sil", "em") and t.weight_decay > 0:
    errors.append(f"train.weight_decay={t.weight_decay!r}: must be 0 with a frozen index "
                  f"(mode {mode!r}): decoupled decay would move the frozen codebooks")
  return errors


def _monn_family_errors(m, t) -> list:
  """Errors of the 'monn' and 'hsnn' model sections (see task_monn / task_hsnn defaults)."""
  errors = []

  def need(cond, field, value, expected):
    if not cond:
      errors.append(f"{field}={value!r}: {expected}")

  need(m.get("history") in HISTORY_MODES, "model.history", m.get("history"),
       f"one of {HISTORY_MODES}")
  need(isinstance(m.history_len, int) and m.history_len > 0, "model.history_len", m.history_len,
       "a positive int")
  if m.kind == "monn":
    need(m.preset in PRESET_NAMES, "model.preset", m.preset, f"one of {PRESET_NAMES}")
    return errors + _override_errors(m.get("overrides", {}), [m.preset])
  errors += _override_errors(m.get("overrides", {}), [m.item_model, *m.level_models])
  need(m.item_model in PRESET_NAMES, "model.item_model", m.item_model, f"one of {PRESET_NAMES}")
  levels = tuple(m.level_models)
  for l, preset in enumerate(levels):
    need(preset in PRESET_NAMES, f"model.level_models[{l}]", preset, f"one of {PRESET_NAMES}")
  num_levels = len(tuple(m.index.nodes_per_level))
  need(len(levels) == num_levels, "model.level_models", levels,
       f"one preset per index level ({num_levels}, from model.index.nodes_per_level)")
  weights = tuple(m.level_loss_weights)
  need(not weights or (len(weights) == num_levels and all(w >= 0 for w in weights)),
       "model.level_loss_weights", weights, f"() or {num_levels} weights >= 0")
  for field in ("embedding_loss_weight", "interaction_mse_weight", "ensemble_loss_weight",
                "distill_weight"):
    need(m[field] >= 0, f"model.{field}", m[field], ">= 0")
  for field in ("embed_dim", "node_key_limit"):
    need(isinstance(m[field], int) and m[field] > 0, f"model.{field}", m[field], "a positive int")
  for field in ("embed_temperature", "distill_temperature"):
    need(m[field] > 0, f"model.{field}", m[field], "> 0")
  need(0 <= m.ema_decay < 1, "model.ema_decay", m.ema_decay, "in [0, 1)")
  need(m.eval_scorer in EVAL_SCORERS, "model.eval_scorer", m.eval_scorer,
       f"one of {EVAL_SCORERS}")
  need(m.get("balance_over") in BALANCE_OVER, "model.balance_over", m.get("balance_over"),
       f"one of {BALANCE_OVER}")
  need(m.level_scoring in LEVEL_SCORING, "model.level_scoring", m.level_scoring,
       f"one of {LEVEL_SCORING}")
  return errors + _index_errors(m.index, t)
