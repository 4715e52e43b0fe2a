"""LightGCN propagation over the user-item training graph (He et al., 2020).

The graph is the bipartite adjacency of the training pairs, symmetrically normalised:
w(u, i) = 1 / sqrt(deg(u) * deg(i)). One layer moves every embedding one hop,

  users' = segment_sum(w * items[edge_items], edge_users)    [U, D]
  items' = segment_sum(w * users[edge_users], edge_items)    [I, D]

and the output is the mean of the K + 1 layers (layer 0 = the input tables). Everything is a
gather and a segment-sum over the E edges, inside jit, with the normalisation computed once on
the host: O(K * E * D) per propagation, no dense [U, I] matrix.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.data.types import CSR


@dataclasses.dataclass(frozen=True, eq=False)
class BipartiteGraph:
  """The normalised training graph: E edges sorted by user (CSR order).

  edge_users, edge_items: [E] int32; weights: [E] float32, 1 / sqrt(deg(u) deg(i)).
  """

  edge_users: np.ndarray
  edge_items: np.ndarray
  weights: np.ndarray
  num_users: int
  num_items: int

  @classmethod
  def from_csr(cls, train: CSR, num_items: int) -> "BipartiteGraph":
    """train: users x items CSR of training pairs (duplicates count once)."""
    users = train.row_ids().astype(np.int64)
    items = train.values.astype(np.int64)
    pairs = np.unique(users * num_items + items)  # sorted by user, then item
    users, items = pairs // num_items, pairs % num_items
    deg_u = np.bincount(users, minlength=train.num_rows).astype(np.float64)
    deg_i = np.bincount(items, minlength=num_items).astype(np.float64)
    weights = 1.0 / np.sqrt(deg_u[users] * deg_i[items])
    return cls(edge_users=users.astype(np.int32), edge_items=items.astype(np.int32),
               weights=weights.astype(np.float32), num_users=train.num_rows, num_items=num_items)

  @property
  def num_edges(self) -> int:
    return int(self.edge_users.shape[0])

  def dense(self) -> np.ndarray:
    """[U, I] float64 normalised adjacency block (for tests on small graphs)."""
    a = np.zeros((self.num_users, self.num_items))
    a[self.edge_users, self.edge_items] = self.weights
    return a

  def flops(self, num_layers: int, dim: int) -> int:
    """Forward FLOPs of one propagation (a multiply and an add per edge, dim and direction)."""
    return 2 * 2 * num_layers * self.num_edges * dim


def propagate(user_table: jax.Array, item_table: jax.Array, graph: BipartiteGraph,
              num_layers: int) -> tuple[jax.Array, jax.Array]:
  """Mean of layers 0..num_layers of LightGCN propagation.

  user_table [U, D], item_table [I, D] -> ([U, D], [I, D]).
  """
  chex.assert_shape(user_table, (graph.num_users, None))
  chex.assert_shape(item_table, (graph.num_items, user_table.shape[1]))
  eu, ei = jnp.asarray(graph.edge_users), jnp.asarray(graph.edge_items)
  w = jnp.asarray(graph.weights)[:, None]
  u, i = user_table, item_table
  sum_u, sum_i = u, i
  for _ in range(num_layers):
    u, i = (jax.ops.segment_sum(w * i[ei], eu, graph.num_users, indices_are_sorted=True),
            jax.ops.segment_sum(w * u[eu], ei, graph.num_items))
    sum_u, sum_i = sum_u + u, sum_i + i
  return sum_u / (num_layers + 1), sum_i / (num_layers + 1)
