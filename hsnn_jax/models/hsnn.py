"""HSNN: a mixture of MoNNs over a jointly learned item hierarchy (METHOD.md §2-3).

One Flax module holds every trainable part:

  item_model   MoNN over (user, item) pairs: the item level, the cheapest preset.
  user_head,   linear maps of the item-level user and item tower outputs to the index space, L2
  item_head    normalised: the item embedding v [N, d] the index quantizes, and a user embedding
               u [B, d] that trains v by a dot-product retrieval loss of its own (so v is a
               trained embedding in every index mode, not only when index losses reach it).
  quantizer    ResidualQuantizer over v: L levels, soft node embeddings c̄_l (cumulative).
  levels_l     one NodeMoNN per index level, coarsest (most expensive) first.
  ensemble     [L + 1] linear weights over the level logits, index levels first, item level last.

Training (`train_outputs`): the item level scores the candidate items; index level l scores the
candidates' SOFT node embeddings c̄_l (the differentiable pseudo-items of the quantizer), so the
user-item loss reaches the codebooks and the item embedding through the soft assignment (JOIM).
With `level_scoring='nodes'` level l instead scores every node once per user and gives each
candidate the expected node score under its soft assignment (HSNNConfig), as serving does.
Serving (`serving.py`-style helpers below): a node is scored through its REPRESENTATIVE item,
whose embedding v_rep replaces c̄_l as the node input; every other input is the user's.

A NodeMoNN is a MoNN whose item tower reads a node vector instead of item ids and keys, and
whose interaction tower is fed only user and node features (index-level interaction features do
not exist in training, METHOD.md §2): the pair fields are a user summary, a node summary and
their product. A linear head predicts the item-level interaction tower's output from it, for the
auxiliary MSE of HSNN (the target is the item-level tower on the same (user, item) pair).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.residual_quantizer import (ResidualQuantizer, ResidualQuantizerOutput,
                                               prefix_ids, prefix_softs, prefix_vectors)
from hsnn_jax.models.flops import bound_scorer_flops
from hsnn_jax.models import monn as monn_lib
from hsnn_jax.models.monn import NUM_ITEM_FIELDS, MoNN, MoNNConfig, make_scorer
from hsnn_jax.models.scorer import Scorer, UserBatch


LEVEL_SCORING = ("pairs", "nodes")
# Parameters read only by the user side: the MoNNs' and the node MoNNs' user summary, the
# embedding head of <u, v>.
USER_SIDE_PARAMS = monn_lib.USER_SIDE_PARAMS | {"user_summary", "user_head"}


@dataclasses.dataclass(frozen=True)
class HSNNConfig:
  """Architecture of an HSNN. level_models[l] is the MoNN of index level l (coarsest first).

  level_scoring: how training scores index level l for B users x C candidates.
    'pairs': the level MoNN on every (user, candidate) pair, the candidate entering as its soft
             node embedding c̄_l (B x C pairs per level).
    'nodes': the level MoNN once per (user, node) over all prod(K_0..K_l) nodes (hard prefix
             embeddings), then per candidate the expected score under its soft assignment to the
             nodes, sum_n p(n | c) s(u, n) (B x N_l pairs, then one [B, N_l] x [N_l, C] matmul).
             With a fixed index (SIL, EM) or one-hot assignments it equals 'pairs' exactly; the
             interaction head's MSE uses the candidate's hard node. Serving shares scores per
             node the same way (ensemble_scorer).
  """

  item_model: MoNNConfig
  level_models: Tuple[MoNNConfig, ...]
  index: IndexConfig
  embed_dim: int = 32  # d, width of the item embedding the index quantizes
  level_scoring: str = "pairs"

  @property
  def num_levels(self) -> int:
    return len(self.level_models)

  def validate(self) -> HSNNConfig:
    self.index.validate()
    self.item_model.validate()
    for level in self.level_models:
      level.validate()
    if len(self.level_models) != self.index.num_levels:
      raise ValueError(f"HSNNConfig.level_models has {len(self.level_models)} entries, "
                       f"index.nodes_per_level {self.index.num_levels}")
    if self.embed_dim < 1:
      raise ValueError(f"HSNNConfig.embed_dim must be >= 1, got {self.embed_dim}")
    if self.level_scoring not in LEVEL_SCORING:
      raise ValueError(f"HSNNConfig.level_scoring must be one of {LEVEL_SCORING}, "
                       f"got {self.level_scoring!r}")
    return self


def _normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


@flax.struct.dataclass
class NodeUserRepr:
  """B users for one index level: tower [B, E_u, D_u], OverArch user terms, summary [B, d_f]."""

  tower: jax.Array
  overarch: Optional[dict] = None
  summary: Optional[jax.Array] = None


@flax.struct.dataclass
class NodeRepr:
  """N nodes: tower [N, E_i, D_i], OverArch item terms, summary [N, d_f] (interaction input)."""

  tower: jax.Array
  overarch: Optional[dict] = None
  summary: Optional[jax.Array] = None


class NodeMoNN(MoNN):
  """An index-level MoNN over node vectors (module docstring). Reuses MoNN's user fields.

  node_dim: d of the node vectors. target_ui_size: E_ui * D_ui of the item-level interaction
  tower, the width of the auxiliary prediction head (0: no head).
  """

  node_dim: int = 0
  target_ui_size: int = 0

  def setup(self):
    super().setup()
    c = self.config
    self.node_fields = nn.Dense(NUM_ITEM_FIELDS * c.field_dim)
    if c.num_embed_ui:
      self.user_summary = nn.Dense(c.field_dim)
      self.node_summary = nn.Dense(c.field_dim)
      if self.target_ui_size:
        self.ui_head = nn.Dense(self.target_ui_size)

  def encode_users(self, users: UserBatch) -> NodeUserRepr:
    c = self.config
    fields, _, _ = self.user_fields(users)
    tower = self.user_tower(fields)
    if not c.overarch_layers:
      return NodeUserRepr(tower=tower)
    summary = self.user_summary(fields.reshape(fields.shape[0], -1)) if c.num_embed_ui else None
    return NodeUserRepr(tower=tower, overarch=self.overarch.user_side(tower), summary=summary)

  def encode_nodes(self, vectors: jax.Array) -> NodeRepr:
    """[N, node_dim] node vectors (c̄_l in training, v_rep in serving) -> NodeRepr."""
    chex.assert_shape(vectors, (None, self.node_dim))
    c = self.config
    fields = self.node_fields(vectors).reshape(vectors.shape[0], NUM_ITEM_FIELDS, c.field_dim)
    tower = self.item_tower(fields)
    if not c.overarch_layers:
      return NodeRepr(tower=tower)
    summary = self.node_summary(vectors) if c.num_embed_ui else None
    return NodeRepr(tower=tower, overarch=self.overarch.item_side(tower), summary=summary)

  def interaction(self, user: NodeUserRepr, node: NodeRepr) -> jax.Array:
    """Interaction tower on (user summary, node summary, their product) -> [B, N, E_ui, D_ui]
    (nodes have no attribute keys; MoNN.score_and_interaction does the rest)."""
    shape = (user.summary.shape[0], node.summary.shape[0], self.config.field_dim)
    u = jnp.broadcast_to(user.summary[:, None], shape)
    n = jnp.broadcast_to(node.summary[None, :], shape)
    return self.ui_tower(jnp.stack([u, n, u * n], axis=2))

  def predict_item_interaction(self, pair: jax.Array) -> jax.Array:
    """[B, N, E_ui, D_ui] -> [B, N, target_ui_size], the MSE head toward the item level."""
    return self.ui_head(pair.reshape(pair.shape[0], pair.shape[1], -1))


@flax.struct.dataclass
class HSNNTrainOutput:
  """Everything the Eq. 4 loss needs for B users x C candidates (T tasks, L levels).

  item_logits [B, C, T]; item_interaction [B, C, E_ui * D_ui] or None (the MSE target);
  embed_logits [B, C] (<u, v>, unscaled cosine); quantized: the ResidualQuantizerOutput over
  the candidates' item embeddings; level_logits: L x [B, C, T]; level_interaction: L x
  [B, C, E_ui * D_ui] predictions, or None per level without an interaction head;
  ensemble_logits [B, C, T] (on stop_gradient level logits: it trains the weights only).
  """

  item_logits: jax.Array
  item_interaction: Optional[jax.Array]
  embed_logits: jax.Array
  quantized: ResidualQuantizerOutput
  level_logits: Tuple[jax.Array, ...]
  level_interaction: Tuple[Optional[jax.Array], ...]
  ensemble_logits: jax.Array


class HSNN(nn.Module):
  """See the module docstring. item_keys [V, A] int32 is a constant of the model, as in MoNN."""

  config: HSNNConfig
  item_keys: Any
  num_keys: int
  num_users: int
  user_feature_sizes: Tuple[int, ...] = ()

  def setup(self):
    c = self.config.validate()
    common = dict(item_keys=self.item_keys, num_keys=self.num_keys, num_users=self.num_users,
                  user_feature_sizes=self.user_feature_sizes)
    self.item_model = MoNN(c.item_model, **common)
    self.user_head = nn.Dense(c.embed_dim)
    self.item_head = nn.Dense(c.embed_dim)
    self.quantizer = ResidualQuantizer.from_config(c.index, c.embed_dim)
    target = c.item_model.num_embed_ui * c.item_model.dim_ui if c.item_model.overarch_layers else 0
    self.levels = [NodeMoNN(level, node_dim=c.embed_dim,
                            target_ui_size=target if level.overarch_layers else 0, **common)
                   for level in c.level_models]
    self.ensemble = self.param(
        "ensemble", lambda _, n: jnp.zeros((n,), jnp.float32).at[-1].set(1.0), c.num_levels + 1)

  def _embed(self, head: nn.Module, tower: jax.Array) -> jax.Array:
    return _normalize(head(tower.reshape(tower.shape[0], -1)))

  def item_embeddings(self, item_ids: jax.Array) -> jax.Array:
    """[N] item ids -> [N, d] unit-norm item embeddings (what the index quantizes)."""
    return self._embed(self.item_head, self.item_model.encode_items(item_ids).tower)

  def embed_and_code(self, item_ids: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """[N] item ids -> embeddings [N, d] and hard codes [N, L] (argmin: alpha plays no part)."""
    v = self.item_embeddings(item_ids)
    return v, self.quantizer(v, 1.0).codes

  def encode_level_users(self, users: UserBatch, level: int) -> NodeUserRepr:
    return self.levels[level].encode_users(users)

  def encode_level_items(self, item_ids: jax.Array, level: int) -> NodeRepr:
    """Items scored as nodes of `level` (serving: the representatives' embeddings as input)."""
    return self.levels[level].encode_nodes(self.item_embeddings(item_ids))

  def score_level(self, user: NodeUserRepr, node: NodeRepr, level: int) -> jax.Array:
    return self.levels[level].score(user, node)

  def item_logits(self, users: UserBatch, item_ids: jax.Array) -> jax.Array:
    """Item-level logits [B, N, T] (e.g. of an EMA teacher)."""
    return self.item_model(users, item_ids)

  def hard_node_embeddings(self, codes: jax.Array) -> jax.Array:
    """Codes [N, L] -> [N, L, d]: the cumulative sums of the hard codewords (node embeddings of
    a fixed index). Call after the quantizer has run (its params exist)."""
    rows = [book[codes[:, l]] for l, book in enumerate(self._codebooks())]
    return jnp.cumsum(jnp.stack(rows, axis=1), axis=1)

  def _codebooks(self) -> Tuple[jax.Array, ...]:
    """The quantizer's codebooks [K_l, d], coarsest first (after the quantizer has run)."""
    books = self.variables["params"]["quantizer"]
    return tuple(books[f"level_{l}"]["codebook"] for l in range(self.config.num_levels))

  def _pair_level_outputs(self, users: UserBatch, nodes: jax.Array):
    """level_scoring='pairs': nodes [C, L, d] -> L x logits [B, C, T], L x MSE predictions."""
    logits, predictions = [], []
    for l, level in enumerate(self.levels):
      out, pair = level.score_and_interaction(level.encode_users(users),
                                              level.encode_nodes(nodes[:, l]))
      logits.append(out)
      predictions.append(level.predict_item_interaction(pair)
                         if pair is not None and level.target_ui_size else None)
    return logits, predictions

  def _node_level_outputs(self, users: UserBatch, quantized: ResidualQuantizerOutput,
                          codes: Optional[jax.Array]):
    """level_scoring='nodes' (HSNNConfig): each level's MoNN on B users x all its nodes, then
    per candidate the expected score under its node assignment (one-hot for fixed `codes`)."""
    index = self.config.index
    books = self._codebooks()
    if codes is not None or index.freeze_codebooks:
      books = tuple(jax.lax.stop_gradient(b) for b in books)
    hard = prefix_ids(quantized.codes if codes is None else codes, index.nodes_per_level)
    softs = prefix_softs(quantized.soft) if codes is None else None
    logits, predictions = [], []
    for l, (level, vectors) in enumerate(zip(self.levels, prefix_vectors(books))):
      node_logits, pair = level.score_and_interaction(level.encode_users(users),
                                                      level.encode_nodes(vectors))
      if softs is None:
        logits.append(jnp.take(node_logits, hard[:, l], axis=1))
      else:
        weights = softs[l]
        if index.straight_through:
          weights = weights + jax.lax.stop_gradient(
              jax.nn.one_hot(hard[:, l], weights.shape[1], dtype=weights.dtype) - weights)
        logits.append(jnp.einsum("bnt,cn->bct", node_logits, weights))
      predictions.append(
          jnp.take(level.predict_item_interaction(pair), hard[:, l], axis=1)
          if pair is not None and level.target_ui_size else None)
    return logits, predictions

  def train_outputs(self, users: UserBatch, candidates: jax.Array, alpha,
                    codes: Optional[jax.Array] = None,
                    base_logits: Optional[jax.Array] = None) -> HSNNTrainOutput:
    """Every level on B users x C candidate items; alpha: the assignment temperature.

    codes [C, L]: the candidates' codes in a fixed index (SIL, EM): the index levels then see
    the hard node embeddings of those codes instead of the soft c̄_l.
    base_logits [B, C]: a frozen base's logits, added to the item level's (a residual item
    level, train/task.py FrozenBase).
    """
    model = self.item_model
    user, item = model.encode_users(users), model.encode_items(candidates)
    item_logits, pair = model.score_and_interaction(user, item)
    if base_logits is not None:
      item_logits = item_logits + base_logits[..., None]
    item_interaction = None if pair is None else pair.reshape(pair.shape[0], pair.shape[1], -1)
    u = self._embed(self.user_head, user.tower)
    v = self._embed(self.item_head, item.tower)
    quantized = self.quantizer(v, alpha)
    if self.config.level_scoring == "nodes":
      level_logits, level_interaction = self._node_level_outputs(users, quantized, codes)
    else:
      nodes = quantized.node_embeddings
      if codes is not None:
        nodes = jax.lax.stop_gradient(self.hard_node_embeddings(codes))
      level_logits, level_interaction = self._pair_level_outputs(users, nodes)
    stacked = jnp.stack([*level_logits, item_logits], axis=-1)
    ensemble = jnp.einsum("bctl,l->bct", jax.lax.stop_gradient(stacked), self.ensemble)
    return HSNNTrainOutput(item_logits=item_logits, item_interaction=item_interaction,
                           embed_logits=u @ v.T, quantized=quantized,
                           level_logits=tuple(level_logits),
                           level_interaction=tuple(level_interaction), ensemble_logits=ensemble)

  def __call__(self, users: UserBatch, candidates: jax.Array, alpha=1.0) -> HSNNTrainOutput:
    return self.train_outputs(users, candidates, alpha)


# ---------------------------------------------------------------------------------------------
# Retrieval views of a trained HSNN.


def item_level_module(model: HSNN) -> MoNN:
  """The item-level MoNN alone; its params are params['item_model']."""
  return MoNN(model.config.item_model, item_keys=model.item_keys, num_keys=model.num_keys,
              num_users=model.num_users, user_feature_sizes=model.user_feature_sizes)


def item_scorer(model: HSNN, params: Any, history_len: int) -> Scorer:
  return make_scorer(item_level_module(model), params["item_model"], history_len=history_len)


def level_scorer(model: HSNN, params: Any, level: int, history_len: int) -> Scorer:
  """Index level `level` as a Scorer over item ids: an item is scored as a node whose
  representative it is (encode_items embeds the item, then the level's node tower)."""
  variables = {"params": params}

  def encode_users(users: UserBatch) -> NodeUserRepr:
    return model.apply(variables, users, level, method=HSNN.encode_level_users)

  def encode_items(item_ids: jax.Array) -> NodeRepr:
    return model.apply(variables, item_ids, level, method=HSNN.encode_level_items)

  def score(user: NodeUserRepr, node: NodeRepr) -> jax.Array:
    return model.apply(variables, user, node, level, method=HSNN.score_level)[..., 0]

  cost = bound_scorer_flops(encode_users, encode_items, score, history_len=history_len,
                            num_user_features=len(model.user_feature_sizes))
  return Scorer(encode_users=encode_users, encode_items=encode_items, score=score,
                flops_per_pair=cost.per_pair, flops_per_query=cost.per_query,
                flops_per_item=cost.per_item,
                name=f"hsnn_level_{level}_{model.config.level_models[level].name}")


def ensemble_scorer(item: Scorer, levels: Tuple[Scorer, ...], node_reprs: Tuple[Any, ...],
                    item_path: np.ndarray, weights: np.ndarray) -> Scorer:
  """Exhaustive scoring of the HSNN ensemble.

  score(user, item v) = weights[L] * s_item(user, v) + sum_l weights[l] * s_l(user, node_l(v)),
  where node_l(v) = item_path[v, l] and s_l is level l's MoNN on that node's representative
  item (node_reprs[l] [N_l, ...], the level scorer's encode_items of the representatives). The
  node scores are computed once per query for every node (encode_users) and gathered per item,
  so the value is exactly that of scoring each item's ancestors, at N_l pairs per level.
  """
  item_path = jnp.asarray(item_path, jnp.int32)
  w = jnp.asarray(weights, jnp.float32)
  num_levels = len(levels)

  def encode_users(users: UserBatch):
    node_scores = tuple(s.score(s.encode_users(users), r) for s, r in zip(levels, node_reprs))
    return {"item": item.encode_users(users), "nodes": node_scores}

  def encode_items(item_ids: jax.Array):
    return {"item": item.encode_items(item_ids),
            "path": jnp.take(item_path, jnp.maximum(item_ids, 0), axis=0, mode="clip")}

  def score(user, items) -> jax.Array:
    total = w[num_levels] * item.score(user["item"], items["item"])
    for l in range(num_levels):
      total = total + w[l] * jnp.take(user["nodes"][l], items["path"][:, l], axis=1)
    return total

  per_query = item.flops_per_query + sum(
      s.flops_per_query + int(r_size) * s.flops_per_pair
      for s, r_size in zip(levels, (jax.tree.leaves(r)[0].shape[0] for r in node_reprs)))
  return Scorer(encode_users=encode_users, encode_items=encode_items, score=score,
                flops_per_pair=item.flops_per_pair, flops_per_query=per_query,
                flops_per_item=item.flops_per_item, name="hsnn_ensemble")
