"""The 'two_tower' task: the dot-product / cosine two-tower baseline (models/two_tower.py).

Its losses: the sampled softmax (and BPR, BCE) over in-batch + uniform negatives, SimpleX's
cosine contrastive loss ('ccl'), the full softmax over the corpus, and for the sequence tower the
SASRec-style next-item loss at every window position.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import ml_collections

from hsnn_jax.data.types import RecDataset
from hsnn_jax.models import two_tower
from hsnn_jax.models.graph import BipartiteGraph
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import Batch, DeviceInteractions
from hsnn_jax.train.task import (Checks, ModelKind, RetrievalTask, item_keys_array, known_mask,
                                 row_weights, sampled_loss, user_side_params)


def default_model_config(**fields) -> ml_collections.ConfigDict:
  """The `config.model` section of a 'two_tower' run, with `fields` set over the defaults."""
  m = ml_collections.ConfigDict()
  m.kind = "two_tower"
  m.user_tower = "id_pooled"  # 'id' | 'id_pooled' | 'sequence' | 'lightgcn'
  m.graph_layers = 3  # lightgcn: propagation layers over the training graph
  m.score = "cosine"  # 'dot' | 'cosine'
  m.temperature = 0.1
  m.embed_dim = 64
  m.history_len = 50
  m.history_proj = "dense"  # id_pooled: 'dense' (learned D x D map) | 'identity'
  m.item_attrs = False
  m.num_layers = 2  # sequence tower
  m.num_heads = 2
  m.dropout = 0.0
  m.update(fields)
  return m


def config_errors(cfg: ml_collections.ConfigDict) -> list:
  m, check = cfg.model, Checks()
  need = check.need
  need(m.user_tower in two_tower.USER_TOWERS, "model.user_tower", m.user_tower,
       f"one of {two_tower.USER_TOWERS}")
  need(m.score in two_tower.SCORES, "model.score", m.score, f"one of {two_tower.SCORES}")
  need(m.history_proj in two_tower.HISTORY_PROJS, "model.history_proj", m.history_proj,
       f"one of {two_tower.HISTORY_PROJS}")
  need(m.embed_dim > 0, "model.embed_dim", m.embed_dim, "a positive int")
  need(m.temperature > 0, "model.temperature", m.temperature, "> 0")
  need(m.history_len > 0, "model.history_len", m.history_len, "a positive int")
  need(isinstance(m.graph_layers, int) and m.graph_layers >= 0, "model.graph_layers",
       m.graph_layers, "an int >= 0 (lightgcn)")
  return check.errors


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
  return losses.full_softmax_loss(logits, positives, weights=row_weights(batch, data, t))


def build(cfg: ml_collections.ConfigDict, ds: RecDataset) -> RetrievalTask:
  m, t = cfg.model, cfg.train
  use_attrs = bool(m.item_attrs) and ds.item_attrs is not None
  mc = two_tower.TwoTowerConfig(
      num_users=ds.num_users, num_items=ds.num_items, embed_dim=m.embed_dim,
      user_tower=m.user_tower, score=m.score, temperature=m.temperature,
      history_proj=m.history_proj,
      num_attrs=ds.num_attrs if use_attrs else 0, num_layers=m.num_layers,
      num_heads=m.num_heads, max_history=m.history_len,
      dropout=m.dropout, graph_layers=m.graph_layers).validate()
  graph = BipartiteGraph.from_csr(ds.train, ds.num_items) if mc.user_tower == "lightgcn" else None
  module = two_tower.TwoTower(mc, item_keys=item_keys_array(ds) if use_attrs else None,
                              graph=graph)
  history = {"sequence": "causal", "id_pooled": "full", "id": "none",
             "lightgcn": "none"}[mc.user_tower]

  def init(key, batch: Batch):
    return module.init(key, batch.users, batch.positives)["params"], ()

  def loss(params, aux, batch: Batch, key, data: DeviceInteractions, step):
    del step
    if mc.user_tower == "sequence" and t.all_positions:
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
          weights=row_weights(batch, data, t), known=known_mask(batch, candidates, data, t))
    else:
      value = sampled_loss(logits, batch, data, t)
    return value, ({"loss": value}, aux)

  return RetrievalTask(init=init, loss=loss, scorer=lambda p, aux: two_tower.make_scorer(module, p),
                       history=history, history_len=m.history_len,
                       is_user_param=user_side_params(two_tower.USER_SIDE_PARAMS,
                                                      two_tower.USER_SIDE_PATTERN),
                       logits=lambda p, users, items: module.apply({"params": p}, users, items))


KIND = ModelKind("two_tower", build, default_model_config, config_errors)
