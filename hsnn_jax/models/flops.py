"""FLOP accounting for every Scorer, read from its jaxpr.

What is counted: every matrix product (each `dot_general`: dense layers, einsum poolings, dot
products between embeddings) as 2 * m * n * k, i.e. one multiply and one add per term. Not
counted: bias adds, activations, softmax, layer norms, element-wise gates, reductions, embedding
gathers, scatter-adds and integer compares. `scorer_flops` traces a scorer's three functions on
one user and one item, so every model (two-tower, MoNN, an HSNN level) is counted the same way;
tests/flops_oracle.py mirrors MoNN's modules one matrix product at a time as a check.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp

from hsnn_jax.models.scorer import UserBatch


class Flops(NamedTuple):
  per_query: int  # encode_users: the user tower (and user-only terms), once per user
  per_item: int  # encode_items: the item tower (and item-only terms), once per item
  per_pair: int  # everything in `score`, per (user, item) pair


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


def scorer_flops(encode_users: Callable, encode_items: Callable, score: Callable,
                 params: Any = None, *, history_len: int, num_user_features: int) -> Flops:
  """Per-query, per-item and per-pair matmul FLOPs of a scorer's three functions, each taking
  (params, inputs), traced on one user (history [1, history_len], features
  [1, num_user_features]) and one item. params may be abstract (ShapeDtypeStructs) or None."""
  users = UserBatch(user=jnp.zeros((1,), jnp.int32),
                    history=jnp.zeros((1, history_len), jnp.int32),
                    features=jnp.zeros((1, num_user_features), jnp.int32))
  item = jnp.zeros((1,), jnp.int32)
  user_repr = jax.eval_shape(encode_users, params, users)
  item_repr = jax.eval_shape(encode_items, params, item)
  return Flops(per_query=count_matmul_flops(encode_users, params, users),
               per_item=count_matmul_flops(encode_items, params, item),
               per_pair=count_matmul_flops(score, params, user_repr, item_repr))


def bound_scorer_flops(encode_users: Callable, encode_items: Callable, score: Callable, *,
                       history_len: int, num_user_features: int) -> Flops:
  """scorer_flops of functions with their parameters already bound (a Scorer's three)."""
  bound = lambda fn: lambda _, *args: fn(*args)
  return scorer_flops(bound(encode_users), bound(encode_items), bound(score),
                      history_len=history_len, num_user_features=num_user_features)
