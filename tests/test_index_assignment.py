"""Cross-attention assignment and the residual quantizer: values, gradient paths, levels."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.assignment import CrossAttentionAssignment, assign
from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.kmeans import residual_kmeans
from hsnn_jax.index.residual_quantizer import ResidualQuantizer, get_codebooks, set_codebooks


def _data(num=64, dim=8, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.normal(size=(num, dim)), jnp.float32)


@pytest.mark.parametrize("distance", ["squared_l2", "l2"])
def test_assignment_matches_brute_force(distance):
  queries, codebook = _data(16, 8, 0), _data(5, 8, 1)
  module = CrossAttentionAssignment(num_nodes=5, dim=8, distance=distance)
  params = module.init(jax.random.key(0), queries, 1.0)
  params = {"params": {"codebook": codebook}}
  out = module.apply(params, queries, 0.7)
  brute = np.sum((np.asarray(queries)[:, None] - np.asarray(codebook)[None]) ** 2, axis=-1)
  if distance == "l2":
    brute = np.sqrt(brute)
  np.testing.assert_allclose(out.distances, brute, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(out.hard, np.argmin(brute, axis=1))
  soft = np.exp(-0.7 * brute)
  soft /= soft.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(out.soft, soft, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out.quantized, soft @ np.asarray(codebook), rtol=1e-4, atol=1e-5)
  assert out.hard.dtype == jnp.int32


def test_straight_through_forwards_hard_and_backpropagates_soft():
  queries, codebook = _data(16, 8, 0), _data(5, 8, 1)
  out = assign(queries, codebook, 0.5, straight_through=True)
  np.testing.assert_allclose(out.quantized, np.asarray(codebook)[np.asarray(out.hard)], atol=1e-6)
  weights = _data(16, 8, 2)
  loss = lambda c, st: jnp.sum(assign(queries, c, 0.5, straight_through=st).quantized * weights)
  np.testing.assert_allclose(jax.grad(loss)(codebook, True), jax.grad(loss)(codebook, False),
                             rtol=1e-5, atol=1e-6)


def _gradients(model, inputs):
  """Gradients of reconstruction + a stand-in index loss (linear in the node embeddings)."""
  params = jax.jit(model.init)(jax.random.key(0), inputs, 1.0)["params"]
  weights = _data(inputs.shape[0], inputs.shape[1], 3)

  def loss(p, x):
    out = model.apply({"params": p}, x, 2.0)
    return out.reconstruction_loss + jnp.sum(out.node_embeddings * weights[:, None])

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, inputs)


def _norms(codebook_grads):
  return [float(jnp.linalg.norm(g)) for g in get_codebooks(codebook_grads)]


def test_joim_gradients_reach_codebooks_and_inputs():
  inputs = _data()
  grad_params, grad_inputs = _gradients(ResidualQuantizer((4, 3), 8, init_scale=0.5), inputs)
  assert min(_norms(grad_params)) > 1e-3
  assert float(jnp.linalg.norm(grad_inputs)) > 1e-3


def test_stop_gradient_input_blocks_only_the_input_path():
  inputs = _data()
  model = ResidualQuantizer((4, 3), 8, init_scale=0.5, stop_gradient_input=True)
  grad_params, grad_inputs = _gradients(model, inputs)
  assert float(jnp.abs(grad_inputs).max()) == 0.0
  assert min(_norms(grad_params)) > 1e-3


def test_sil_config_freezes_codebooks_and_inputs():
  inputs = _data()
  model = ResidualQuantizer.from_config(IndexConfig(nodes_per_level=(4, 3), mode="sil"), 8)
  grad_params, grad_inputs = _gradients(model, inputs)
  assert max(_norms(grad_params)) == 0.0
  assert float(jnp.abs(grad_inputs).max()) == 0.0


def test_outputs_are_cumulative_and_loss_is_masked():
  inputs = _data(32)
  model = ResidualQuantizer((4, 3, 2), 8, init_scale=0.5)
  params = jax.jit(model.init)(jax.random.key(1), inputs, 1.0)
  out = jax.jit(model.apply)(params, inputs, 3.0)
  assert out.codes.shape == (32, 3) and out.node_embeddings.shape == (32, 3, 8)
  quantized = np.stack([np.asarray(level.quantized) for level in out.levels], axis=1)
  np.testing.assert_allclose(out.node_embeddings, np.cumsum(quantized, axis=1), atol=1e-5)
  np.testing.assert_allclose(out.reconstruction, out.node_embeddings[:, -1])
  per_row = np.sum((np.asarray(out.reconstruction) - np.asarray(inputs)) ** 2, axis=1)
  assert float(out.reconstruction_loss) == pytest.approx(per_row.mean(), rel=1e-5)
  mask = jnp.arange(32) < 10
  masked = jax.jit(model.apply)(params, inputs, 3.0, mask=mask).reconstruction_loss
  assert float(masked) == pytest.approx(per_row[:10].mean(), rel=1e-5)
  # Level 2 quantizes what levels 0 and 1 left: its hard code is the argmin on that residual.
  residual = np.asarray(inputs) - quantized[:, 0] - quantized[:, 1]
  codebook = np.asarray(params["params"]["level_2"]["codebook"])
  expected = np.argmin(((residual[:, None] - codebook[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(out.codes[:, 2], expected)


def test_reconstruction_error_falls_as_levels_are_added():
  inputs = _data(400, 8)
  kmeans = residual_kmeans(jax.random.key(0), inputs, (8, 8, 8), num_iters=8)
  losses = []
  for levels in (1, 2, 3):
    model = ResidualQuantizer((8,) * levels, 8)
    params = jax.jit(model.init)(jax.random.key(0), inputs[:2], 1.0)["params"]
    params = set_codebooks(params, kmeans.codebooks[:levels])
    apply = jax.jit(lambda p: model.apply({"params": p}, inputs, 1e4).reconstruction_loss)
    losses.append(float(apply(params)))
  assert losses[0] > losses[1] > losses[2]
  # With a nearly hard assignment the quantizer reproduces residual k-means.
  np.testing.assert_allclose(losses, kmeans.errors, rtol=1e-3)
