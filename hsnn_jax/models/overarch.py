"""DHEN-style OverArch: stacked ensembles of interaction modules over all tower outputs.

Inputs per (user, item) pair: user tower embeddings [E_u, D_u], item tower [E_i, D_i] and, when
present, interaction tower [E_ui, D_ui]. Every tower is first projected to a common size D_o so
the embeddings can be dotted with each other.

Layer 0 is an ensemble of two modules over the projected embeddings, summed and layer-normed:
  dot:  a linear map of all pairwise dot products between the embeddings,
  mlp:  a one-hidden-layer MLP over their concatenation.
Both start linear in their inputs, so the user-only and item-only terms (the dot products inside
the user tower's embeddings, the user's slice of the MLP's first matrix) are computed once per
user in `user_side` and once per item in `item_side`; `__call__` adds them and computes only the
cross terms per pair. This is exactly a dense layer on the concatenation, only cheaper.

Layer 0 yields S tokens of width W per pair [B, N, S, W]. Each further layer is an
`EnsembleBlock` (dot interaction among the tokens + MLP over their concatenation, summed, added
residually, layer-normed), and a linear head gives one logit per task [B, N, T].
"""

from __future__ import annotations

from typing import Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from hsnn_jax.models.tower import field_pairs

# Parameters of the user-side terms (OverArch.user_side), read by no item.
USER_SIDE_PARAMS = frozenset({"project_user", "dot_user", "mlp_user"})


def self_dots(tokens: jax.Array) -> jax.Array:
  """Dot products of every unordered pair of tokens: [..., E, D] -> [..., E (E - 1) / 2]."""
  rows, cols = field_pairs(tokens.shape[-2])
  if rows.size == 0:
    return jnp.zeros(tokens.shape[:-2] + (0,), tokens.dtype)
  gram = jnp.einsum("...ed,...fd->...ef", tokens, tokens)
  return gram[..., rows, cols]


class EnsembleBlock(nn.Module):
  """One residual DHEN layer over S tokens: [..., S, W] -> [..., S, W]."""

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    *batch, num_tokens, token_dim = tokens.shape
    width = num_tokens * token_dim
    flat = tokens.reshape(*batch, width)
    dot = nn.Dense(width, name="dot")(self_dots(tokens)) if num_tokens > 1 else 0.0
    mlp = nn.Dense(width, name="mlp_out")(nn.relu(nn.Dense(width, name="mlp_hidden")(flat)))
    return nn.LayerNorm(name="norm")(flat + dot + mlp).reshape(tokens.shape)


class OverArch(nn.Module):
  """Tower outputs -> per-task logits. See the module docstring for the split of work.

  dim: D_o, the common size the towers are projected to.
  num_tokens, token_dim: S and W, the per-pair state between layers.
  num_layers: >= 1; layer 0 plus num_layers - 1 `EnsembleBlock`s.
  """

  dim: int
  num_tokens: int
  token_dim: int
  num_layers: int
  num_tasks: int

  def setup(self):
    width = self.num_tokens * self.token_dim
    self.project_user = nn.Dense(self.dim)
    self.project_item = nn.Dense(self.dim)
    self.project_pair = nn.Dense(self.dim)
    self.dot_user = nn.Dense(width, use_bias=False)
    self.dot_item = nn.Dense(width, use_bias=False)
    self.dot_cross = nn.Dense(width)
    self.mlp_user = nn.Dense(width)
    self.mlp_item = nn.Dense(width, use_bias=False)
    self.mlp_pair = nn.Dense(width, use_bias=False)
    self.mlp_out = nn.Dense(width)
    self.norm = nn.LayerNorm()
    self.blocks = [EnsembleBlock() for _ in range(self.num_layers - 1)]
    self.head = nn.Dense(self.num_tasks)

  def _side(self, embeddings, project, dot, mlp) -> dict:
    tokens = project(embeddings)  # [M, E, D_o]
    dots = self_dots(tokens)
    width = self.num_tokens * self.token_dim
    dot_part = dot(dots) if dots.shape[-1] else jnp.zeros((tokens.shape[0], width), tokens.dtype)
    return {"tokens": tokens, "dot": dot_part, "mlp": mlp(tokens.reshape(tokens.shape[0], -1))}

  def user_side(self, user: jax.Array) -> dict:
    """[B, E_u, D_u] -> {'tokens': [B, E_u, D_o], 'dot': [B, S W], 'mlp': [B, S W]}."""
    chex.assert_rank(user, 3)
    return self._side(user, self.project_user, self.dot_user, self.mlp_user)

  def item_side(self, item: jax.Array) -> dict:
    """[N, E_i, D_i] -> the same dict with leading dim N."""
    chex.assert_rank(item, 3)
    return self._side(item, self.project_item, self.dot_item, self.mlp_item)

  def __call__(self, user: dict, item: dict, pair: Optional[jax.Array]) -> jax.Array:
    """user_side [B], item_side [N], interaction tower [B, N, E_ui, D_ui] or None -> [B, N, T]."""
    u, i = user["tokens"], item["tokens"]
    num_users, num_items = u.shape[0], i.shape[0]
    cross = [jnp.einsum("bed,nfd->bnef", u, i)]
    mlp_pre = user["mlp"][:, None] + item["mlp"][None, :]
    if pair is not None:
      chex.assert_shape(pair, (num_users, num_items, None, None))
      p = self.project_pair(pair)  # [B, N, E_ui, D_o]
      cross += [jnp.einsum("bed,bnfd->bnef", u, p), jnp.einsum("ned,bnfd->bnef", i, p),
                self_dots(p)]
      mlp_pre = mlp_pre + self.mlp_pair(p.reshape(num_users, num_items, -1))
    cross = jnp.concatenate([c.reshape(num_users, num_items, -1) for c in cross], axis=-1)
    dot = self.dot_cross(cross) + user["dot"][:, None] + item["dot"][None, :]
    mlp = self.mlp_out(nn.relu(mlp_pre))
    state = self.norm(dot + mlp).reshape(num_users, num_items, self.num_tokens, self.token_dim)
    for block in self.blocks:
      state = block(state)
    return self.head(state.reshape(num_users, num_items, -1))

