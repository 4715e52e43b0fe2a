"""The 'hsnn' task: HSNN with its learned index, trained by the Eq. 4 loss (METHOD.md §2-3).

Where each part lives:
  the loss          hsnn_loss.py: Eq. 4 as a pure function of the model's outputs;
  the index         index/lifecycle.py: build, EM re-clustering, JOIM code refresh, node keys
                    (the only place where the index modes differ);
  serving           hsnn_serving.py: the published index, the exhaustive ensemble scorer and
                    the hierarchy beam search walks;
  the model         models/hsnn.py.
This module binds them to a config and a dataset (`HSNNTask`) and registers the kind.

Balance [ours]: the regularizer pools the soft assignments of the S uniform negatives (a uniform
sample of the corpus, so it balances items per node, what index health reports; all C rows when
S = 0) over the last W batches (the BalanceWindows of the index state). By default
(`balance_over='nodes'`) it balances the code prefixes, the index's nodes, through the product of
the levels' soft assignments: with per-level codeword balance a shared level-1 codebook can be
balanced overall while some parents' children hold most items.

JOIM's index is built from the item embeddings at `model.index.start_step`; `start_step = 0`
builds it at init from untrained embeddings, which on planted clusters collapsed to 3 of 8
nodes, so the shipped configs let the item level warm up first [ours]. alpha(t) =
alpha_schedule(t - built, num_steps - built).

I2IF keys: the dataset's item attributes when present (and `model.item_attrs`); otherwise the
item's index nodes (index/lifecycle.py), -1 before the index is built.

Warm start [ours]: with `model.base_workdir`, the item level's logits are a residual over a
frozen trained two-tower's (task.py FrozenBase), everywhere the item level is read: its loss,
the ensemble, exhaustive scoring and the beam search's item stage. The index levels, the item
embeddings the index quantizes and the index life cycle are unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hsnn_jax.chunking import map_in_chunks
from hsnn_jax.data.types import RecDataset
from hsnn_jax.index import balance as balance_lib
from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.lifecycle import IndexLifecycle, IndexState
from hsnn_jax.index.residual_quantizer import prefix_softs
from hsnn_jax.index.schedule import alpha_schedule
from hsnn_jax.models import hsnn
from hsnn_jax.models.hsnn import LEVEL_SCORING
from hsnn_jax.models.monn import PRESET_NAMES, zero_output
from hsnn_jax.train import hsnn_serving, losses
from hsnn_jax.train.hsnn_loss import HSNNLossWeights, distillation_loss, ema, hsnn_loss
from hsnn_jax.train.sampler import Batch, DeviceInteractions
from hsnn_jax.train.task import (Checks, FrozenBase, ModelKind, RetrievalTask, add_base_fields,
                                 base_config_errors, item_keys_array, sampled_loss,
                                 user_side_params)
from hsnn_jax.train.task_monn import HISTORY_MODES, monn_config, override_errors

EVAL_SCORERS = ("ensemble", "item")
BALANCE_OVER = ("nodes", "codewords")


def default_model_config(**fields) -> ml_collections.ConfigDict:
  """The `config.model` section of an 'hsnn' run (2 index levels + the item level), with
  `fields` set over the defaults."""
  m = ml_collections.ConfigDict()
  m.kind = "hsnn"
  m.item_model = "monn_small"  # preset of the item-level MoNN
  m.level_models = ("monn_medium", "monn_small")  # preset per index level, coarsest first
  m.overrides = ml_collections.ConfigDict()  # MoNNConfig fields applied to every MoNN
  m.history = "full"  # 'full' (CF) or 'causal' (sequential)
  m.history_len = 50
  m.item_attrs = True
  m.max_item_keys = 0
  m.node_key_limit = 65536  # attribute-free data: levels with more possible nodes give no key
  m.embed_dim = 32  # d of the item embedding the index quantizes (unit norm)
  # 'pairs': each level's MoNN on every (user, candidate) pair; 'nodes': once per (user, node),
  # then the expected score under each candidate's soft assignment (hsnn.HSNNConfig)
  m.level_scoring = "pairs"
  m.embed_temperature = 0.1  # <u, v> / temperature in the embedding loss
  m.embedding_loss_weight = 1.0
  m.level_loss_weights = ()  # one per index level; () = all 1
  m.interaction_mse_weight = 0.1
  m.ensemble_loss_weight = 1.0
  m.distill_weight = 0.0  # > 0: distil every level toward an EMA teacher's item-level logits
  m.distill_temperature = 1.0
  m.ema_decay = 0.999
  m.eval_scorer = "ensemble"
  m.balance_over = "nodes"  # 'nodes': code prefixes (items per node); 'codewords': per level
  m.index = ml_collections.ConfigDict(dataclasses.asdict(IndexConfig()))  # incl. its schedule
  add_base_fields(m)  # a frozen base under the item level (warm start)
  m.update(fields)
  return m


def index_config(m: ml_collections.ConfigDict) -> IndexConfig:
  fields = m.index.to_dict()
  fields["nodes_per_level"] = tuple(fields["nodes_per_level"])
  return IndexConfig(**fields)


def hsnn_config(m: ml_collections.ConfigDict) -> hsnn.HSNNConfig:
  return hsnn.HSNNConfig(
      item_model=monn_config(m.item_model, m.overrides, num_tasks=1),
      level_models=tuple(monn_config(p, m.overrides, num_tasks=1) for p in m.level_models),
      index=index_config(m), embed_dim=m.embed_dim, level_scoring=m.level_scoring).validate()


def balance_widths(m: ml_collections.ConfigDict) -> Tuple[int, ...]:
  """Columns of each level's balance window: nodes (prefixes) or codewords."""
  nodes = tuple(m.index.nodes_per_level)
  return tuple(int(k) for k in np.cumprod(nodes)) if m.balance_over == "nodes" else nodes


def uses_attribute_keys(m: ml_collections.ConfigDict, ds: RecDataset) -> bool:
  return bool(m.item_attrs) and ds.item_attrs is not None


def index_lifecycle(cfg: ml_collections.ConfigDict, ds: RecDataset) -> IndexLifecycle:
  m = cfg.model
  return IndexLifecycle(index_config(m), balance_widths(m), seed=cfg.seed,
                        node_key_limit=None if uses_attribute_keys(m, ds) else m.node_key_limit)


def initial_item_keys(cfg: ml_collections.ConfigDict, ds: RecDataset) -> Tuple[np.ndarray, int]:
  """([V, A] int32 keys before the index exists, num_keys): attributes, or empty node keys."""
  if uses_attribute_keys(cfg.model, ds):
    return item_keys_array(ds, cfg.model.max_item_keys), ds.num_attrs
  return index_lifecycle(cfg, ds).initial_keys(ds.num_items)


def hsnn_model(cfg: ml_collections.ConfigDict, ds: RecDataset, item_keys) -> hsnn.HSNN:
  """The HSNN of `cfg` on `ds` with the given I2IF keys [V, A] (may be traced)."""
  return hsnn.HSNN(hsnn_config(cfg.model), item_keys=item_keys,
                   num_keys=initial_item_keys(cfg, ds)[1], num_users=ds.num_users,
                   user_feature_sizes=tuple(int(s) for s in ds.user_feature_sizes))


@flax.struct.dataclass
class HSNNAux:
  """Non-trainable state: the index (IndexState), the EMA teacher of params['item_model']
  (`()` without distillation) and the frozen base's parameters (`()` without a base)."""

  index: IndexState
  teacher: Any
  base: Any = ()


class HSNNTask:
  """The HSNN model, its index life cycle and its loss, bound to one config and dataset."""

  def __init__(self, cfg: ml_collections.ConfigDict, ds: RecDataset,
               base: Optional[FrozenBase] = None):
    self.cfg, self.ds, self.m, self.base = cfg, ds, cfg.model, base
    if base is not None:
      base.check_compatible(self.m.history, self.m.history_len, self.m.base_workdir)
    self.lifecycle = index_lifecycle(cfg, ds)
    self.weights = HSNNLossWeights.from_config(self.m, self.lifecycle.config)
    self.initial_keys = initial_item_keys(cfg, ds)[0]
    self.chunk = max(1, min(cfg.eval.item_chunk, ds.num_items))
    self._embed_chunk = jax.jit(lambda params, keys, ids: self.model(keys).apply(
        {"params": params}, ids, method=hsnn.HSNN.embed_and_code))

  def model(self, item_keys) -> hsnn.HSNN:
    return hsnn_model(self.cfg, self.ds, item_keys)

  def embed_and_code(self, params, index: IndexState) -> Tuple[np.ndarray, np.ndarray]:
    """All items: embeddings [V, d] float32 and hard codes [V, L] int32 (NumPy)."""
    return map_in_chunks(lambda rows: self._embed_chunk(params, index.item_keys, jnp.asarray(rows)),
                         self.ds.num_items, self.chunk)

  def init(self, key, batch: Batch):
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    # One compiled init instead of thousands of eager ops (it was 10x slower on CPU).
    params = jax.jit(self.model(jnp.asarray(self.initial_keys)).init)(
        key, batch.users, candidates)["params"]
    base = ()
    if self.base is not None:  # the item level starts exactly at its base
      params = {**params, "item_model": zero_output(params["item_model"])}
      base = self.base.params
    index = self.lifecycle.initial_state(self.ds.num_items, self.initial_keys)
    teacher = jax.tree.map(jnp.copy, params["item_model"]) if self.m.distill_weight > 0 else ()
    return self.update_index(0, params, HSNNAux(index=index, teacher=teacher, base=base))

  def next_event(self, step: int, aux: HSNNAux):
    return self.lifecycle.next_event(step, aux.index)

  def update_index(self, step: int, params, aux: HSNNAux):
    """Host-side, after `step`: the index event due then, if any (index/lifecycle.py)."""
    quantizer, index = self.lifecycle.update(step, params["quantizer"], aux.index, params,
                                             lambda p, state: self.embed_and_code(p, state))
    if index is aux.index:
      return params, aux
    return {**params, "quantizer": quantizer}, aux.replace(index=index)

  def loss(self, params, aux: HSNNAux, batch: Batch, key, data: DeviceInteractions, step):
    del key
    m, t, index = self.m, self.cfg.train, aux.index
    ic = self.lifecycle.config
    model = self.model(index.item_keys)
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    alpha = alpha_schedule(step - index.built_at, t.num_steps - index.built_at, ic.max_alpha,
                           ic.alpha_exponent, ic.min_alpha)
    base_logits = (None if self.base is None else
                   self.base.pair_logits(aux.base, batch.users, candidates))
    out = model.apply({"params": params}, batch.users, candidates, alpha,
                      self.lifecycle.fixed_codes(index, candidates), base_logits,
                      method=hsnn.HSNN.train_outputs)
    rows = slice(batch.positives.shape[0], None) if batch.negatives.shape[0] else slice(None)
    softs = [soft[rows] for soft in out.quantized.soft]
    balance, windows = balance_lib.balance_loss_and_update(
        index.windows, prefix_softs(softs) if m.balance_over == "nodes" else softs)
    total, metrics = hsnn_loss(out, lambda logits: sampled_loss(logits, batch, data, t),
                               self.weights, step, index.built_at, balance)
    metrics["alpha"] = alpha
    teacher = aux.teacher
    if m.distill_weight > 0:
      teacher_logits = hsnn.item_level_module(model).apply(
          {"params": aux.teacher}, batch.users, candidates)[..., 0]
      students = [out.item_logits[..., 0]] + [logits[..., 0] for logits in out.level_logits]
      distillation = distillation_loss(students, teacher_logits,
                                       losses.candidate_mask(batch.positives, candidates),
                                       m.distill_temperature)
      total = total + m.distill_weight * distillation
      metrics["distillation"] = distillation
      teacher = ema(aux.teacher, params["item_model"], m.ema_decay)
    windows = jax.tree.map(lambda new, old: jnp.where(index.built, new, old), windows,
                           index.windows)
    metrics["loss"] = total
    return total, (metrics, aux.replace(index=index.replace(windows=windows), teacher=teacher))

  def serving(self, params, aux: HSNNAux) -> hsnn_serving.HSNNServing:
    return hsnn_serving.HSNNServing(self.model(aux.index.item_keys), params, aux.index.codes,
                                    lambda: self.embed_and_code(params, aux.index)[0],
                                    history_len=self.m.history_len, num_items=self.ds.num_items,
                                    chunk=self.chunk, eval_scorer=self.m.eval_scorer,
                                    with_base=self.with_base(aux))

  def with_base(self, aux: HSNNAux):
    """Scorer -> the Scorer plus the frozen base's (the identity without a base)."""
    if self.base is None:
      return lambda scorer: scorer
    return lambda scorer: self.base.add_to(scorer, aux.base)

  def item_level_scorer(self, aux: HSNNAux):
    """params -> the item level's Scorer (with the base, if any), differentiable in params
    (test-time training)."""
    model, with_base = self.model(aux.index.item_keys), self.with_base(aux)
    return lambda params: with_base(hsnn.item_scorer(model, params, self.m.history_len))

  def task(self) -> RetrievalTask:
    return RetrievalTask(
        init=self.init, loss=self.loss, history=self.m.history, history_len=self.m.history_len,
        scorer=lambda params, aux: self.serving(params, aux).scorer(),
        between_chunks=self.update_index, next_event=self.next_event,
        report=lambda params, aux: hsnn_serving.report(
            params, aux.index, self.lifecycle.config.nodes_per_level, self.ds),
        export=lambda params, aux, workdir: self.serving(params, aux).export(workdir),
        hierarchy=lambda params, aux: self.serving(params, aux).hierarchy(),
        differentiable_scorer=self.item_level_scorer, has_own_index=True,
        is_user_param=user_side_params(hsnn.USER_SIDE_PARAMS))


def build(cfg: ml_collections.ConfigDict, ds: RecDataset,
          base: Optional[FrozenBase] = None) -> RetrievalTask:
  return HSNNTask(cfg, ds, base).task()


def config_errors(cfg: ml_collections.ConfigDict) -> list:
  """Every bad field of the 'hsnn' model section (with its index) and its cross-field rules."""
  m, t, check = cfg.model, cfg.train, Checks()
  need = check.need
  need(m.history in HISTORY_MODES, "model.history", m.history, f"one of {HISTORY_MODES}")
  need(isinstance(m.history_len, int) and m.history_len > 0, "model.history_len", m.history_len,
       "a positive int")
  check.errors += override_errors(m.overrides, [m.item_model, *m.level_models])
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
  need(m.balance_over in BALANCE_OVER, "model.balance_over", m.balance_over,
       f"one of {BALANCE_OVER}")
  need(m.level_scoring in LEVEL_SCORING, "model.level_scoring", m.level_scoring,
       f"one of {LEVEL_SCORING}")
  if cfg.eval.beam_widths:
    need(len(cfg.eval.beam_widths) == num_levels, "eval.beam_widths", cfg.eval.beam_widths,
         f"one width per index level ({num_levels}, from model.index.nodes_per_level)")
  return check.errors + _index_errors(m.index, t) + base_config_errors(m)


def _index_errors(index: ml_collections.ConfigDict, t: ml_collections.ConfigDict) -> list:
  """Every bad model.index field: IndexConfig fields one at a time, then the cross-field rules."""
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in index.to_dict().items()}
  known = {f.name for f in dataclasses.fields(IndexConfig)}
  errors = [f"model.index.{k}={v!r}: not an IndexConfig field" for k, v in values.items()
            if k not in known]
  for k, v in values.items():
    if k in known:
      try:
        IndexConfig(**{k: v}).validate()
      except (ValueError, TypeError) as err:
        errors.append(f"model.index.{k}={v!r}: {err}")
  if not errors:
    try:
      IndexConfig(**values).validate()
    except (ValueError, TypeError) as err:
      errors.append(f"model.index: {err}")
  mode, start = values.get("mode"), values.get("start_step")
  if isinstance(start, int) and not start < t.num_steps:
    errors.append(f"model.index.start_step={start!r}: an int in [0, train.num_steps)")
  elif mode in ("sil", "em") and start == 0:
    errors.append(f"model.index.start_step=0: mode {mode!r} clusters a trained item model, "
                  "so the index must be built after step 0")
  if mode in ("sil", "em") and t.weight_decay > 0:
    errors.append(f"train.weight_decay={t.weight_decay!r}: must be 0 with a frozen index "
                  f"(mode {mode!r}): decoupled decay would move the frozen codebooks")
  return errors


KIND = ModelKind("hsnn", build, default_model_config, config_errors)
