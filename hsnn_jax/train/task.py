"""What the trainer needs from a model kind, and the pieces every kind shares.

A `RetrievalTask` binds a Flax module to a dataset and a loss, so one train loop serves the
two-tower baseline, MoNN and HSNN. A `ModelKind` is what one kind registers in tasks.py: its
name, its builder, the defaults of its `config.model` section and its config checks. Each kind
lives in its own module (task_two_tower.py, task_monn.py, task_hsnn.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hsnn_jax.data.types import RecDataset
from hsnn_jax.models.scorer import Scorer, UserBatch, add_scorers
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import Batch, DeviceInteractions


def _no_hook(step, params, aux):
  del step
  return params, aux


def _no_export(params, aux, workdir):
  del params, aux, workdir


def _never(step, aux):
  del step, aux


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
  """How the trainer drives one model kind.

  init(key, batch) -> (params, aux): trainable parameters and non-trainable state (e.g. the
    index state or an EMA teacher; `()` when there is none). Both are checkpointed.
  loss(params, aux, batch, key, data, step) -> (scalar, (metrics dict, new aux)); jitted.
  scorer(params, aux) -> Scorer, the retrieval view used for evaluation.
  between_chunks(step, params, aux) -> (params, aux): host-side work after training step
    `step` (e.g. an index event); the identity by default.
  next_event(step, aux) -> the first step > `step` where between_chunks has work, or None: the
    trainer ends a chunk there, so such work happens on exact steps whatever the log cadence.
  report(params, aux) -> dict merged into results.json (e.g. index health).
  export(params, aux, workdir) -> None: writes serving artifacts (e.g. the published index).
  hierarchy(params, aux) -> eval.hierarchical.Hierarchy, or None: the model's own index and
    stage scorers for beam search (HSNN); other models get a separately learned one.
  differentiable_scorer(aux) -> (params -> Scorer), differentiable in params: what test-time
    training fine-tunes; the evaluation scorer by default.
  has_own_index: whether the model learns its index (HSNN); test-time training then takes its
    nodes from the run's index.npz instead of clustering.
  is_user_param(key path) -> whether that parameter is read by the user side alone (what
    test-time training fine-tunes by default); see `user_side_params`.
  logits(params, users, candidates [C]) -> [B, C]: every (user, candidate) logit, deterministic;
    set by kinds that can serve as another run's frozen base (FrozenBase), else None.
  history: the sampler's history mode ('causal' | 'full' | 'none').
  """

  init: Callable[[jax.Array, Batch], Tuple[Any, Any]]
  loss: Callable[..., Tuple[jax.Array, Tuple[Dict[str, jax.Array], Any]]]
  scorer: Callable[[Any, Any], Scorer]
  history: str
  history_len: int
  between_chunks: Callable[[int, Any, Any], Tuple[Any, Any]] = _no_hook
  next_event: Callable[[int, Any], Optional[int]] = _never
  report: Callable[[Any, Any], dict] = lambda params, aux: {}
  export: Callable[[Any, Any, str], None] = _no_export
  hierarchy: Optional[Callable[[Any, Any], Any]] = None
  differentiable_scorer: Optional[Callable[[Any], Callable[[Any], Scorer]]] = None
  has_own_index: bool = False
  is_user_param: Callable[[Any], bool] = lambda path: False
  logits: Optional[Callable[[Any, UserBatch, jax.Array], jax.Array]] = None

  def scorer_of_params(self, aux) -> Callable[[Any], Scorer]:
    """params -> Scorer for test-time training (see differentiable_scorer)."""
    if self.differentiable_scorer is not None:
      return self.differentiable_scorer(aux)
    return lambda params: self.scorer(params, aux)


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """One model kind, as registered in tasks.py.

  build(config, dataset[, base]) -> RetrievalTask; kinds whose model section has
    `base_workdir` (add_base_fields) also take a FrozenBase.
  default_model_config(**fields) -> the kind's `config.model` section (its only defaults).
  config_errors(config) -> a list of "field=value: expected" strings (validated before any
    data loads, with the shared checks of config_check.py).
  """

  name: str
  build: Callable[[ml_collections.ConfigDict, RecDataset], RetrievalTask]
  default_model_config: Callable[..., ml_collections.ConfigDict]
  config_errors: Callable[[ml_collections.ConfigDict], List[str]]


@dataclasses.dataclass(frozen=True)
class FrozenBase:
  """A trained run whose logits a MoNN or HSNN item level learns a residual over (warm start,
  `model.base_workdir`): logit = own logit + weight * base logit, the base never updated.

  params: the base's parameters (the kind keeps them in its aux, so they are state passed to the
    jitted step, not constants compiled into it). logits / scorer: the base task's
    `RetrievalTask.logits` and `scorer(params) -> Scorer`. The base reads the last
    `history_len` items of the residual model's history ('none': it reads none).
  """

  params: Any
  logits: Callable[[Any, UserBatch, jax.Array], jax.Array]
  scorer: Callable[[Any], Scorer]
  history: str
  history_len: int
  weight: float

  def _users(self, users: UserBatch) -> UserBatch:
    if self.history == "none":
      return users
    return users.replace(history=users.history[:, -self.history_len:])

  def pair_logits(self, params, users: UserBatch, candidates: jax.Array) -> jax.Array:
    """[B, C] weighted base logits, with no gradient."""
    return self.weight * jax.lax.stop_gradient(self.logits(params, self._users(users), candidates))

  def add_to(self, scorer: Scorer, params) -> Scorer:
    """`scorer` plus the weighted base scorer (for evaluation and retrieval)."""
    base = self.scorer(params)
    encode = base.encode_users
    base = dataclasses.replace(base, encode_users=lambda users: encode(self._users(users)))
    return add_scorers(scorer, base, self.weight)

  def check_compatible(self, history: str, history_len: int, where: str) -> None:
    """Raises ValueError unless a model with this history can feed the base its own."""
    if self.history == "none":
      return
    if self.history != history or self.history_len > history_len:
      raise ValueError(
          f"model.base_workdir={where!r}: its model reads a {self.history!r} history of "
          f"{self.history_len} items, this run's model a {history!r} history of {history_len}; "
          f"set model.history={self.history!r} and model.history_len >= {self.history_len}")


def add_base_fields(m: ml_collections.ConfigDict) -> None:
  """The warm-start fields of a `config.model` section whose kind takes a FrozenBase."""
  m.base_workdir = ""  # a trained two-tower run: learn a residual over its logits [ours]
  m.base_weight = 1.0  # logit = own logit + base_weight * base logit


def base_config_errors(m: ml_collections.ConfigDict) -> List[str]:
  """Checks of model.base_workdir / base_weight (kinds that accept a FrozenBase)."""
  check = Checks()
  if m.base_workdir:
    path = os.path.join(m.base_workdir, "config.json")
    check.need(os.path.isfile(path), "model.base_workdir", m.base_workdir,
               f"a finished run's directory (no {path})")
    check.need(m.base_weight > 0, "model.base_weight", m.base_weight, "> 0")
  return check.errors


class Checks:
  """Collects config errors: `need(condition, field, value, expected)`; `errors` at the end."""

  def __init__(self):
    self.errors: List[str] = []

  def need(self, condition, field: str, value, expected: str) -> None:
    if not condition:
      self.errors.append(f"{field}={value!r}: {expected}")


def user_side_params(names: frozenset, pattern: Optional[str] = None) -> Callable[[Any], bool]:
  """A predicate on parameter key paths: true when a path component is one of `names` (or
  matches `pattern` in full)."""
  compiled = re.compile(pattern) if pattern else None

  def is_user_param(path) -> bool:
    parts = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return any(p in names or (compiled is not None and compiled.fullmatch(p)) for p in parts)

  return is_user_param


def item_keys_array(ds: RecDataset, max_keys: int = 0) -> np.ndarray | None:
  """[num_items, A] int32 attribute keys, -1 padded (None when the dataset has no attributes)."""
  if ds.item_attrs is None:
    return None
  keys, _ = ds.item_attrs.to_padded(max_keys or None, pad=-1, keep="first")
  return keys


def sampled_loss(logits: jax.Array, batch: Batch, data: DeviceInteractions,
                 train: ml_collections.ConfigDict) -> jax.Array:
  """The configured retrieval loss of logits [B, B + S] over the batch's candidates."""
  candidates = jnp.concatenate([batch.positives, batch.negatives])
  logq = (losses.logq_offsets(batch.positives, batch.negatives, data.item_logq, data.num_items)
          if train.logq_correction else None)
  return losses.retrieval_loss(logits, batch.positives, candidates, kind=train.loss, logq=logq,
                               weights=row_weights(batch, data, train),
                               known=known_mask(batch, candidates, data, train))


def known_mask(batch: Batch, candidates, data: DeviceInteractions,
               train: ml_collections.ConfigDict):
  """[B, C] bool: candidates among the row user's training items (its latest history_len), when
  train.exclude_known_negatives; else None. Ranking excludes training items, so they need not
  be pushed below the positive either."""
  if not train.exclude_known_negatives:
    return None
  return losses.known_candidates(data.recent[batch.users.user], candidates)


def row_weights(batch: Batch, data: DeviceInteractions, train: ml_collections.ConfigDict):
  """[B] per-example weights from train.user_weight_power, or None when it is 0."""
  power = train.user_weight_power
  return losses.user_weights(batch.users.user, data.users, power) if power > 0 else None
