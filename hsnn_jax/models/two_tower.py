"""The two-tower baseline: a user tower and an item tower scored by dot product or cosine.

Item tower: id embedding, plus the mean of the item's attribute-key embeddings when the dataset
has attributes. User tower, one of:
  'id':          the user id embedding (matrix factorisation);
  'id_pooled':   id embedding + a linear map of the mean of the user's history item embeddings
                 (SimpleX-style behaviour aggregation; the history shares the item id table);
                 history_proj='identity' adds the mean itself (no dense map to train);
  'sequence':    a small causal transformer over the history (SASRec-style), the last position's
                 output is the user; no user id (sequential protocols generalise across users);
  'lightgcn':    user and item id embeddings propagated over the training graph (LightGCN,
                 hsnn_jax/models/graph.py): both towers are graph towers, the mean of
                 graph_layers + 1 propagation layers.
Scores: 'dot' (u . v) or 'cosine' (u . v / |u||v| / temperature).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.models.flops import bound_scorer_flops
from hsnn_jax.models.graph import BipartiteGraph, propagate
from hsnn_jax.models.scorer import Scorer, UserBatch

USER_TOWERS = ("id", "id_pooled", "sequence", "lightgcn")
SCORES = ("dot", "cosine")
HISTORY_PROJS = ("dense", "identity")
# Parameters read only by the user tower (test-time training fine-tunes these): by name, and
# the sequence tower's CausalBlocks by pattern.
USER_SIDE_PARAMS = frozenset({"user_id", "history_proj", "position", "final_norm"})
USER_SIDE_PATTERN = r"block\d+"


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  num_users: int
  num_items: int
  embed_dim: int = 64
  user_tower: str = "id_pooled"
  score: str = "cosine"
  temperature: float = 0.1  # cosine only: logits = cos / temperature
  num_attrs: int = 0  # > 0: the item tower adds attribute-key embeddings
  history_proj: str = "dense"  # id_pooled: 'dense' (learned D x D map) | 'identity'
  # Sequence tower.
  num_layers: int = 2
  num_heads: int = 2
  max_history: int = 50
  dropout: float = 0.2
  graph_layers: int = 3  # lightgcn: propagation layers


  def validate(self) -> "TwoTowerConfig":
    errors = []
    if self.user_tower not in USER_TOWERS:
      errors.append(f"user_tower={self.user_tower!r}: expected one of {USER_TOWERS}")
    if self.history_proj not in HISTORY_PROJS:
      errors.append(f"history_proj={self.history_proj!r}: expected one of {HISTORY_PROJS}")
    if self.score not in SCORES:
      errors.append(f"score={self.score!r}: expected one of {SCORES}")
    for f in ("num_users", "num_items", "embed_dim", "num_layers", "num_heads", "max_history"):
      if getattr(self, f) <= 0:
        errors.append(f"{f}={getattr(self, f)}: must be positive")
    if self.embed_dim % max(self.num_heads, 1):
      errors.append(f"embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
    if not self.temperature > 0:
      errors.append(f"temperature={self.temperature}: must be > 0")
    if self.graph_layers < 0:
      errors.append(f"graph_layers={self.graph_layers}: must be >= 0")
    if not 0 <= self.dropout < 1:
      errors.append(f"dropout={self.dropout}: must be in [0, 1)")
    if errors:
      raise ValueError("Invalid two-tower config:\n  " + "\n  ".join(errors))
    return self


def normalize(x, score: str):
  """Unit rows [..., D] for cosine scores; x itself for dot products."""
  if score == "cosine":
    return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
  return x


class CausalBlock(nn.Module):
  """Pre-norm transformer block with a causal mask. x: [B, H, D], mask: [B, H] bool."""

  num_heads: int
  dropout: float

  @nn.compact
  def __call__(self, x, mask, *, deterministic: bool):
    d = x.shape[-1]
    causal = nn.make_causal_mask(mask)  # [B, 1, H, H]
    attn_mask = nn.combine_masks(causal, nn.make_attention_mask(mask, mask))
    h = nn.LayerNorm()(x)
    h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout,
                                        deterministic=deterministic)(h, h, mask=attn_mask)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.LayerNorm()(x)
    h = nn.Dense(d)(nn.gelu(nn.Dense(2 * d)(h)))
    return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class TwoTower(nn.Module):
  """See module docstring. `item_keys`: [num_items, A] int32 attribute keys, -1 padded, or None;
  `graph`: the training graph, required by the 'lightgcn' tower."""

  config: TwoTowerConfig
  item_keys: Optional[np.ndarray] = None
  graph: Optional[BipartiteGraph] = None

  def setup(self):
    c = self.config
    init = nn.initializers.normal(stddev=0.1 if c.score == "cosine" else 0.01)
    self.item_table = nn.Embed(c.num_items, c.embed_dim, embedding_init=init, name="item_id")
    if c.num_attrs > 0:
      self.attr_table = nn.Embed(c.num_attrs, c.embed_dim, embedding_init=init, name="item_attr")
    if c.user_tower in ("id", "id_pooled", "lightgcn"):
      self.user_table = nn.Embed(c.num_users, c.embed_dim, embedding_init=init, name="user_id")
    if c.user_tower == "id_pooled" and c.history_proj == "dense":
      self.history_proj = nn.Dense(c.embed_dim, use_bias=False, name="history_proj")
    if c.user_tower == "sequence":
      self.position = nn.Embed(c.max_history, c.embed_dim, embedding_init=init, name="position")
      self.blocks = [CausalBlock(c.num_heads, c.dropout, name=f"block{i}") for i in range(c.num_layers)]
      self.final_norm = nn.LayerNorm(name="final_norm")
      self.input_dropout = nn.Dropout(c.dropout)

  def _item_vectors(self, item_ids):
    """item_ids [...] int32 (negative = padding, embedded as zeros) -> [..., D]."""
    safe = jnp.maximum(item_ids, 0)
    v = self.item_table(safe)
    if self.config.num_attrs > 0 and self.item_keys is not None:
      keys = jnp.asarray(self.item_keys)[safe]  # [..., A]
      kmask = (keys >= 0)[..., None]
      attr = jnp.sum(self.attr_table(jnp.maximum(keys, 0)) * kmask, -2)
      v = v + attr / jnp.maximum(jnp.sum(kmask, -2), 1.0)
    return jnp.where((item_ids >= 0)[..., None], v, 0.0)

  def encode_items(self, item_ids):
    """item_ids [N] -> [N, D]."""
    chex.assert_rank(item_ids, 1)
    if self.config.user_tower == "lightgcn":
      return self._normalize(self.graph_tables()[1][item_ids])
    return self._normalize(self._item_vectors(item_ids))

  def graph_tables(self):
    """lightgcn: (users [U, D], items [I, D]) after propagation, before normalisation."""
    c = self.config
    if self.graph is None:
      raise ValueError("user_tower='lightgcn' needs the training graph (TwoTower.graph)")
    items = self._item_vectors(jnp.arange(c.num_items))
    return propagate(self.user_table.embedding, items, self.graph, c.graph_layers)

  def corpus_logits(self, users: UserBatch, *, deterministic: bool = True):
    """[B, I] logits of every user against the whole corpus (one propagation for lightgcn)."""
    if self.config.user_tower == "lightgcn":
      tu, ti = self.graph_tables()
      return self.score(self._normalize(tu[users.user]), self._normalize(ti))
    items = self._normalize(self._item_vectors(jnp.arange(self.config.num_items)))
    return self.score(self.encode_users(users, deterministic=deterministic), items)

  def encode_positions(self, users: UserBatch, *, deterministic: bool = True):
    """Sequence tower at every position: [B, H, D]; position i has seen history[:, :i+1]."""
    c = self.config
    hist = users.history[:, -c.max_history:]
    mask = hist >= 0
    h = self._item_vectors(hist) * np.sqrt(c.embed_dim)
    h = h + self.position(jnp.arange(hist.shape[1]))[None]
    h = self.input_dropout(h, deterministic=deterministic) * mask[..., None]
    for block in self.blocks:
      h = block(h, mask, deterministic=deterministic) * mask[..., None]
    return self._normalize(self.final_norm(h))

  def encode_users(self, users: UserBatch, *, deterministic: bool = True):
    """UserBatch (B users, history [B, H]) -> [B, D]."""
    c = self.config
    chex.assert_rank([users.user, users.history], [1, 2])
    mask = users.history_mask
    if c.user_tower == "sequence":
      # History is right-aligned: the last slot holds the latest item.
      return self.encode_positions(users, deterministic=deterministic)[:, -1]
    if c.user_tower == "lightgcn":
      return self._normalize(self.graph_tables()[0][users.user])
    else:
      u = self.user_table(users.user)
      if c.user_tower == "id_pooled":
        pooled = jnp.sum(self._item_vectors(users.history), 1) / jnp.maximum(
            jnp.sum(mask, 1, keepdims=True), 1.0)
        u = u + (self.history_proj(pooled) if c.history_proj == "dense" else pooled)
    return self._normalize(u)

  def _normalize(self, x):
    return normalize(x, self.config.score)

  def score(self, user_repr, item_repr):
    """[B, D] x [N, D] -> [B, N] logits."""
    logits = jnp.einsum("bd,nd->bn", user_repr, item_repr)
    return logits / self.config.temperature if self.config.score == "cosine" else logits

  def encode_items_nd(self, item_ids):
    """item_ids of any shape [...] -> [..., D]."""
    return self._normalize(self._item_vectors(item_ids))

  def __call__(self, users: UserBatch, item_ids, *, deterministic: bool = True):
    """Logits [B, N] of every user against every item in item_ids [N]."""
    if self.config.user_tower == "lightgcn":  # one propagation for both sides
      tu, ti = self.graph_tables()
      return self.score(self._normalize(tu[users.user]), self._normalize(ti[item_ids]))
    return self.score(self.encode_users(users, deterministic=deterministic), self.encode_items(item_ids))


def make_scorer(model: TwoTower, params) -> Scorer:
  """Binds parameters; item reprs are [N, D] vectors (a serving score is one D-dot product)."""
  c = model.config
  variables = {"params": params}
  encode_users = lambda users: model.apply(variables, users, method=TwoTower.encode_users)
  encode_items = lambda ids: model.apply(variables, ids, method=TwoTower.encode_items)
  score = lambda u, v: model.apply(variables, u, v, method=TwoTower.score)
  if c.user_tower == "lightgcn":  # propagate once; serving reads the propagated tables
    tu, ti = jax.jit(lambda v: model.apply(v, method=TwoTower.graph_tables))(variables)
    encode_users = lambda users: normalize(tu[users.user], c.score)
    encode_items = lambda ids: normalize(ti[ids], c.score)
  cost = bound_scorer_flops(encode_users, encode_items, score, history_len=c.max_history,
                            num_user_features=0)
  return Scorer(encode_users=encode_users, encode_items=encode_items, score=score,
                flops_per_pair=cost.per_pair, flops_per_query=cost.per_query,
                flops_per_item=cost.per_item,
                name=f"two_tower_{c.score}")
