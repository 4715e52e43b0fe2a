"""The MoNN tower network: an MLP stacked with attentional factorization machines, EDCN-style.

A tower maps a set of F field embeddings [..., F, d] to `num_embed` embeddings of size `dim`
[..., E, D]. Every MLP layer is paired with an explicit-interaction layer (Enhanced DCN, Chen et
al. 2021), here an attentional factorization machine (AFM, Xiao et al. 2017) instead of a cross
layer:

  explicit_l = AFM(fields_l)                                 pairwise products, attention-pooled
  hidden_l   = relu(W_l [hidden_{l-1}; explicit_l])          bridge: the implicit layer reads it
  fields_l+1 = fields_l * 2 sigmoid(G_l hidden_l)            regulation: per-field gate (1 at init)

and the output layer reads [hidden_L; AFM(fields_L)]. `hidden_0` is the flattened fields.
"""

from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def field_pairs(num_fields: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and column indices of the F (F - 1) / 2 unordered field pairs."""
  return np.triu_indices(num_fields, k=1)


class AFMLayer(nn.Module):
  """Attentional FM pooling: [..., F, d] -> [..., d] (zeros when F < 2).

  Every pair's element-wise product v_i * v_j is scored by a one-hidden-layer attention net; the
  output is the softmax-weighted sum of the products.
  """

  attention_dim: int

  @nn.compact
  def __call__(self, fields: jax.Array) -> jax.Array:
    rows, cols = field_pairs(fields.shape[-2])
    if rows.size == 0:
      return jnp.zeros(fields.shape[:-2] + fields.shape[-1:], fields.dtype)
    products = fields[..., rows, :] * fields[..., cols, :]  # [..., P, d]
    hidden = nn.relu(nn.Dense(self.attention_dim, name="attention_hidden")(products))
    logits = nn.Dense(1, use_bias=False, name="attention_logit")(hidden)[..., 0]  # [..., P]
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("...p,...pd->...d", weights, products)


class Tower(nn.Module):
  """Field embeddings [..., F, d] -> tower embeddings [..., num_embed, dim]."""

  num_embed: int
  dim: int
  mlp_widths: Sequence[int]
  attention_dim: int

  @nn.compact
  def __call__(self, fields: jax.Array) -> jax.Array:
    chex.assert_rank(fields, {2, 3, 4})
    *batch, num_fields, field_dim = fields.shape
    hidden = fields.reshape(*batch, num_fields * field_dim)
    for layer, width in enumerate(self.mlp_widths):
      explicit = AFMLayer(self.attention_dim, name=f"afm_{layer}")(fields)
      hidden = nn.relu(nn.Dense(width, name=f"mlp_{layer}")(
          jnp.concatenate([hidden, explicit], axis=-1)))
      gate = 2.0 * jax.nn.sigmoid(nn.Dense(num_fields, name=f"gate_{layer}")(hidden))
      fields = fields * gate[..., None]
    explicit = AFMLayer(self.attention_dim, name="afm_out")(fields)
    out = nn.Dense(self.num_embed * self.dim, name="out")(
        jnp.concatenate([hidden, explicit], axis=-1))
    return out.reshape(*batch, self.num_embed, self.dim)
