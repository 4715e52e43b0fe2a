"""Hand-written FLOP formulas for MoNN, the oracle that `hsnn_jax.models.flops` is tested
against: they mirror tower.py, overarch.py and monn.py one matrix product at a time (what is
counted: see flops.py)."""

from __future__ import annotations

from typing import Sequence

from hsnn_jax.models.flops import Flops
from hsnn_jax.models.i2if import NUM_PAIR_FEATURES
from hsnn_jax.models.monn import NUM_ITEM_FIELDS, MoNN, MoNNConfig

# User tower fields besides the categorical user features: user id, mean history item, mean
# history key (monn.NUM_ITEM_FIELDS: item id, mean item key).
NUM_BASE_USER_FIELDS = 3


def _pairs(n: int) -> int:
  return n * (n - 1) // 2


def tower_flops(num_fields: int, field_dim: int, mlp_widths: Sequence[int], attention_dim: int,
                num_embed: int, dim: int) -> int:
  """One example through `tower.Tower`."""
  pairs = _pairs(num_fields)
  afm = (2 * pairs * field_dim * attention_dim + 2 * pairs * attention_dim
         + 2 * pairs * field_dim) if pairs else 0
  total, in_width = 0, num_fields * field_dim
  for width in mlp_widths:
    total += afm + 2 * (in_width + field_dim) * width + 2 * width * num_fields
    in_width = width
  return total + afm + 2 * (in_width + field_dim) * num_embed * dim


def overarch_side_flops(config: MoNNConfig, num_embed: int, dim: int) -> int:
  """One user (or item) through `OverArch.user_side` (`item_side`)."""
  width = config.overarch_tokens * config.overarch_token_dim
  total = 2 * num_embed * dim * config.overarch_dim  # projection
  if num_embed > 1:
    total += 2 * num_embed * num_embed * config.overarch_dim + 2 * _pairs(num_embed) * width
  return total + 2 * num_embed * config.overarch_dim * width  # MLP input slice


def overarch_pair_flops(config: MoNNConfig) -> int:
  """One (user, item) pair through `OverArch.__call__`."""
  e_u, e_i, e_ui = config.num_embed_user, config.num_embed_item, config.num_embed_ui
  d_o, tokens = config.overarch_dim, config.overarch_tokens
  width = tokens * config.overarch_token_dim
  num_cross, total = e_u * e_i, 2 * e_u * e_i * d_o
  if e_ui:
    total += 2 * e_ui * config.dim_ui * d_o + 2 * (e_u + e_i) * e_ui * d_o
    num_cross += (e_u + e_i) * e_ui + _pairs(e_ui)
    if e_ui > 1:
      total += 2 * e_ui * e_ui * d_o
    total += 2 * e_ui * d_o * width
  total += 2 * num_cross * width + 2 * width * width
  block = 4 * width * width
  if tokens > 1:
    block += 2 * tokens * tokens * config.overarch_token_dim + 2 * _pairs(tokens) * width
  return total + (config.overarch_layers - 1) * block + 2 * width * config.num_tasks


def interaction_flops(config: MoNNConfig, num_key_slots: int, history_len: int) -> int:
  """One pair's I2IF pooling and interaction tower."""
  d = config.field_dim
  total = 2 * NUM_PAIR_FEATURES * d
  if config.i2if_matched_keys:
    total += 2 * num_key_slots * d
  if config.i2if_history_pool:
    total += 2 * history_len * d
  return total + tower_flops(config.num_interaction_fields, d, config.ui_mlp,
                             config.afm_attention_dim, config.num_embed_ui, config.dim_ui)


def monn_flops(config: MoNNConfig, *, num_user_features: int, num_key_slots: int,
               history_len: int) -> Flops:
  """Per-query, per-item and per-pair FLOPs of `monn.MoNN` (history_len = H of UserBatch)."""
  c = config
  per_query = tower_flops(NUM_BASE_USER_FIELDS + num_user_features, c.field_dim, c.user_mlp,
                          c.afm_attention_dim, c.num_embed_user, c.dim_user)
  per_item = tower_flops(NUM_ITEM_FIELDS, c.field_dim, c.item_mlp, c.afm_attention_dim,
                         c.num_embed_item, c.dim_item)
  if not c.overarch_layers:
    return Flops(per_query, per_item, 2 * c.dim_user)
  per_query += overarch_side_flops(c, c.num_embed_user, c.dim_user)
  per_item += overarch_side_flops(c, c.num_embed_item, c.dim_item)
  per_pair = overarch_pair_flops(c)
  if c.num_embed_ui:
    per_pair += interaction_flops(c, num_key_slots, history_len)
  return Flops(per_query, per_item, per_pair)


def model_flops(model: MoNN, history_len: int) -> Flops:
  """monn_flops of a MoNN module: its user features, key slots and history length H."""
  return monn_flops(model.config, num_user_features=len(model.user_feature_sizes),
                    num_key_slots=int(model.item_keys.shape[1]), history_len=history_len)
