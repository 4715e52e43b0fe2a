"""One level of the learned index: cross-attention assignment of queries to codewords (§3).

The item embedding (or its residual) is the query; the codebook C [K, d] holds both keys and
values. With d_k the distance from the query to C_k:
  hard m      = argmin_k d_k                          (what serving publishes)
  soft a      = softmax(-alpha * d)                    (attention weights)
  quantized c̄ = sum_k a_k C_k                          (the pseudo-item / soft node embedding)
With `straight_through`, c̄ takes the value of the hard codeword C_m in the forward pass and
the gradient of the soft one in the backward pass.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from hsnn_jax.index.config import DISTANCES


@flax.struct.dataclass
class AssignmentOutput:
  """soft [B, K] float32, hard [B] int32, quantized [B, d] float32, distances [B, K] float32."""

  soft: jax.Array
  hard: jax.Array
  quantized: jax.Array
  distances: jax.Array


def pairwise_distances(queries: jax.Array, codebook: jax.Array,
                       distance: str = "squared_l2") -> jax.Array:
  """[B, K] distances between queries [B, d] and codewords [K, d], in float32.

  Uses ||q||^2 - 2 q.c + ||c||^2 (one matmul, no [B, K, d] tensor), clamped at 0 against
  rounding. The plain L2 distance clamps before the square root, whose gradient at 0 is infinite.
  """
  queries = queries.astype(jnp.float32)
  codebook = codebook.astype(jnp.float32)
  squared = (jnp.sum(queries**2, axis=-1, keepdims=True) - 2.0 * queries @ codebook.T
             + jnp.sum(codebook**2, axis=-1)[None, :])
  squared = jnp.maximum(squared, 0.0)
  if distance == "squared_l2":
    return squared
  if distance == "l2":
    return jnp.sqrt(jnp.maximum(squared, 1e-12))
  raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def assign(queries: jax.Array, codebook: jax.Array, alpha, distance: str = "squared_l2",
           straight_through: bool = False) -> AssignmentOutput:
  """Functional form of `CrossAttentionAssignment` for a given codebook [K, d]."""
  chex.assert_rank([queries, codebook], 2)
  chex.assert_equal(queries.shape[-1], codebook.shape[-1])
  codebook = codebook.astype(jnp.float32)
  distances = pairwise_distances(queries, codebook, distance)
  soft = jax.nn.softmax(-jnp.asarray(alpha, jnp.float32) * distances, axis=-1)
  hard = jnp.argmin(distances, axis=-1).astype(jnp.int32)
  quantized = soft @ codebook
  if straight_through:
    quantized = quantized + jax.lax.stop_gradient(codebook[hard] - quantized)
  return AssignmentOutput(soft=soft, hard=hard, quantized=quantized, distances=distances)


class CrossAttentionAssignment(nn.Module):
  """One assignment level with its own codebook param 'codebook' [num_nodes, dim].

  Attributes:
    num_nodes: K, the codebook size.
    dim: d, the embedding width.
    distance: 'squared_l2' or 'l2'.
    straight_through: hard codeword forward, soft gradient backward.
    init_scale: std of the normal codebook init; callers that initialise from k-means
      overwrite params['codebook'] after `init`.
    freeze_codebook: stop the gradient into the codebook (a frozen SIL index).
  """

  num_nodes: int
  dim: int
  distance: str = "squared_l2"
  straight_through: bool = False
  init_scale: float = 0.02
  freeze_codebook: bool = False

  @nn.compact
  def __call__(self, queries: jax.Array, alpha) -> AssignmentOutput:
    """queries [B, dim], alpha a scalar inverse temperature."""
    chex.assert_shape(queries, (None, self.dim))
    codebook = self.param("codebook", nn.initializers.normal(self.init_scale),
                          (self.num_nodes, self.dim), jnp.float32)
    if self.freeze_codebook:
      codebook = jax.lax.stop_gradient(codebook)
    return assign(queries, codebook, alpha, self.distance, self.straight_through)
