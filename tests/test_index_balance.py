"""The balance regularizer: values, ring-buffer window semantics, and where gradient flows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.balance import (balance_loss, balance_loss_and_update, init_window,
                                    init_windows, update_window)


def _soft(rows, nodes, seed):
  logits = np.random.default_rng(seed).normal(size=(rows, nodes))
  return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def _pooled(batches):
  """The definition: sum over nodes of the squared mean of the stacked rows."""
  return float(np.sum(np.concatenate(batches).mean(axis=0) ** 2))


def test_uniform_gives_one_over_k_and_collapse_gives_one():
  window = init_window(4, 8)
  assert float(balance_loss(window, jnp.full((5, 8), 1 / 8))) == pytest.approx(1 / 8)
  collapsed = jax.nn.one_hot(jnp.zeros(5, jnp.int32), 8)
  assert float(balance_loss(window, collapsed)) == pytest.approx(1.0)
  # Rows that each collapse onto a different node are balanced in aggregate.
  assert float(balance_loss(window, jnp.eye(8))) == pytest.approx(1 / 8)


def test_window_keeps_the_last_w_minus_one_batches():
  batches = [np.asarray(_soft(6, 5, seed)) for seed in range(5)]
  window = init_window(3, 5)  # pools the current batch and the 2 before it
  assert window.window_size == 3
  for batch in batches[:4]:
    window = update_window(window, batch)
  # Batches 0 and 1 have been overwritten; 2 and 3 remain.
  assert float(balance_loss(window, batches[4])) == pytest.approx(_pooled(batches[2:5]), rel=1e-5)
  # Before the window fills, only what was stored counts.
  partial = update_window(init_window(3, 5), batches[0])
  assert float(balance_loss(partial, batches[1])) == pytest.approx(_pooled(batches[:2]), rel=1e-5)


def test_masks_and_unequal_batches_pool_exactly():
  small, large, current = (np.asarray(_soft(n, 4, s)) for n, s in ((3, 0), (9, 1), (7, 2)))
  mask = np.arange(7) < 4
  window = update_window(update_window(init_window(3, 4), small), large)
  got = balance_loss(window, current, mask=jnp.asarray(mask))
  assert float(got) == pytest.approx(_pooled([small, large, current[mask]]), rel=1e-5)


def test_window_size_one_uses_only_the_current_batch():
  window = update_window(init_window(1, 4), _soft(6, 4, 0))
  current = np.asarray(_soft(6, 4, 1))
  assert float(balance_loss(window, current)) == pytest.approx(_pooled([current]), rel=1e-5)


def test_gradient_flows_only_through_the_current_batch():
  past, current = _soft(6, 5, 0), _soft(6, 5, 1)

  def loss(past_soft, current_soft):
    return balance_loss(update_window(init_window(2, 5), past_soft), current_soft)

  grad_past, grad_current = jax.grad(loss, argnums=(0, 1))(past, current)
  assert float(jnp.abs(grad_past).max()) == 0.0
  # d/d current[b, k] of sum_k m_k^2 with m = (sum past + sum current) / 12 is 2 m_k / 12.
  pooled_mean = np.concatenate([np.asarray(past), np.asarray(current)]).mean(axis=0)
  np.testing.assert_allclose(grad_current, np.broadcast_to(2 * pooled_mean / 12, (6, 5)),
                             rtol=1e-5)


def test_multi_level_loss_is_normalized_and_jittable():
  windows = init_windows(4, (8, 3))
  softs = (jnp.full((5, 8), 1 / 8), jax.nn.one_hot(jnp.zeros(5, jnp.int32), 3))
  loss, windows = jax.jit(balance_loss_and_update)(windows, softs)
  assert float(loss) == pytest.approx(1.0 + 3.0)  # balanced level 1, collapsed level K=3
  assert [int(w.position) for w in windows] == [1, 1]
  np.testing.assert_allclose(windows[1].sums[0], [5.0, 0.0, 0.0])
