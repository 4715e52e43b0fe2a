"""Step schedules of the learned index: the assignment temperature and the index-loss warm-up.

Both are pure jnp functions of a (possibly traced) step, so they can live inside a jitted train
step without a host sync.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _progress(step, total_steps) -> jax.Array:
  """step / total_steps clipped to [0, 1], float32; total_steps <= 0 counts as already done."""
  step = jnp.asarray(step, jnp.float32)
  total = jnp.asarray(total_steps, jnp.float32)
  return jnp.where(total > 0, jnp.clip(step / jnp.maximum(total, 1.0), 0.0, 1.0), 1.0)


def alpha_schedule(step, max_steps, max_alpha: float, exponent: float = 1.0,
                   min_alpha: float = 1.0) -> jax.Array:
  """alpha_t = max(min_alpha, max_alpha * (t / max_steps) ** exponent), a float32 scalar.

  Small alpha early makes the assignment soft (every codeword gets gradient), large alpha late
  makes it nearly hard (what serving publishes). Without the floor alpha_0 = 0 would make the
  softmax exactly uniform at step 0: every item gets the same pseudo-item embedding and the
  codebook gets no signal about which item is near which codeword. Steps past max_steps stay
  at max_alpha.
  """
  return jnp.maximum(jnp.float32(min_alpha),
                     max_alpha * _progress(step, max_steps) ** jnp.float32(exponent))


def index_loss_weight(step, warmup_steps, final_weight: float) -> jax.Array:
  """Linear warm-up final_weight * min(1, t / warmup_steps); warmup_steps = 0 means none."""
  return jnp.float32(final_weight) * _progress(step, warmup_steps)
