"""What the trainer needs from a model: init, the per-batch loss, and a retrieval Scorer.

A `RetrievalTask` binds a Flax module to a dataset and a loss, so one train loop serves the
two-tower baseline, MoNN and HSNN. `build_task(config, dataset)` dispatches on
`config.model.kind`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hsnn_jax.data.types import RecDataset
from hsnn_jax.models import two_tower
from hsnn_jax.models.scorer import Scorer
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import Batch, DeviceInteractions

MODEL_KINDS = ("two_tower",)


@dataclasses.dataclass(frozen=True)
class RetrievalTask:
  """init(key, batch) -> params; loss(params, batch, key, data) -> (scalar, metrics dict);
  scorer(params) -> Scorer; history: the sampler's history mode ('causal' | 'full' | 'none')."""

  init: Callable[[jax.Array, Batch], Any]
  loss: Callable[[Any, Batch, jax.Array, DeviceInteractions], Tuple[jax.Array, Dict[str, jax.Array]]]
  scorer: Callable[[Any], Scorer]
  history: str
  history_len: int


def item_keys_array(ds: RecDataset, max_keys: int = 0) -> np.ndarray | None:
  """[num_items, A] int32 attribute keys, -1 padded (None when the dataset has no attributes)."""
  if ds.item_attrs is None:
    return None
  keys, _ = ds.item_attrs.to_padded(max_keys or None, pad=-1, keep="first")
  return keys


def _two_tower_task(cfg: ml_collections.ConfigDict, ds: RecDataset) -> RetrievalTask:
  m, t = cfg.model, cfg.train
  use_attrs = bool(m.get("item_attrs", False)) and ds.item_attrs is not None
  mc = two_tower.TwoTowerConfig(
      num_users=ds.num_users, num_items=ds.num_items, embed_dim=m.embed_dim,
      user_tower=m.user_tower, score=m.score, temperature=m.temperature,
      num_attrs=ds.num_attrs if use_attrs else 0, num_layers=m.get("num_layers", 2),
      num_heads=m.get("num_heads", 2), max_history=m.history_len,
      dropout=m.get("dropout", 0.0)).validate()
  module = two_tower.TwoTower(mc, item_keys=item_keys_array(ds) if use_attrs else None)
  history = {"sequence": "causal", "id_pooled": "full", "id": "none"}[mc.user_tower]

  def init(key, batch: Batch):
    return module.init(key, batch.users, batch.positives)["params"]

  def loss(params, batch: Batch, key, data: DeviceInteractions):
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    logits = module.apply({"params": params}, batch.users, candidates, deterministic=False,
                          rngs={"dropout": key})
    logq = (losses.logq_offsets(batch.positives, batch.negatives, data.item_logq, data.num_items)
            if t.logq_correction else None)
    value = losses.retrieval_loss(logits, batch.positives, candidates, kind=t.loss, logq=logq)
    return value, {"loss": value}

  return RetrievalTask(init=init, loss=loss, scorer=lambda p: two_tower.make_scorer(module, p),
                       history=history, history_len=m.history_len)


def build_task(cfg: ml_collections.ConfigDict, ds: RecDataset) -> RetrievalTask:
  kind = cfg.model.kind
  if kind == "two_tower":
    return _two_tower_task(cfg, ds)
  raise ValueError(f"model.kind={kind!r}: expected one of {MODEL_KINDS}")
