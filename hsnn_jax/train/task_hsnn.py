"""The 'hsnn' task: HSNN with its learned index, trained by the Eq. 4 loss (METHOD.md §2-3).

Per batch (B users, C = B + S candidates: in-batch positives then S uniform negatives):

  loss = item + w_embed * embed                        item-level MoNN; <u, v> trains v
       + w_index(t) * sum_l (w_l * level_l + w_mse * mse_l)   Eq. 4: every index level, same labels
       + on * (w_rec * reconstruction + w_bal * balance + w_ens * ensemble)
       + w_distill * distillation                      optional, toward an EMA teacher

Every retrieval term is the configured sampled loss (`tasks.sampled_loss`) of that level's logits
over the same candidates and labels. mse_l is the auxiliary MSE of level l's interaction head
toward the item-level interaction tower's output on the same pairs (stop_gradient target).
`on` is 1 once the index exists; w_index(t) warms up linearly from the step the index was built;
alpha(t) = alpha_schedule(t - built, num_steps - built).

Balance [ours]: the regularizer pools the soft assignments of the S uniform negatives (a uniform
sample of the corpus, so it balances items per node, what index health reports; all C rows when
S = 0) over the last W batches (BalanceWindow in aux). By default (`balance_over='nodes'`) it
balances the code prefixes, the index's nodes, through the product of the levels' soft
assignments: with per-level codeword balance a shared level-1 codebook can be balanced overall
while some parents' children hold most items (Gowalla, 64 x 16, 1500 steps: 510 of 1024 leaves
used, the largest 12x the mean; with 'nodes' 820 used, 8.5x).

Index modes (`model.index.mode`), all driven by `between_chunks` on the host:
  'joim' everything joint: at `start_step` the codebooks are set by residual k-means on the
         current item embeddings (codebook_init='kmeans'; 'normal' keeps the random init), then
         the user-item losses reach them and the item embeddings through the soft assignment:
         index level l scores the candidates' soft node embeddings c̄_l. start_step = 0 builds
         the index at init from untrained embeddings; on planted clusters that collapsed to 3 of
         8 nodes, so the shipped configs let the item level warm up first [ours].
  'sil'  the item-level model trains alone until `start_step` (> 0); then residual k-means on
         its item embeddings fixes every item's codes (aux.codes) and the codebooks; index
         level l scores the hard node embedding of the candidate's fixed code prefix; nothing
         reaches the codebooks (stop_gradient) and the index losses do not reach the item tower.
  'em'   as 'sil', and every `em_every` steps the codes and codebooks are recomputed by residual
         k-means on the current item embeddings (the E step).
Chunk boundaries (log/checkpoint/eval steps) are where the hook runs, so a build happens at the
first boundary at or after the configured step; the step it happened at is stored in aux.

I2IF keys: the dataset's item attributes when present (and `model.item_attrs`); otherwise the
item's index nodes (one key per level, the code prefix, up to `node_key_limit` keys per level),
refreshed from the hard codes whenever the index changes (every chunk in JOIM), -1 before the
index is built.

Evaluation (`scorer`): exhaustive scoring of the ensemble, see hsnn.ensemble_scorer: the index
is published from the hard codes of every item, node l of item v is scored by level l's MoNN on
the node's representative item, and the item level by the item-level MoNN; the ensemble weights
are the learned ones. `model.eval_scorer = 'item'` evaluates the item-level MoNN alone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hsnn_jax.data.types import RecDataset
from hsnn_jax.eval.hierarchical import Hierarchy
from hsnn_jax.index import balance as balance_lib
from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.health import index_health, nmi, purity
from hsnn_jax.index.kmeans import residual_kmeans
from hsnn_jax.index.publish import prefix_node_ids, publish_index
from hsnn_jax.index.published import PublishedIndex
from hsnn_jax.index.residual_quantizer import get_codebooks, prefix_softs, set_codebooks
from hsnn_jax.index.schedule import alpha_schedule, index_loss_weight
from hsnn_jax.models import hsnn
from hsnn_jax.retrieval.beam_search import (encode_ids, item_level_scorer,
                                             representative_level_scorer)
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import Batch, DeviceInteractions
from hsnn_jax.train.task_monn import monn_config
from hsnn_jax.train.tasks import RetrievalTask, item_keys_array, sampled_loss

EVAL_SCORERS = ("ensemble", "item")
BALANCE_OVER = ("nodes", "codewords")
INDEX_SCHEDULE_FIELDS = ("start_step", "em_every")  # model.index fields that are not IndexConfig's


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
  m.index = ml_collections.ConfigDict(dataclasses.asdict(IndexConfig()))
  m.index.start_step = 0  # step the index is built at (> 0 for 'sil' and 'em'; see above)
  m.index.em_every = 1000  # 'em': steps between re-clusterings
  m.update(fields)
  return m


def index_config(m: ml_collections.ConfigDict) -> IndexConfig:
  fields = {k: v for k, v in m.index.to_dict().items() if k not in INDEX_SCHEDULE_FIELDS}
  fields["nodes_per_level"] = tuple(fields["nodes_per_level"])
  return IndexConfig(**fields)


def hsnn_config(m: ml_collections.ConfigDict) -> hsnn.HSNNConfig:
  return hsnn.HSNNConfig(
      item_model=monn_config(m.item_model, m.overrides, num_tasks=1),
      level_models=tuple(monn_config(p, m.overrides, num_tasks=1) for p in m.level_models),
      index=index_config(m), embed_dim=m.embed_dim, level_scoring=m.level_scoring).validate()


def level_loss_weights(m: ml_collections.ConfigDict) -> Tuple[float, ...]:
  return tuple(m.level_loss_weights) or (1.0,) * len(m.level_models)


def node_key_levels(nodes_per_level, limit: int) -> Tuple[int, ...]:
  """Possible node counts prod(K_0..K_l) of the levels that serve as I2IF keys (<= limit)."""
  counts = np.cumprod(np.asarray(nodes_per_level, np.int64))
  return tuple(int(c) for c in counts[counts <= limit])


def node_keys(codes: np.ndarray, nodes_per_level, limit: int) -> np.ndarray:
  """[V, A] int32 keys: the flat code prefix of each item at each key level, offset per level
  (one column of -1, no key, when no level fits under the limit)."""
  counts = node_key_levels(nodes_per_level, limit)
  if not counts:
    return np.full((codes.shape[0], 1), -1, np.int32)
  keys, prefix, offset = [], np.zeros(codes.shape[0], np.int64), 0
  for l, count in enumerate(counts):
    prefix = prefix * nodes_per_level[l] + codes[:, l]
    keys.append(offset + prefix)
    offset += count
  return np.stack(keys, axis=1).astype(np.int32)


@flax.struct.dataclass
class HSNNAux:
  """Non-trainable state. windows: one BalanceWindow per level; codes [V, L] int32: every
  item's hard codes (the fixed index in SIL / EM; refreshed after every chunk in JOIM);
  item_keys [V, A] int32; index_start / last_cluster: int32 scalars, the steps the index was
  built / last re-clustered (-1 before); teacher: the EMA of params['item_model'], or ()."""

  windows: Tuple[balance_lib.BalanceWindow, ...]
  codes: jax.Array
  item_keys: jax.Array
  index_start: jax.Array
  last_cluster: jax.Array
  teacher: Any


def balance_widths(m: ml_collections.ConfigDict) -> Tuple[int, ...]:
  """Columns of each level's balance window: nodes (prefixes) or codewords."""
  nodes = tuple(m.index.nodes_per_level)
  return tuple(int(k) for k in np.cumprod(nodes)) if m.balance_over == "nodes" else nodes


def _distillation(student: jax.Array, teacher: jax.Array, valid: jax.Array,
                  temperature: float) -> jax.Array:
  """Mean over rows of the cross-entropy from softmax(teacher / T) to softmax(student / T)."""
  neg = jnp.finfo(jnp.float32).min
  target = jax.nn.softmax(jnp.where(valid, jax.lax.stop_gradient(teacher) / temperature, neg))
  log_p = jax.nn.log_softmax(jnp.where(valid, student / temperature, neg))
  return -jnp.mean(jnp.sum(jnp.where(valid, target * log_p, 0.0), axis=-1))


def uses_attribute_keys(m: ml_collections.ConfigDict, ds: RecDataset) -> bool:
  return bool(m.item_attrs) and ds.item_attrs is not None


def initial_item_keys(m: ml_collections.ConfigDict, ds: RecDataset) -> Tuple[np.ndarray, int]:
  """([V, A] int32 keys before the index exists, num_keys): attributes, or empty node keys."""
  if uses_attribute_keys(m, ds):
    return item_keys_array(ds, m.max_item_keys), ds.num_attrs
  key_levels = node_key_levels(tuple(m.index.nodes_per_level), m.node_key_limit)
  return (np.full((ds.num_items, max(len(key_levels), 1)), -1, np.int32),
          max(sum(key_levels), 1))


def hsnn_model(m: ml_collections.ConfigDict, ds: RecDataset, item_keys) -> hsnn.HSNN:
  """The HSNN of config section `m` on `ds` with the given I2IF keys [V, A] (may be traced)."""
  return hsnn.HSNN(hsnn_config(m), item_keys=item_keys, num_keys=initial_item_keys(m, ds)[1],
                   num_users=ds.num_users,
                   user_feature_sizes=tuple(int(s) for s in ds.user_feature_sizes))


def hsnn_task(cfg: ml_collections.ConfigDict, ds: RecDataset) -> RetrievalTask:
  m, t = cfg.model, cfg.train
  config = hsnn_config(m)
  ic = config.index
  start_step, em_every = int(m.index.start_step), int(m.index.em_every)
  weights = level_loss_weights(m)
  keyed = uses_attribute_keys(m, ds)
  initial_keys, _ = initial_item_keys(m, ds)
  chunk = max(1, min(cfg.eval.item_chunk, ds.num_items))
  distill = m.distill_weight > 0

  def make_model(item_keys) -> hsnn.HSNN:
    return hsnn_model(m, ds, item_keys)

  @jax.jit
  def embed_chunk(params, item_keys, ids):
    return make_model(item_keys).apply({"params": params}, ids, method=hsnn.HSNN.embed_and_code)

  def embed_and_code(params, aux) -> Tuple[np.ndarray, np.ndarray]:
    """All items: embeddings [V, d] float32 and hard codes [V, L] int32 (NumPy)."""
    vs, codes = [], []
    for begin in range(0, ds.num_items, chunk):
      ids = np.arange(begin, begin + chunk, dtype=np.int32)
      v, c = embed_chunk(params, aux.item_keys, jnp.asarray(np.minimum(ids, ds.num_items - 1)))
      keep = min(chunk, ds.num_items - begin)
      vs.append(np.asarray(v)[:keep])
      codes.append(np.asarray(c)[:keep])
    return np.concatenate(vs), np.concatenate(codes)

  def publish(params, aux) -> PublishedIndex:
    v, _ = embed_and_code(params, aux)
    return publish_index(np.asarray(aux.codes), get_codebooks(params["quantizer"]), v)

  def build_index(step: int, params, aux, first: bool):
    """(Re)builds the index at `step`: residual k-means codebooks unless JOIM starts from its
    'normal' init; resets the balance windows and refreshes node keys."""
    v, codes = embed_and_code(params, aux)
    if ic.codebook_init == "kmeans" or ic.mode != "joim":
      result = residual_kmeans(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), step), v,
                               ic.nodes_per_level, ic.kmeans_iters, ic.kmeans_init,
                               ic.kmeans_chunk_size)
      params = {**params, "quantizer": set_codebooks(params["quantizer"], result.codebooks)}
      codes = np.asarray(result.codes)
      logging.info("index %s at step %d: residual k-means errors %s",
                   "built" if first else "re-clustered", step, np.asarray(result.errors))
    aux = aux.replace(windows=balance_lib.init_windows(ic.balance_window, balance_widths(m)),
                      index_start=jnp.int32(step) if first else aux.index_start,
                      last_cluster=jnp.int32(step))
    return params, with_codes(aux, codes)

  def with_codes(aux, codes: np.ndarray):
    """aux holding `codes`, and on attribute-free data the node keys they define."""
    aux = aux.replace(codes=jnp.asarray(codes, jnp.int32))
    if keyed:
      return aux
    return aux.replace(item_keys=jnp.asarray(node_keys(codes, ic.nodes_per_level,
                                                       m.node_key_limit)))

  def init(key, batch: Batch):
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    # One compiled init instead of thousands of eager ops (it was 10x slower on CPU).
    params = jax.jit(make_model(jnp.asarray(initial_keys)).init)(
        key, batch.users, candidates)["params"]
    aux = HSNNAux(windows=balance_lib.init_windows(ic.balance_window, balance_widths(m)),
                  codes=jnp.zeros((ds.num_items, config.num_levels), jnp.int32),
                  item_keys=jnp.asarray(initial_keys), index_start=jnp.int32(-1),
                  last_cluster=jnp.int32(-1),
                  teacher=jax.tree.map(jnp.copy, params["item_model"]) if distill else ())
    if start_step == 0:
      params, aux = build_index(0, params, aux, first=True)
    return params, aux

  def between_chunks(step: int, params, aux):
    built_at = int(aux.index_start)
    if built_at < 0:
      return build_index(step, params, aux, first=True) if step >= start_step else (params, aux)
    if ic.mode == "em" and step - int(aux.last_cluster) >= em_every:
      return build_index(step, params, aux, first=False)
    if ic.mode == "joim":
      return params, with_codes(aux, embed_and_code(params, aux)[1])
    return params, aux

  def loss(params, aux: HSNNAux, batch: Batch, key, data: DeviceInteractions, step):
    del key
    model = make_model(aux.item_keys)
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    started = aux.index_start >= 0
    since = step - aux.index_start
    alpha = alpha_schedule(since, t.num_steps - aux.index_start, ic.max_alpha,
                           ic.alpha_exponent, ic.min_alpha)
    fixed = None if ic.mode == "joim" else jnp.take(aux.codes, candidates, axis=0)
    out = model.apply({"params": params}, batch.users, candidates, alpha, fixed,
                      method=hsnn.HSNN.train_outputs)
    retrieval = lambda logits: sampled_loss(logits, batch, data, t)
    item_loss = retrieval(out.item_logits[..., 0])
    embed_loss = retrieval(out.embed_logits / m.embed_temperature)
    level_losses = [retrieval(logits[..., 0]) for logits in out.level_logits]
    mse = [jnp.mean((p - jax.lax.stop_gradient(out.item_interaction))**2)
           for p in out.level_interaction if p is not None]
    ensemble_loss = retrieval(out.ensemble_logits[..., 0])
    rows = slice(batch.positives.shape[0], None) if batch.negatives.shape[0] else slice(None)
    softs = [soft[rows] for soft in out.quantized.soft]
    balance, windows = balance_lib.balance_loss_and_update(
        aux.windows, prefix_softs(softs) if m.balance_over == "nodes" else softs)
    on = started.astype(jnp.float32)
    w_index = on * index_loss_weight(since, ic.index_loss_warmup_steps, ic.index_loss_weight)
    index_term = sum(w * l for w, l in zip(weights, level_losses))
    index_term = index_term + m.interaction_mse_weight * sum(mse) if mse else index_term
    total = (item_loss + m.embedding_loss_weight * embed_loss + w_index * index_term
             + on * (ic.reconstruction_weight * out.quantized.reconstruction_loss
                     + ic.balance_weight * balance + m.ensemble_loss_weight * ensemble_loss))
    metrics = {"item_loss": item_loss, "embed_loss": embed_loss, "ensemble_loss": ensemble_loss,
               "reconstruction": out.quantized.reconstruction_loss, "balance": balance,
               "alpha": alpha, "index_weight": w_index}
    metrics.update({f"level_{l}_loss": v for l, v in enumerate(level_losses)})
    if mse:
      metrics["interaction_mse"] = sum(mse) / len(mse)
    teacher = aux.teacher
    if distill:
      teacher_logits = hsnn.item_level_module(model).apply(
          {"params": aux.teacher}, batch.users, candidates)[..., 0]
      valid = losses.candidate_mask(batch.positives, candidates)
      students = [out.item_logits[..., 0]] + [logits[..., 0] for logits in out.level_logits]
      distillation = sum(_distillation(s, teacher_logits, valid, m.distill_temperature)
                         for s in students)
      total = total + m.distill_weight * distillation
      metrics["distillation"] = distillation
      teacher = jax.tree.map(lambda e, p: m.ema_decay * e + (1 - m.ema_decay)
                             * jax.lax.stop_gradient(p), aux.teacher, params["item_model"])
    windows = jax.tree.map(lambda new, old: jnp.where(started, new, old), windows, aux.windows)
    metrics["loss"] = total
    return total, (metrics, aux.replace(windows=windows, teacher=teacher))

  def serving(params, aux):
    """(model, published index, level Scorers, item Scorer) of the current parameters."""
    model = make_model(aux.item_keys)
    levels = tuple(hsnn.level_scorer(model, params, l, m.history_len)
                   for l in range(config.num_levels))
    return model, publish(params, aux), levels, hsnn.item_scorer(model, params, m.history_len)

  def ensemble_weights(params):
    return None if m.eval_scorer == "item" else np.asarray(params["ensemble"])

  def scorer(params, aux):
    if m.eval_scorer == "item":
      return hsnn.item_scorer(make_model(aux.item_keys), params, m.history_len)
    _, index, levels, item = serving(params, aux)
    node_reprs = tuple(encode_ids(s, np.asarray(index.representative[l]), chunk)
                       for l, s in enumerate(levels))
    return hsnn.ensemble_scorer(item, levels, node_reprs, np.asarray(index.item_path),
                                ensemble_weights(params))

  def hierarchy(params, aux) -> Hierarchy:
    """Beam search over the learned index: nodes scored by their level's MoNN on their
    representative items, ranked by the learned ensemble (the function `scorer` evaluates)."""
    _, index, levels, item = serving(params, aux)
    stages = tuple(representative_level_scorer(s, index, l, chunk) for l, s in enumerate(levels))
    weights = ensemble_weights(params)
    return Hierarchy(index=index, level_stages=stages,
                     item_stage=item_level_scorer(item, ds.num_items, chunk),
                     level_weights=None if weights is None else [float(w) for w in weights],
                     reference=scorer(params, aux))

  def report(params, aux) -> dict:
    codes = np.asarray(aux.codes)
    health = index_health(codes, ic.nodes_per_level)
    out = {"index_health": {f"level_{l}": h for l, h in enumerate(health)},
           "index_built_at_step": int(aux.index_start),
           "ensemble_weights": [float(w) for w in np.asarray(params["ensemble"])]}
    if ds.item_tree_paths is not None:
      nodes, _, _ = prefix_node_ids(codes, ic.nodes_per_level)
      depth = ds.item_tree_paths.shape[1]
      out["index_recovery"] = {
          f"level_{l}": {"nmi": nmi(ds.item_tree_paths[:, min(l, depth - 1)], nodes[:, l]),
                         "purity": purity(ds.item_tree_paths[:, min(l, depth - 1)], nodes[:, l])}
          for l in range(config.num_levels)}
    return out

  def export(params, aux, workdir: str) -> None:
    index = publish(params, aux)
    index.save(os.path.join(workdir, "index.npz"))

  return RetrievalTask(init=init, loss=loss, scorer=scorer, history=m.history,
                       history_len=m.history_len, between_chunks=between_chunks, report=report,
                       export=export, hierarchy=hierarchy)
