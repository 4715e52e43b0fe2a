"""Index health: how balanced and how used the learned index is, and how well it recovers
planted clusters. NumPy, on the host; every number is a plain float/int (JSON-serialisable).

Per level l (a node is a non-empty code prefix, see publish.py):
  num_nodes        non-empty level-l nodes.
  possible_nodes   K_l children for each non-empty parent (K_0 at level 0).
  empty_nodes      possible_nodes - num_nodes: child slots of used parents that no item reaches.
  unused_codewords level-l codewords that no item uses at all (whatever its prefix).
  min_items, max_items, mean_items   items per non-empty node.
  max_node_ratio   max_items / mean_items (1 = perfectly balanced). Blind to collapse onto a
                   few equal nodes, hence also:
  max_over_uniform max_items / max(1, V / prod(K_0..K_l)): the largest node against the node
                   size of a perfectly balanced full tree.
  perplexity       exp(entropy of the level-l codeword usage), in [1, K_l].
  node_perplexity  exp(entropy of the items' distribution over level-l nodes).
  shared_fraction  fraction of items not alone in their level-l node (at the leaf level: items
                   whose full path collides with another item's).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from hsnn_jax.index.publish import prefix_node_ids


def _entropy(counts: np.ndarray) -> float:
  """Shannon entropy (nats) of the distribution proportional to non-negative counts."""
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log(p)))


def index_health(codes: np.ndarray, nodes_per_level: Sequence[int]) -> List[Dict[str, float]]:
  """One dict per level (coarsest first) for codes [V, L]; keys in the module docstring."""
  codes = np.asarray(codes)
  item_path, _, node_parent = prefix_node_ids(codes, nodes_per_level)
  report = []
  full_tree_nodes = 1
  for l, k in enumerate(nodes_per_level):
    full_tree_nodes *= k
    sizes = np.bincount(item_path[:, l])
    num_nodes = int(sizes.shape[0])
    possible = k * (len(node_parent[l - 1]) if l else 1)
    report.append({
        "level": l,
        "num_nodes": num_nodes,
        "possible_nodes": int(possible),
        "empty_nodes": int(possible - num_nodes),
        "unused_codewords": int(k - np.unique(codes[:, l]).shape[0]),
        "min_items": int(sizes.min()),
        "max_items": int(sizes.max()),
        "mean_items": float(sizes.mean()),
        "max_node_ratio": float(sizes.max() / sizes.mean()),
        "max_over_uniform": float(sizes.max() / max(1.0, codes.shape[0] / full_tree_nodes)),
        "perplexity": float(np.exp(_entropy(np.bincount(codes[:, l], minlength=k)))),
        "node_perplexity": float(np.exp(_entropy(sizes))),
        "shared_fraction": float(np.sum(sizes[sizes > 1]) / codes.shape[0]),
    })
  return report


def _contingency(labels_true: np.ndarray, labels_pred: np.ndarray) -> np.ndarray:
  """[num_true, num_pred] co-occurrence counts of two labelings of the same items."""
  labels_true, labels_pred = np.asarray(labels_true), np.asarray(labels_pred)
  if labels_true.shape != labels_pred.shape or labels_true.ndim != 1:
    raise ValueError(f"need two [N] labelings, got {labels_true.shape} and {labels_pred.shape}")
  _, t = np.unique(labels_true, return_inverse=True)
  _, p = np.unique(labels_pred, return_inverse=True)
  t, p = t.reshape(-1), p.reshape(-1)
  num_pred = int(p.max()) + 1
  return np.bincount(t * num_pred + p, minlength=(int(t.max()) + 1) * num_pred).reshape(-1, num_pred)


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
  """Fraction of items whose predicted cluster's majority true label is their own."""
  table = _contingency(labels_true, labels_pred)
  return float(table.max(axis=0).sum() / table.sum())


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
  """Normalized mutual information, I(T; P) / mean(H(T), H(P)) (arithmetic, as scikit-learn).

  1 for identical partitions up to relabeling; 1 also when both are a single cluster.
  """
  table = _contingency(labels_true, labels_pred).astype(np.float64)
  joint = table / table.sum()
  pt, pp = joint.sum(axis=1), joint.sum(axis=0)
  nz = joint > 0
  mutual = np.sum(joint[nz] * np.log(joint[nz] / np.outer(pt, pp)[nz]))
  normalizer = 0.5 * (_entropy(pt) + _entropy(pp))
  return 1.0 if normalizer == 0 else float(np.clip(mutual / normalizer, 0.0, 1.0))
