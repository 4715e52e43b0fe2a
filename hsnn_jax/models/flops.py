"""FLOP accounting for MoNN, from the config alone, and a jaxpr counter that checks it.

What is counted: every matrix product (each `dot_general`: dense layers, einsum poolings, dot
products between embeddings) as 2 * m * n * k, i.e. one multiply and one add per term. Not
counted: bias adds, activations, softmax, layer norms, element-wise gates, jnp.sum reductions,
embedding gathers, the I2IF scatter-add and the key comparisons of the history match mask
(O(H A^2) per pair, integer compares). The formulas below mirror the modules in tower.py,
overarch.py and monn.py one matrix product at a time; `count_matmul_flops` counts the same thing
from a traced function, and tests/test_monn.py checks that they agree for every preset.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import jax
import jax.extend.core as jex

from hsnn_jax.models.i2if import NUM_PAIR_FEATURES

if TYPE_CHECKING:
  from hsnn_jax.models.monn import MoNNConfig

# User tower fields besides the categorical user features: user id, mean history item, mean
# history key. Item tower fields: item id, mean item key.
NUM_BASE_USER_FIELDS = 3
NUM_ITEM_FIELDS = 2


class Flops(NamedTuple):
  per_query: int  # user tower + the OverArch's user-only terms, once per user
  per_item: int  # item tower + the OverArch's item-only terms, once per item
  per_pair: int  # everything in `score`: I2IF pooling, interaction tower, OverArch cross terms


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


def _jaxpr_matmul_flops(jaxpr: jex.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      rhs_free = [n for a, n in enumerate(rhs) if a not in rhs_contract and a not in rhs_batch]
      total += 2 * math.prod(lhs) * math.prod(rhs_free)
      continue
    repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (tuple, list)) else (param,)):
        if isinstance(sub, jex.ClosedJaxpr):
          total += repeat * _jaxpr_matmul_flops(sub.jaxpr)
        elif isinstance(sub, jex.Jaxpr):
          total += repeat * _jaxpr_matmul_flops(sub)
  return total


def count_matmul_flops(fn: Callable[..., Any], *args: Any) -> int:
  """Matrix-product FLOPs of fn(*args), read from its jaxpr (args may be ShapeDtypeStructs).

  Sub-computations (jit, custom_jvp, scan bodies) are included; both branches of a cond would
  be summed, so use it on branch-free code.
  """
  return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)
