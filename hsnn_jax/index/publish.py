"""Publishing a trained index: hard codes and codebooks to the static serving arrays.

A level-l node is a non-empty code prefix (m_0..m_l). Node ids are dense per level and sorted by
(parent id, code), so the children of a node are a contiguous id range and `parent` is
non-decreasing. Everything is vectorised NumPy (sorts and bincounts, no Python loop over items
or nodes); 1M items x 3 levels publish in a few seconds.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from hsnn_jax.index.published import PublishedIndex

_CHUNK = 65536  # items per block when measuring item-to-node distances (bounds [chunk, d] temps)


def prefix_node_ids(codes: np.ndarray, nodes_per_level: Sequence[int]
                    ) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
  """Dense node ids of every item's code prefixes.

  Args:
    codes: [V, L] int codes, codes[:, l] in [0, nodes_per_level[l]).
    nodes_per_level: K_l per level.

  Returns:
    item_path [V, L] int32: node id of each item at each level.
    node_code: per level, [num_nodes_l] int64, the last code m_l of each node.
    node_parent: per level, [num_nodes_l] int32 parent node id (-1 at level 0).
  """
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] != len(nodes_per_level):
    raise ValueError(f"codes must be [V, {len(nodes_per_level)}], got shape {codes.shape}")
  for l, k in enumerate(nodes_per_level):
    if codes.size and (codes[:, l].min() < 0 or codes[:, l].max() >= k):
      raise ValueError(f"codes[:, {l}] must lie in [0, {k}), got [{codes[:, l].min()}, "
                       f"{codes[:, l].max()}]")
  item_path = np.empty(codes.shape, np.int32)
  node_code, node_parent = [], []
  parent_of_item = np.zeros(codes.shape[0], np.int64)
  for l, k in enumerate(nodes_per_level):
    keys = parent_of_item * k + codes[:, l]
    unique_keys, inverse = np.unique(keys, return_inverse=True)
    item_path[:, l] = inverse.reshape(-1)
    node_code.append(unique_keys % k)
    node_parent.append((unique_keys // k).astype(np.int32) if l else
                       np.full(unique_keys.shape, -1, np.int32))
    parent_of_item = item_path[:, l].astype(np.int64)
  return item_path, tuple(node_code), tuple(node_parent)


def group_members(group: np.ndarray, num_groups: int) -> np.ndarray:
  """[num_groups, max_size] int32: the indices i with group[i] == g in row g, ascending, padded
  with -1 (exact max width)."""
  order = np.argsort(group, kind="stable")
  sizes = np.bincount(group, minlength=num_groups)
  starts = np.cumsum(sizes) - sizes
  width = int(sizes.max()) if sizes.size else 0
  out = np.full((num_groups, max(width, 1)), -1, np.int32)
  sorted_group = group[order]
  out[sorted_group, np.arange(group.shape[0]) - starts[sorted_group]] = order
  return out


def nearest_member(group: np.ndarray, item_embeddings: np.ndarray,
                   group_embeddings: np.ndarray) -> np.ndarray:
  """[num_groups] int32: per group g, the member i (group[i] == g) whose embedding is nearest
  to group_embeddings[g]; ties go to the smallest item id. Every group must be non-empty."""
  dist = np.empty(group.shape[0], np.float64)
  for start in range(0, group.shape[0], _CHUNK):
    block = slice(start, start + _CHUNK)
    diff = item_embeddings[block].astype(np.float32) - group_embeddings[group[block]]
    dist[block] = np.einsum("ij,ij->i", diff, diff)
  order = np.lexsort((dist, group))
  sorted_group = group[order]
  first = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
  if first.shape[0] != group_embeddings.shape[0]:
    raise ValueError("every group must have at least one member")
  return order[first].astype(np.int32)


def top_members(group: np.ndarray, priority: np.ndarray, num_groups: int, count: int
                ) -> np.ndarray:
  """[num_groups, count] int32: per group g, its `count` members (group[i] == g) of highest
  priority[i], best first; ties go to the smaller item id. A group with fewer members repeats
  its best one, so a max over a row is unchanged by the padding. Every group must be non-empty.

  With priority = the model's mean score over sample users, these are the node's items most
  likely to score high for anyone: better stand-ins for the node's best item than the item
  nearest its centroid (`retrieval.beam_search.members_level_scorer`).
  """
  group = np.asarray(group, np.int64)
  if count < 1:
    raise ValueError(f"count must be >= 1, got {count}")
  sizes = np.bincount(group, minlength=num_groups)
  if sizes.shape[0] != num_groups or (sizes == 0).any():
    raise ValueError("every group must have at least one member")
  order = np.lexsort((np.arange(group.shape[0]), -np.asarray(priority, np.float64), group))
  sorted_group = group[order]
  starts = np.cumsum(sizes) - sizes
  rank = np.arange(group.shape[0]) - starts[sorted_group]
  out = np.repeat(order[starts][:, None], count, axis=1)
  keep = rank < count
  out[sorted_group[keep], rank[keep]] = order[keep]
  return out.astype(np.int32)


def publish_index(codes: np.ndarray, codebooks: Sequence[np.ndarray],
                  item_embeddings: np.ndarray) -> PublishedIndex:
  """Builds the serving arrays of an L-level index over V items (NumPy, on the host).

  Args:
    codes: [V, L] int hard codes of every item (ResidualQuantizerOutput.codes or k-means codes).
    codebooks: L arrays [K_l, d], coarsest first.
    item_embeddings: [V, d] the item embeddings the codes were computed from.

  Returns:
    A PublishedIndex of NumPy arrays: item_path [V, L], codes [V, L], children[l] for l < L-1,
    node_items of the leaf level, parent[l], representative[l] (the item under the node nearest
    to the node embedding) and node_embedding[l] (the sum of the codewords along the prefix).
  """
  codebooks = [np.asarray(c, np.float32) for c in codebooks]
  item_embeddings = np.asarray(item_embeddings)
  codes = np.asarray(codes)
  if item_embeddings.shape[0] != codes.shape[0] or any(
      c.shape[1] != item_embeddings.shape[1] for c in codebooks):
    raise ValueError(f"shape mismatch: codes {codes.shape}, item_embeddings "
                     f"{item_embeddings.shape}, codebooks {[c.shape for c in codebooks]}")
  nodes_per_level = [c.shape[0] for c in codebooks]
  item_path, node_code, node_parent = prefix_node_ids(codes, nodes_per_level)
  node_embedding, representative = [], []
  for l, codebook in enumerate(codebooks):
    embedding = codebook[node_code[l]]
    if l:
      embedding = embedding + node_embedding[l - 1][node_parent[l]]
    node_embedding.append(embedding)
    representative.append(nearest_member(item_path[:, l], item_embeddings, embedding))
  children = tuple(group_members(node_parent[l + 1], node_code[l].shape[0])
                   for l in range(len(codebooks) - 1))
  node_items = group_members(item_path[:, -1], node_code[-1].shape[0])
  return PublishedIndex(item_path=item_path, codes=codes.astype(np.int32), children=children,
                        node_items=node_items, parent=node_parent,
                        representative=tuple(representative), node_embedding=tuple(node_embedding))
