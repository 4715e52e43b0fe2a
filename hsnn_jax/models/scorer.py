"""The scorer contract shared by training losses, evaluation, retrieval and benchmarks.

Every model (two-tower, MoNN, one HSNN level) is exposed for retrieval as a `Scorer`: three
pure, jit-able functions with the parameters already bound, plus its cost per query.

  encode_users(users: UserBatch) -> user_repr   pytree, every leaf has leading dim B
  encode_items(item_ids [N] int32) -> item_repr  pytree, every leaf has leading dim N
  score(user_repr (B), item_repr (N)) -> [B, N] float32 logits for every (user, item) pair

A dot-product two-tower model has user_repr [B, D], item_repr [N, D] and score = u @ v.T.
Learned scorers (MoNN) carry whatever their interaction tower needs (e.g. the user's engaged
attribute keys in user_repr, the item's keys in item_repr) and compute pair features inside
`score`, so exhaustive search, beam search and the two-stage baseline can all call the same
function on any candidate set. Item reprs do not depend on the user, so a corpus can be
encoded once and sliced.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

PyTree = Any


@chex.dataclass(frozen=True)
class UserBatch:
  """What a user tower may read. B users.

  user:     [B] int32 dense user id.
  history:  [B, H] int32 item ids the user engaged with, RIGHT-aligned: the most recent item
            in the last slot, -1 padding at the front.
  features: [B, F] int32 categorical user features (0 = unknown); F may be 0.
  """

  user: chex.Array
  history: chex.Array
  features: chex.Array

  @property
  def history_mask(self) -> chex.Array:
    return self.history >= 0


@dataclasses.dataclass(frozen=True)
class Scorer:
  """Retrieval view of a trained model. See the module docstring.

  flops_per_pair: scoring FLOPs for one (user, item) pair once both reprs exist (the part
    that grows with the number of items scored).
  flops_per_item: item-tower FLOPs per item (zero at serving time when item reprs are cached).
  flops_per_query: once-per-query FLOPs (the user tower).
  """

  encode_users: Callable[[UserBatch], PyTree]
  encode_items: Callable[[jax.Array], PyTree]
  score: Callable[[PyTree, PyTree], jax.Array]
  flops_per_pair: int
  flops_per_query: int = 0
  flops_per_item: int = 0
  name: str = "scorer"


def add_scorers(a: Scorer, b: Scorer, weight_b: float = 1.0) -> Scorer:
  """The Scorer of a.score + weight_b * b.score: reprs are (a's, b's) pairs, costs add up."""

  def encode_users(users: UserBatch) -> PyTree:
    return a.encode_users(users), b.encode_users(users)

  def encode_items(item_ids: jax.Array) -> PyTree:
    return a.encode_items(item_ids), b.encode_items(item_ids)

  def score(user: PyTree, item: PyTree) -> jax.Array:
    return a.score(user[0], item[0]) + weight_b * b.score(user[1], item[1])

  return Scorer(encode_users=encode_users, encode_items=encode_items, score=score,
                flops_per_pair=a.flops_per_pair + b.flops_per_pair,
                flops_per_query=a.flops_per_query + b.flops_per_query,
                flops_per_item=a.flops_per_item + b.flops_per_item, name=f"{a.name}+{b.name}")


def take_reprs(repr_tree: PyTree, idx: jax.Array) -> PyTree:
  """Gathers rows of every leaf: leaf[idx] (idx of any shape, leaf leading dim N)."""
  return jax.tree.map(lambda x: jnp.take(x, idx, axis=0, mode="clip"), repr_tree)


def repr_batch_size(repr_tree: PyTree) -> int:
  return jax.tree.leaves(repr_tree)[0].shape[0]
