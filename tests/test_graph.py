"""LightGCN propagation and the graph two-tower against dense NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.data.types import CSR
from hsnn_jax.models import two_tower
from hsnn_jax.models.graph import BipartiteGraph, propagate
from hsnn_jax.models.scorer import UserBatch


def _small_csr():
  # 4 users x 5 items; user 1 lists item 2 twice (a duplicate pair counts once); item 4 unseen.
  rows = [[0, 1], [2, 2, 3], [0], [1, 2, 3]]
  indptr = np.cumsum([0] + [len(r) for r in rows])
  return CSR(indptr.astype(np.int64), np.concatenate(rows).astype(np.int32))


def _dense_reference(csr, num_items, users, items, layers):
  a = np.zeros((csr.num_rows, num_items))
  for u in range(csr.num_rows):
    a[u, csr.row(u)] = 1.0
  du, di = a.sum(1), a.sum(0)
  norm = a / np.sqrt(np.maximum(np.outer(du, di), 1e-30)) * (a > 0)
  # The symmetric (U + I) x (U + I) adjacency of LightGCN, applied `layers` times.
  big = np.block([[np.zeros((len(du), len(du))), norm], [norm.T, np.zeros((len(di), len(di)))]])
  x = np.concatenate([users, items])
  total = x.copy()
  for _ in range(layers):
    x = big @ x
    total += x
  total /= layers + 1
  return total[:len(du)], total[len(du):]


@pytest.mark.parametrize("layers", [0, 1, 3])
def test_propagation_matches_dense_reference(layers):
  csr = _small_csr()
  graph = BipartiteGraph.from_csr(csr, num_items=5)
  assert graph.num_edges == 8  # the duplicate (1, 2) once
  rng = np.random.default_rng(layers)
  users, items = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
  got_u, got_i = jax.jit(lambda u, i: propagate(u, i, graph, layers))(
      jnp.asarray(users, jnp.float32), jnp.asarray(items, jnp.float32))
  want_u, want_i = _dense_reference(csr, 5, users, items, layers)
  np.testing.assert_allclose(np.asarray(got_u), want_u, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_i), want_i, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_i)[4], items[4] / (layers + 1), rtol=1e-5)


def test_graph_two_tower_scorer_agrees_with_its_training_logits():
  csr = _small_csr()
  cfg = two_tower.TwoTowerConfig(num_users=4, num_items=5, embed_dim=8, user_tower="lightgcn",
                                 graph_layers=2).validate()
  model = two_tower.TwoTower(cfg, graph=BipartiteGraph.from_csr(csr, 5))
  users = UserBatch(user=jnp.array([3, 0, 1]), history=jnp.full((3, 1), -1),
                    features=jnp.zeros((3, 0), jnp.int32))
  params = model.init(jax.random.PRNGKey(0), users, jnp.arange(5))["params"]
  corpus = model.apply({"params": params}, users, method=two_tower.TwoTower.corpus_logits)
  pairs = model.apply({"params": params}, users, jnp.arange(5))
  scorer = two_tower.make_scorer(model, params)
  served = scorer.score(scorer.encode_users(users), scorer.encode_items(jnp.arange(5)))
  np.testing.assert_allclose(np.asarray(corpus), np.asarray(pairs), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(served), np.asarray(pairs), rtol=1e-5, atol=1e-5)
  # The propagated user of user 0 is not its raw embedding: the graph changed it.
  raw = two_tower.normalize(params["user_id"]["embedding"][0], "cosine")
  assert not np.allclose(np.asarray(scorer.encode_users(users))[1], np.asarray(raw), atol=1e-3)


def test_lightgcn_without_graph_is_refused():
  cfg = two_tower.TwoTowerConfig(num_users=4, num_items=5, user_tower="lightgcn").validate()
  users = UserBatch(user=jnp.array([0]), history=jnp.full((1, 1), -1),
                    features=jnp.zeros((1, 0), jnp.int32))
  with pytest.raises(ValueError, match="training graph"):
    two_tower.TwoTower(cfg).init(jax.random.PRNGKey(0), users, jnp.arange(5))
