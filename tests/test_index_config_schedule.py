"""IndexConfig validation and the alpha / index-loss-weight schedules."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.schedule import alpha_schedule, index_loss_weight


def test_default_config_is_valid():
  config = IndexConfig().validate()
  assert config.num_levels == 2
  assert not config.stop_gradient_input and not config.freeze_codebooks


@pytest.mark.parametrize("mode", ["sil", "em"])
def test_non_joint_modes_freeze_the_index(mode):
  config = IndexConfig(mode=mode).validate()
  assert config.stop_gradient_input and config.freeze_codebooks


@pytest.mark.parametrize("field,value", [
    ("nodes_per_level", ()), ("nodes_per_level", [8, 8]), ("nodes_per_level", (8, 1)),
    ("distance", "cosine"), ("mode", "joint"), ("codebook_init", "zeros"),
    ("kmeans_init", "kmeans||"), ("max_alpha", 0.0), ("min_alpha", -1.0),
    ("min_alpha", 1000.0), ("alpha_exponent", 0.0), ("balance_window", 0),
    ("balance_weight", -0.1), ("index_loss_warmup_steps", -1), ("kmeans_chunk_size", 0),
])
def test_validate_names_the_bad_field(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(IndexConfig(), **{field: value}).validate()


def test_alpha_endpoints_floor_and_monotonicity():
  steps = jnp.arange(0, 1201, 50)
  alphas = np.asarray(jax.vmap(lambda t: alpha_schedule(t, 1000, 50.0, 2.0, 1.0))(steps))
  assert alphas[0] == pytest.approx(1.0)  # the floor, not 0
  assert alphas[steps.tolist().index(500)] == pytest.approx(50.0 * 0.25)
  assert alphas[steps.tolist().index(1000)] == pytest.approx(50.0)
  assert np.all(alphas[steps >= 1000] == pytest.approx(50.0))  # stays at max past the end
  assert np.all(np.diff(alphas) >= 0)


def test_alpha_is_jit_safe_on_a_traced_step():
  jitted = jax.jit(lambda t: alpha_schedule(t, 100, 10.0, 1.0, 0.5))
  assert float(jitted(jnp.int32(30))) == pytest.approx(3.0)
  assert float(jitted(jnp.int32(1))) == pytest.approx(0.5)


def test_index_loss_warmup_is_linear_then_flat():
  weights = [float(index_loss_weight(t, 100, 2.0)) for t in (0, 25, 50, 100, 500)]
  assert weights == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.0])
  assert float(index_loss_weight(0, 0, 2.0)) == pytest.approx(2.0)  # no warm-up
