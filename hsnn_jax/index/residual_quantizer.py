"""Residual quantization across index levels (METHOD.md §3, HSNN Eq. 5-7).

r_1 = v; level l assigns r_l to its own codebook giving c̄_l; r_{l+1} = r_l - c̄_l. The
reconstruction loss is ||sum_l c̄_l - v||^2 summed over the embedding, averaged over the batch
(the sum runs over all L levels; the paper's sum stopping one short is read as a typo).

Node embedding of level l (the pseudo item the level-l scorer sees in training) is the
cumulative sum sum_{j<=l} c̄_j. A level-l node is the code prefix (m_1..m_l), and the published
node embedding is the sum of the hard codewords along that prefix (see publish.py), so the
cumulative soft sum is its differentiable counterpart and tends to it as alpha grows. The
level-l codeword alone would only describe a residual, not the items under the node.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from hsnn_jax.index.assignment import AssignmentOutput, CrossAttentionAssignment
from hsnn_jax.index.config import IndexConfig


@flax.struct.dataclass
class ResidualQuantizerOutput:
  """levels: one AssignmentOutput per level (soft [B, K_l] differs in width, so not stacked).

  node_embeddings [B, L, d]: cumulative soft sums, the level-l pseudo-item embedding.
  codes [B, L] int32: hard codes, the item's path of codeword indices.
  reconstruction [B, d]: sum over levels of c̄_l (= node_embeddings[:, -1]).
  reconstruction_loss: scalar, mean over (unmasked) rows of ||reconstruction - v||^2.
  """

  levels: Tuple[AssignmentOutput, ...]
  node_embeddings: jax.Array
  codes: jax.Array
  reconstruction: jax.Array
  reconstruction_loss: jax.Array

  @property
  def soft(self) -> Tuple[jax.Array, ...]:
    return tuple(level.soft for level in self.levels)


class ResidualQuantizer(nn.Module):
  """L cross-attention levels applied to successive residuals.

  Params: 'level_0', ..., 'level_{L-1}', each holding 'codebook' [K_l, dim].

  Attributes:
    nodes_per_level: K_l per level, coarsest first; L = len(nodes_per_level).
    dim: embedding width d.
    distance, straight_through, init_scale: see CrossAttentionAssignment.
    stop_gradient_input: the index losses do not reach whatever produced the inputs (the item
      tower). Off for JOIM, on for SIL and EM's model step.
    freeze_codebooks: no gradient into the codebooks (a frozen SIL index).
  """

  nodes_per_level: Sequence[int]
  dim: int
  distance: str = "squared_l2"
  straight_through: bool = False
  init_scale: float = 0.02
  stop_gradient_input: bool = False
  freeze_codebooks: bool = False

  @classmethod
  def from_config(cls, config: IndexConfig, dim: int) -> "ResidualQuantizer":
    config.validate()
    return cls(nodes_per_level=tuple(config.nodes_per_level), dim=dim, distance=config.distance,
               straight_through=config.straight_through, init_scale=config.codebook_init_scale,
               stop_gradient_input=config.stop_gradient_input,
               freeze_codebooks=config.freeze_codebooks)

  @property
  def num_levels(self) -> int:
    return len(self.nodes_per_level)

  @nn.compact
  def __call__(self, inputs: jax.Array, alpha,
               mask: Optional[jax.Array] = None) -> ResidualQuantizerOutput:
    """inputs [B, dim]; alpha a scalar or [L] per-level temperature; mask [B] bool or None."""
    chex.assert_shape(inputs, (None, self.dim))
    alphas = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (self.num_levels,))
    target = inputs.astype(jnp.float32)
    if self.stop_gradient_input:
      target = jax.lax.stop_gradient(target)
    residual = target
    levels = []
    for l, num_nodes in enumerate(self.nodes_per_level):
      out = CrossAttentionAssignment(
          num_nodes=num_nodes, dim=self.dim, distance=self.distance,
          straight_through=self.straight_through, init_scale=self.init_scale,
          freeze_codebook=self.freeze_codebooks, name=f"level_{l}")(residual, alphas[l])
      levels.append(out)
      residual = residual - out.quantized
    node_embeddings = jnp.cumsum(jnp.stack([o.quantized for o in levels], axis=1), axis=1)
    reconstruction = node_embeddings[:, -1]
    per_row = jnp.sum((reconstruction - target)**2, axis=-1)
    if mask is None:
      loss = jnp.mean(per_row)
    else:
      chex.assert_shape(mask, (inputs.shape[0],))
      weights = mask.astype(jnp.float32)
      loss = jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    return ResidualQuantizerOutput(
        levels=tuple(levels), node_embeddings=node_embeddings,
        codes=jnp.stack([o.hard for o in levels], axis=1), reconstruction=reconstruction,
        reconstruction_loss=loss)


def prefix_softs(softs: Sequence[jax.Array]) -> Tuple[jax.Array, ...]:
  """Per-level soft assignments [B, K_l] -> soft assignments to the code prefixes (the index's
  nodes) [B, K_0 * ... * K_l]: the product of the levels' probabilities along the prefix,
  flattened row-major (prefix id = (m_0 * K_1 + m_1) * K_2 + ...)."""
  joint, out = None, []
  for soft in softs:
    joint = soft if joint is None else (joint[:, :, None] * soft[:, None, :]).reshape(
        soft.shape[0], -1)
    out.append(joint)
  return tuple(out)


def prefix_vectors(codebooks: Sequence[jax.Array]) -> Tuple[jax.Array, ...]:
  """Codebooks [K_l, d] -> per level the hard node embeddings of every code prefix
  [K_0 * ... * K_l, d] (the sum of the codewords along the prefix), in prefix_softs' order."""
  joint, out = None, []
  for book in codebooks:
    joint = book if joint is None else (joint[:, None, :] + book[None, :, :]).reshape(
        -1, book.shape[-1])
    out.append(joint)
  return tuple(out)


def prefix_ids(codes: jax.Array, nodes_per_level: Sequence[int]) -> jax.Array:
  """Hard codes [B, L] -> flat prefix ids [B, L] in prefix_softs' order (traceable)."""
  ids, prefix = [], jnp.zeros(codes.shape[:1], jnp.int32)
  for l, k in enumerate(nodes_per_level):
    prefix = prefix * k + codes[:, l]
    ids.append(prefix)
  return jnp.stack(ids, axis=1)


def set_codebooks(params, codebooks: Sequence[jax.Array]):
  """Returns ResidualQuantizer params (variables['params']) with 'level_l/codebook' replaced by
  codebooks[l], e.g. from `kmeans.residual_kmeans` (IndexConfig.codebook_init='kmeans').
  Shapes must match the existing params; the input is not modified.
  """
  params = dict(params)
  for l, codebook in enumerate(codebooks):
    old = params[f"level_{l}"]["codebook"]
    chex.assert_equal_shape([old, codebook])
    params[f"level_{l}"] = {**params[f"level_{l}"], "codebook": jnp.asarray(codebook, old.dtype)}
  return params


def get_codebooks(params) -> Tuple[jax.Array, ...]:
  """The codebooks [K_l, d] of ResidualQuantizer params, coarsest first."""
  return tuple(params[f"level_{l}"]["codebook"] for l in range(len(params)))
