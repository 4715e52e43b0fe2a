"""The balance ("FLOPs") regularizer against index collapse, pooled over recent batches (§3).

loss = sum_k (mean soft assignment to node k)^2, where the mean runs over the rows of the
current batch and of the W-1 batches before it, stacked together. A perfectly uniform
assignment gives K * (1/K)^2 = 1/K; everything on one node gives 1.

The window lives in the train state as a ring buffer of per-batch column sums [W-1, K] and row
counts [W-1]. The mean over stacked rows is (sum of column sums) / (sum of counts), which is
exact for any batch sizes and masks, at O(W K) memory instead of O(W B K). Past batches are
stored under stop_gradient: their parameters are gone, so only the current batch's term
carries gradient (through the current soft assignment), weighted by its share of the rows.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class BalanceWindow:
  """Past batches of one index level. sums [W-1, K] float32, counts [W-1] float32 (0 = empty
  slot), position: int32 scalar, the slot the next batch overwrites."""

  sums: jax.Array
  counts: jax.Array
  position: jax.Array

  @property
  def window_size(self) -> int:
    """W: the past slots plus the current batch."""
    return int(self.sums.shape[0]) + 1


def init_window(window_size: int, num_nodes: int) -> BalanceWindow:
  """An empty window pooling `window_size` batches (the current one included)."""
  if window_size < 1:
    raise ValueError(f"window_size must be >= 1, got {window_size}")
  past = window_size - 1
  return BalanceWindow(sums=jnp.zeros((past, num_nodes), jnp.float32),
                       counts=jnp.zeros((past,), jnp.float32),
                       position=jnp.zeros((), jnp.int32))


def _batch_sums(soft: jax.Array, mask: Optional[jax.Array]) -> Tuple[jax.Array, jax.Array]:
  """Column sums [K] and row count of soft [B, K] over the rows where mask [B] is true."""
  chex.assert_rank(soft, 2)
  soft = soft.astype(jnp.float32)
  if mask is None:
    return jnp.sum(soft, axis=0), jnp.float32(soft.shape[0])
  chex.assert_shape(mask, (soft.shape[0],))
  weights = mask.astype(jnp.float32)
  return weights @ soft, jnp.sum(weights)


def update_window(window: BalanceWindow, soft: jax.Array,
                  mask: Optional[jax.Array] = None) -> BalanceWindow:
  """Stores the batch soft [B, K] (without gradient), overwriting the oldest slot."""
  chex.assert_equal(soft.shape[-1], window.sums.shape[-1])
  past = window.sums.shape[0]
  if past == 0:
    return window
  sums, count = _batch_sums(jax.lax.stop_gradient(soft), mask)
  return BalanceWindow(sums=window.sums.at[window.position].set(sums),
                       counts=window.counts.at[window.position].set(count),
                       position=(window.position + 1) % past)


def balance_loss(window: BalanceWindow, soft: jax.Array,
                 mask: Optional[jax.Array] = None) -> jax.Array:
  """sum_k pooled_mean_k^2 over the current soft [B, K] and the stored batches; a scalar."""
  chex.assert_equal(soft.shape[-1], window.sums.shape[-1])
  sums, count = _batch_sums(soft, mask)
  total = sums + jnp.sum(window.sums, axis=0)
  mean = total / jnp.maximum(count + jnp.sum(window.counts), 1.0)
  return jnp.sum(mean**2)


def init_windows(window_size: int, nodes_per_level: Sequence[int]) -> Tuple[BalanceWindow, ...]:
  """One window per index level."""
  return tuple(init_window(window_size, k) for k in nodes_per_level)


def balance_loss_and_update(windows: Sequence[BalanceWindow], softs: Sequence[jax.Array],
                            mask: Optional[jax.Array] = None
                            ) -> Tuple[jax.Array, Tuple[BalanceWindow, ...]]:
  """sum_l K_l * balance_loss_l over levels, and the windows with this batch stored.

  Each level is scaled by its K_l so it is 1 at perfect balance and K_l when collapsed, whatever
  the codebook size; IndexConfig.balance_weight multiplies this sum. The loss uses the windows
  as they were before this batch, so the current batch counts once.
  """
  chex.assert_equal(len(windows), len(softs))
  loss = sum(s.shape[-1] * balance_loss(w, s, mask) for w, s in zip(windows, softs))
  return loss, tuple(update_window(w, s, mask) for w, s in zip(windows, softs))
