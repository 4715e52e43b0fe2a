"""MoNN, the modular scorer (METHOD.md §1): user, item and interaction towers plus an OverArch.

  encode_users(UserBatch)   -> UserRepr   user tower [B, E_u, D_u], the OverArch's user-only
                                          terms, the I2IF key profile and history keys
  encode_items(item_ids[N]) -> ItemRepr   item tower [N, E_i, D_i], the OverArch's item-only
                                          terms, the item's I2IF keys
  score(UserRepr, ItemRepr) -> [B, N, T]  logits per task for every (user, item) pair

Tower inputs are field embeddings of size `field_dim`: user id, mean history item, mean history
key and one field per categorical user feature for the user tower; item id and mean item key for
the item tower; the projected I2IF pair features, the mean embedding of the item keys the user
engaged with and the mean embedding of the history items sharing a key with the item for the
interaction tower. `overarch_layers = 0` is the two-tower special case: score = s_t <u, v> + b_t.

Item keys (I2IF attributes, or learned index node ids for attribute-free data) are a module
attribute `item_keys` [num_items, A] int32, -1 padded. It is a constant of the model, not a
parameter: a function that calls `model.apply` is traced once with the keys baked in, and jit
does not retrace per call. To use different keys (e.g. a re-published index), make a new model
with `model.clone(item_keys=...)`; the params stay valid as long as num_keys does not change.

Widths are [ours]; the presets follow the embedding counts and sizes of HSNN Table 5.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.data.types import RecDataset
from hsnn_jax.models import flops as flops_lib
from hsnn_jax.models import i2if
from hsnn_jax.models import overarch as overarch_lib
from hsnn_jax.models.overarch import OverArch
from hsnn_jax.models.scorer import Scorer, UserBatch
from hsnn_jax.models.tower import Tower


@dataclasses.dataclass(frozen=True)
class MoNNConfig:
  """Architecture of one MoNN. `validate()` raises ValueError naming the offending field."""

  name: str = "monn_small"
  num_embed_user: int = 8
  dim_user: int = 40
  num_embed_item: int = 1
  dim_item: int = 40
  num_embed_ui: int = 1  # 0: no interaction tower
  dim_ui: int = 40
  field_dim: int = 32  # size of every input field embedding
  user_mlp: Tuple[int, ...] = (256, 128)
  item_mlp: Tuple[int, ...] = (128,)
  ui_mlp: Tuple[int, ...] = (64,)
  afm_attention_dim: int = 16
  overarch_layers: int = 2  # 0: plain dot product of the (single) user and item embeddings
  overarch_dim: int = 32  # D_o, common size of the projected tower embeddings
  overarch_tokens: int = 4  # S tokens of width W carried between OverArch layers
  overarch_token_dim: int = 16
  num_tasks: int = 1
  i2if_matched_keys: bool = True  # interaction field: mean embedding of the matched item keys
  i2if_history_pool: bool = True  # interaction field: mean of the key-matched history items

  @property
  def num_interaction_fields(self) -> int:
    return 1 + int(self.i2if_matched_keys) + int(self.i2if_history_pool)

  def validate(self) -> MoNNConfig:
    positive = ["num_embed_user", "dim_user", "num_embed_item", "dim_item", "field_dim",
                "afm_attention_dim", "num_tasks"]
    if self.num_embed_ui:
      positive.append("dim_ui")
    if self.overarch_layers:
      positive += ["overarch_dim", "overarch_tokens", "overarch_token_dim"]
    for field in positive:
      if getattr(self, field) < 1:
        raise ValueError(f"MoNNConfig.{field} must be >= 1, got {getattr(self, field)}")
    for field in ("num_embed_ui", "overarch_layers"):
      if getattr(self, field) < 0:
        raise ValueError(f"MoNNConfig.{field} must be >= 0, got {getattr(self, field)}")
    for field in ("user_mlp", "item_mlp", "ui_mlp"):
      if any(int(w) < 1 for w in getattr(self, field)):
        raise ValueError(f"MoNNConfig.{field} widths must be >= 1, got {getattr(self, field)}")
    if not self.overarch_layers:
      if self.num_embed_ui:
        raise ValueError("MoNNConfig.num_embed_ui must be 0 without an OverArch")
      for field in ("num_embed_user", "num_embed_item"):
        if getattr(self, field) != 1:
          raise ValueError(f"MoNNConfig.{field} must be 1 for the dot product (overarch_layers=0)")
      if self.dim_user != self.dim_item:
        raise ValueError("MoNNConfig.dim_item must equal dim_user for the dot product")
    return self


_PRESETS = {
    "two_tower_tiny": MoNNConfig(
        name="two_tower_tiny", num_embed_user=1, dim_user=40, num_embed_item=1, dim_item=40,
        num_embed_ui=0, user_mlp=(128,), item_mlp=(128,), overarch_layers=0),
    "monn_small": MoNNConfig(name="monn_small"),
    "monn_medium": MoNNConfig(
        name="monn_medium", num_embed_user=10, dim_user=48, num_embed_item=4, dim_item=48,
        dim_ui=48, field_dim=48, user_mlp=(512, 256), item_mlp=(256,), overarch_dim=48,
        overarch_token_dim=32),
    "monn_large": MoNNConfig(
        name="monn_large", num_embed_user=30, dim_user=48, num_embed_item=8, dim_item=48,
        dim_ui=48, field_dim=48, user_mlp=(1024, 512), item_mlp=(512, 256), ui_mlp=(128,),
        overarch_layers=3, overarch_dim=48, overarch_tokens=6, overarch_token_dim=32),
    "monn_xl": MoNNConfig(
        name="monn_xl", num_embed_user=80, dim_user=96, num_embed_item=4, dim_item=96,
        dim_ui=96, field_dim=64, user_mlp=(2048, 1024), item_mlp=(512, 256), ui_mlp=(128,),
        overarch_layers=3, overarch_dim=64, overarch_tokens=8, overarch_token_dim=32),
}
# Public-data sizes for a CPU budget [ours]: Table 5's embedding counts and tower widths, with
# the per-pair work cut (measured on Beauty, README "Training cost"): narrower fields, interaction
# and OverArch state, one OverArch layer, and no key-matched history pool (the I2IF feature whose
# [B, N, H, A, A] key comparison dominated full-corpus scoring).
_LITE = dict(ui_mlp=(), overarch_layers=1, overarch_tokens=2, i2if_history_pool=False)
_PRESETS["monn_small_lite"] = dataclasses.replace(
    _PRESETS["monn_small"], name="monn_small_lite", field_dim=16, dim_ui=16, overarch_dim=16,
    **_LITE)
_PRESETS["monn_medium_lite"] = dataclasses.replace(
    _PRESETS["monn_medium"], name="monn_medium_lite", field_dim=24, dim_ui=24, overarch_dim=24,
    **_LITE)
PRESET_NAMES = tuple(_PRESETS)

# The item tower's fields: the item id's embedding and the mean of its keys' embeddings.
NUM_ITEM_FIELDS = 2
# Parameters read only by the user side (test-time training fine-tunes these).
USER_SIDE_PARAMS = frozenset({"user_embed", "feature_embed", "user_tower"}) | (
    overarch_lib.USER_SIDE_PARAMS)


def monn_preset(preset: str, **overrides: Any) -> MoNNConfig:
  """A Table 5 size by name (see PRESET_NAMES), with optional field overrides (e.g. num_tasks)."""
  if preset not in _PRESETS:
    raise ValueError(f"unknown MoNN preset {preset!r}; known: {', '.join(PRESET_NAMES)}")
  return dataclasses.replace(_PRESETS[preset], **overrides).validate()


@flax.struct.dataclass
class UserRepr:
  """B users. Fields the config does not need are None."""

  tower: jax.Array  # [B, E_u, D_u]
  overarch: Optional[dict] = None  # OverArch.user_side: tokens [B, E_u, D_o], dot/mlp [B, S W]
  profile: Optional[jax.Array] = None  # [B, num_keys] I2IF key shares
  hist_keys: Optional[jax.Array] = None  # [B, H, A] keys of the history items, -1 padded
  hist_emb: Optional[jax.Array] = None  # [B, H, field_dim] history item embeddings (0 at pad)


@flax.struct.dataclass
class ItemRepr:
  """N items. Fields the config does not need are None."""

  tower: jax.Array  # [N, E_i, D_i]
  overarch: Optional[dict] = None  # OverArch.item_side, leading dim N
  keys: Optional[jax.Array] = None  # [N, A] the item's I2IF keys, -1 padded


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """[..., L, d], [..., L] bool -> [..., d]; zeros where nothing is valid."""
  weights = mask.astype(values.dtype)
  total = jnp.sum(values * weights[..., None], axis=-2)
  return total / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)[..., None]


class MoNN(nn.Module):
  """See the module docstring. `__call__(users, item_ids)` = score of all pairs, for init."""

  config: MoNNConfig
  item_keys: Any  # [num_items, A] int32, -1 padded: a constant (module docstring)
  num_keys: int
  num_users: int
  user_feature_sizes: Tuple[int, ...] = ()  # vocabulary of each UserBatch.features column

  @property
  def num_items(self) -> int:
    return int(self.item_keys.shape[0])

  def setup(self):
    c = self.config.validate()
    d = c.field_dim
    self.user_embed = nn.Embed(self.num_users, d)
    self.item_embed = nn.Embed(self.num_items, d)
    self.key_embed = nn.Embed(max(self.num_keys, 1), d)
    if self.user_feature_sizes:
      self.feature_embed = nn.Embed(int(sum(self.user_feature_sizes)), d)
    self.user_tower = Tower(c.num_embed_user, c.dim_user, c.user_mlp, c.afm_attention_dim)
    self.item_tower = Tower(c.num_embed_item, c.dim_item, c.item_mlp, c.afm_attention_dim)
    if c.num_embed_ui:
      self.pair_dense = nn.Dense(d)
      self.ui_tower = Tower(c.num_embed_ui, c.dim_ui, c.ui_mlp, c.afm_attention_dim)
    if c.overarch_layers:
      self.overarch = OverArch(c.overarch_dim, c.overarch_tokens, c.overarch_token_dim,
                               c.overarch_layers, c.num_tasks)
    else:
      self.task_scale = self.param("task_scale", nn.initializers.ones, (c.num_tasks,))
      self.task_bias = self.param("task_bias", nn.initializers.zeros, (c.num_tasks,))

  def _table(self) -> jax.Array:
    return jnp.asarray(self.item_keys, jnp.int32)

  def _mean_key_embedding(self, keys: jax.Array) -> jax.Array:
    """[..., A] keys -> [..., d], each distinct valid key once."""
    return _masked_mean(self.key_embed(jnp.maximum(keys, 0)), i2if.first_occurrence(keys))

  def user_fields(self, users: UserBatch) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """-> fields [B, F_u, d], history keys [B, H, A], history item embeddings [B, H, d]."""
    history = users.history
    mask = history >= 0
    hist_emb = self.item_embed(jnp.maximum(history, 0)) * mask[..., None]
    hist_keys = i2if.history_keys(history, self._table())
    hist_item_keys = self._mean_key_embedding(hist_keys)  # [B, H, d]
    hist_has_keys = jnp.any(hist_keys >= 0, axis=-1)
    fields = [self.user_embed(users.user), _masked_mean(hist_emb, mask),
              _masked_mean(hist_item_keys, hist_has_keys)]
    fields = jnp.stack(fields, axis=1)
    if self.user_feature_sizes:
      sizes = np.asarray(self.user_feature_sizes)
      offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
      index = jnp.clip(users.features, 0, sizes - 1) + offsets
      fields = jnp.concatenate([fields, self.feature_embed(index)], axis=1)
    return fields, hist_keys, hist_emb

  def encode_users(self, users: UserBatch) -> UserRepr:
    chex.assert_rank([users.user, users.history, users.features], [1, 2, 2])
    chex.assert_equal(users.features.shape[1], len(self.user_feature_sizes))
    c = self.config
    fields, hist_keys, hist_emb = self.user_fields(users)
    tower = self.user_tower(fields)
    if not c.overarch_layers:
      return UserRepr(tower=tower)
    overarch = self.overarch.user_side(tower)
    if not c.num_embed_ui:
      return UserRepr(tower=tower, overarch=overarch)
    pool = c.i2if_history_pool
    return UserRepr(tower=tower, overarch=overarch,
                    profile=i2if.user_key_profile(users.history, self._table(), self.num_keys),
                    hist_keys=hist_keys if pool else None, hist_emb=hist_emb if pool else None)

  def encode_items(self, item_ids: jax.Array) -> ItemRepr:
    """[N] valid item ids -> ItemRepr (callers mask the scores of padded candidates)."""
    chex.assert_rank(item_ids, 1)
    c = self.config
    ids = jnp.maximum(item_ids, 0)
    keys = jnp.take(self._table(), ids, axis=0, mode="clip")
    fields = jnp.stack([self.item_embed(ids), self._mean_key_embedding(keys)], axis=1)
    tower = self.item_tower(fields)
    if not c.overarch_layers:
      return ItemRepr(tower=tower)
    return ItemRepr(tower=tower, overarch=self.overarch.item_side(tower),
                    keys=keys if c.num_embed_ui else None)

  def interaction(self, user: UserRepr, item: ItemRepr) -> jax.Array:
    """Interaction tower on I2IF pair features -> [B, N, E_ui, D_ui]."""
    c = self.config
    shares, valid = i2if.candidate_shares(user.profile, item.keys)  # [B, N, A], [N, A]
    fields = [self.pair_dense(i2if.pool_shares(shares, valid))]
    if c.i2if_matched_keys:
      matched = (shares > 0).astype(shares.dtype)
      matched = matched / jnp.maximum(jnp.sum(matched, axis=-1, keepdims=True), 1.0)
      key_emb = self.key_embed(jnp.maximum(item.keys, 0))  # [N, A, d]
      fields.append(jnp.einsum("bna,nad->bnd", matched, key_emb))
    if c.i2if_history_pool:
      match = i2if.history_match_mask(user.hist_keys, item.keys)
      fields.append(i2if.restricted_history_pool(match, user.hist_emb))
    return self.ui_tower(jnp.stack(fields, axis=2))

  def score_and_interaction(self, user: UserRepr, item: ItemRepr
                            ) -> Tuple[jax.Array, Optional[jax.Array]]:
    """All pairs: B users x N items -> logits [B, N, num_tasks] and the interaction tower's
    output [B, N, E_ui, D_ui] (None without one). Subclasses change `interaction` only."""
    c = self.config
    if not c.overarch_layers:
      dots = jnp.einsum("bd,nd->bn", user.tower[:, 0], item.tower[:, 0])
      return dots[..., None] * self.task_scale + self.task_bias, None
    pair = self.interaction(user, item) if c.num_embed_ui else None
    return self.overarch(user.overarch, item.overarch, pair), pair

  def score(self, user: UserRepr, item: ItemRepr) -> jax.Array:
    """All pairs: B users x N items -> [B, N, num_tasks] logits."""
    return self.score_and_interaction(user, item)[0]

  def __call__(self, users: UserBatch, item_ids: jax.Array) -> jax.Array:
    return self.score(self.encode_users(users), self.encode_items(item_ids))

  @classmethod
  def for_dataset(cls, config: MoNNConfig, dataset: RecDataset,
                  max_keys: Optional[int] = None) -> MoNN:
    """A MoNN whose I2IF keys are the dataset's item attributes (none: every item keyless)."""
    if dataset.item_attrs is None:
      item_keys, num_keys = np.full((dataset.num_items, 1), -1, np.int32), 1
    else:
      item_keys, _ = dataset.item_attrs.to_padded(max_keys, keep="first")
      num_keys = dataset.num_attrs
    return cls(config=config, item_keys=jnp.asarray(item_keys), num_keys=num_keys,
               num_users=dataset.num_users,
               user_feature_sizes=tuple(int(s) for s in dataset.user_feature_sizes))


def zero_output(params: Any) -> Any:
  """MoNN params with the output layer zeroed (OverArch head, or the dot product's task
  scale): every logit is 0 until it trains, so a residual model starts exactly at its base."""
  params = dict(params)
  if "overarch" in params:
    head = jax.tree.map(jnp.zeros_like, params["overarch"]["head"])
    params["overarch"] = {**params["overarch"], "head": head}
  else:
    params["task_scale"] = jnp.zeros_like(params["task_scale"])
  return params


def pair_logits(model: MoNN, params: Any, users: UserBatch, item_ids: jax.Array) -> jax.Array:
  """Aligned training pairs: user b with item_ids[b] -> [B, num_tasks] logits."""
  variables = {"params": params}
  user = model.apply(variables, users, method=MoNN.encode_users)
  item = model.apply(variables, item_ids, method=MoNN.encode_items)

  def one(u, i):
    single = lambda x: x[None]
    u, i = jax.tree.map(single, u), jax.tree.map(single, i)
    return model.apply(variables, u, i, method=MoNN.score)[0, 0]

  return jax.vmap(one)(user, item)


def model_flops(model: MoNN, history_len: int, params: Any = None) -> flops_lib.Flops:
  """Matmul FLOPs of `model`'s scorer for users with histories padded to `history_len`."""
  if params is None:
    users = UserBatch(user=jnp.zeros((1,), jnp.int32),
                      history=jnp.zeros((1, history_len), jnp.int32),
                      features=jnp.zeros((1, len(model.user_feature_sizes)), jnp.int32))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), users,
                            jnp.zeros((1,), jnp.int32))["params"]
  apply = lambda method: lambda p, *args: model.apply({"params": p}, *args, method=method)
  return flops_lib.scorer_flops(apply(MoNN.encode_users), apply(MoNN.encode_items),
                                apply(MoNN.score), params, history_len=history_len,
                                num_user_features=len(model.user_feature_sizes))


def make_scorer(model: MoNN, params: Any, *, task: int = 0,
                task_weights: Optional[Sequence[float]] = None,
                history_len: Optional[int] = None) -> Scorer:
  """The retrieval view of a trained MoNN: score = logits[..., task], or sum_t w_t logits[..., t].

  history_len: H of the UserBatches that will be scored; needed for the FLOP count when the
  interaction tower pools the history (its cost per pair grows with H).
  """
  c = model.config
  if not 0 <= task < c.num_tasks:
    raise ValueError(f"task {task} out of range for num_tasks={c.num_tasks}")
  if task_weights is not None and len(task_weights) != c.num_tasks:
    raise ValueError(f"task_weights has {len(task_weights)} entries, num_tasks={c.num_tasks}")
  if history_len is None:
    if c.num_embed_ui and c.i2if_history_pool and c.overarch_layers:
      raise ValueError("history_len is needed to count the interaction tower's FLOPs")
    history_len = 0
  variables = {"params": params}
  weights = None if task_weights is None else jnp.asarray(task_weights, jnp.float32)

  def encode_users(users: UserBatch) -> UserRepr:
    return model.apply(variables, users, method=MoNN.encode_users)

  def encode_items(item_ids: jax.Array) -> ItemRepr:
    return model.apply(variables, item_ids, method=MoNN.encode_items)

  def score(user: UserRepr, item: ItemRepr) -> jax.Array:
    logits = model.apply(variables, user, item, method=MoNN.score)
    return logits[..., task] if weights is None else jnp.sum(logits * weights, axis=-1)

  cost = model_flops(model, history_len, params)
  return Scorer(encode_users=encode_users, encode_items=encode_items, score=score,
                flops_per_pair=cost.per_pair, flops_per_query=cost.per_query,
                flops_per_item=cost.per_item, name=c.name)
