"""What the trainer needs from a model: init, the per-batch loss, and a retrieval Scorer.

A `RetrievalTask` binds a Flax module to a dataset and a loss, so one train loop serves the
two-tower baseline, MoNN and HSNN. `build_task(config, dataset)` dispatches on
`config.model.kind`; the MoNN and HSNN builders live in task_monn.py and task_hsnn.py.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hsnn_jax.data.types import RecDataset
from hsnn_jax.models import two_tower
from hsnn_jax.models.graph import BipartiteGraph
from hsnn_jax.models.scorer import Scorer
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import Batch, DeviceInteractions

MODEL_KINDS = ("two_tower", "monn", "hsnn")


def _no_hook(step, params, aux):
  del step
  return params, aux


def _no_export(params, aux, workdir):
  del params, aux, workdir


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
  """How the trainer drives one model family.

  init(key, batch) -> (params, aux): trainable parameters and non-trainable state (e.g. the
    index's balance window or an EMA teacher; `()` when there is none). Both are checkpointed.
  loss(params, aux, batch, key, data, step) -> (scalar, (metrics dict, new aux)); jitted.
  scorer(params, aux) -> Scorer, the retrieval view used for evaluation.
  between_chunks(step, params, aux) -> (params, aux): host-side work between jitted chunks
    (e.g. EM re-clustering); the identity by default.
  report(params, aux) -> dict merged into results.json (e.g. index health).
  export(params, aux, workdir) -> None: writes serving artifacts (e.g. the published index).
  hierarchy(params, aux) -> eval.hierarchical.Hierarchy, or None: the model's own index and
    stage scorers for beam search (HSNN); other models get a separately learned one.
  history: the sampler's history mode ('causal' | 'full' | 'none').
  """

  init: Callable[[jax.Array, Batch], Tuple[Any, Any]]
  loss: Callable[..., Tuple[jax.Array, Tuple[Dict[str, jax.Array], Any]]]
  scorer: Callable[[Any, Any], Scorer]
  history: str
  history_len: int
  between_chunks: Callable[[int, Any, Any], Tuple[Any, Any]] = _no_hook
  report: Callable[[Any, Any], dict] = lambda params, aux: {}
  export: Callable[[Any, Any, str], None] = _no_export
  hierarchy: Optional[Callable[[Any, Any], Any]] = None


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
                               weights=_row_weights(batch, data, train),
                               known=_known(batch, candidates, data, train))


def _known(batch: Batch, candidates, data: DeviceInteractions, train: ml_collections.ConfigDict):
  """[B, C] bool: candidates among the row user's training items (its latest history_len), when
  train.exclude_known_negatives; else None. Ranking excludes training items, so they need not
  be pushed below the positive either."""
  if not train.get("exclude_known_negatives", False):
    return None
  return losses.known_candidates(data.recent[batch.users.user], candidates)


def _row_weights(batch: Batch, data: DeviceInteractions, train: ml_collections.ConfigDict):
  """[B] per-example weights from train.user_weight_power, or None when it is 0."""
  power = train.get("user_weight_power", 0.0)
  return losses.user_weights(batch.users.user, data.users, power) if power > 0 else None


def _next_item_loss(model: two_tower.TwoTower, batch: Batch):
  """Sequence tower trained SASRec-style: every window position predicts its next item."""
  c = model.config
  return losses.next_item_loss(
      model.encode_positions(batch.users, deterministic=False), model.encode_items_nd,
      batch.users.history[:, -c.max_history:], batch.positives, batch.negatives,
      num_items=c.num_items, temperature=c.temperature if c.score == "cosine" else 1.0)


def _next_item_full_loss(model: two_tower.TwoTower, batch: Batch, max_targets: int):
  """Sequence tower, cross-entropy over the whole corpus at every window position."""
  c = model.config
  items = model.encode_items_nd(jnp.arange(c.num_items))
  return losses.next_item_full_loss(
      model.encode_positions(batch.users, deterministic=False), items,
      batch.users.history[:, -c.max_history:], batch.positives,
      temperature=c.temperature if c.score == "cosine" else 1.0, max_targets=max_targets)


def _full_softmax(module, params, batch: Batch, key, data: DeviceInteractions, t):
  """Every training item of each row's user is a positive against the whole corpus."""
  logits = module.apply({"params": params}, batch.users, method=two_tower.TwoTower.corpus_logits,
                        deterministic=False, rngs={"dropout": key})
  positives = losses.items_mask(data.sequences[batch.users.user], data.num_items)
  return losses.full_softmax_loss(logits, positives, weights=_row_weights(batch, data, t))


def _two_tower_task(cfg: ml_collections.ConfigDict, ds: RecDataset) -> RetrievalTask:
  m, t = cfg.model, cfg.train
  use_attrs = bool(m.get("item_attrs", False)) and ds.item_attrs is not None
  mc = two_tower.TwoTowerConfig(
      num_users=ds.num_users, num_items=ds.num_items, embed_dim=m.embed_dim,
      user_tower=m.user_tower, score=m.score, temperature=m.temperature,
      history_proj=m.get("history_proj", "dense"),
      num_attrs=ds.num_attrs if use_attrs else 0, num_layers=m.get("num_layers", 2),
      num_heads=m.get("num_heads", 2), max_history=m.history_len,
      dropout=m.get("dropout", 0.0), graph_layers=m.get("graph_layers", 3)).validate()
  graph = BipartiteGraph.from_csr(ds.train, ds.num_items) if mc.user_tower == "lightgcn" else None
  module = two_tower.TwoTower(mc, item_keys=item_keys_array(ds) if use_attrs else None,
                              graph=graph)
  history = {"sequence": "causal", "id_pooled": "full", "id": "none",
             "lightgcn": "none"}[mc.user_tower]

  def init(key, batch: Batch):
    return module.init(key, batch.users, batch.positives)["params"], ()

  def loss(params, aux, batch: Batch, key, data: DeviceInteractions, step):
    del step
    if mc.user_tower == "sequence" and t.get("all_positions", True):
      if t.loss == "full_softmax":
        per_position = functools.partial(_next_item_full_loss, max_targets=t.max_targets)
      else:
        per_position = _next_item_loss
      value = module.apply({"params": params}, batch, method=per_position, rngs={"dropout": key})
      return value, ({"loss": value}, aux)
    if t.loss == "full_softmax":
      value = _full_softmax(module, params, batch, key, data, t)
      return value, ({"loss": value}, aux)
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    logits = module.apply({"params": params}, batch.users, candidates, deterministic=False,
                          rngs={"dropout": key})
    if t.loss == "ccl":  # config_check: cosine scores only, so logits * temperature = cosines
      value = losses.cosine_contrastive_loss(
          logits * mc.temperature, batch.positives, candidates, margin=t.ccl_margin,
          negative_weight=t.ccl_negative_weight, negatives=t.ccl_negatives,
          weights=_row_weights(batch, data, t), known=_known(batch, candidates, data, t))
    else:
      value = sampled_loss(logits, batch, data, t)
    return value, ({"loss": value}, aux)

  return RetrievalTask(init=init, loss=loss, scorer=lambda p, aux: two_tower.make_scorer(module, p),
                       history=history, history_len=m.history_len)


def build_task(cfg: ml_collections.ConfigDict, ds: RecDataset) -> RetrievalTask:
  kind = cfg.model.kind
  if kind == "two_tower":
    return _two_tower_task(cfg, ds)
  # Imported here: the family modules import RetrievalTask and sampled_loss from this one.
  if kind == "monn":
    from hsnn_jax.train import task_monn  # pylint: disable=import-outside-toplevel
    return task_monn.monn_task(cfg, ds)
  if kind == "hsnn":
    from hsnn_jax.train import task_hsnn  # pylint: disable=import-outside-toplevel
    return task_hsnn.hsnn_task(cfg, ds)
  raise ValueError(f"model.kind={kind!r}: expected one of {MODEL_KINDS}")
