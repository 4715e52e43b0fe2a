"""Synthetic corpora drawn from a planted hierarchy of item clusters.

A tree of depth D with `branching[l]` children per node at level l (level 0 is the coarsest,
level D-1 the leaves). Every item sits in one random leaf; `item_tree_paths[v, l]` is its
node at level l (node ids are dense per level, and the parent of node n at level l+1 is
n // branching[l+1]). Items have a Zipf popularity. Each user picks 1..max_interests interests
(a node at a random level, found as the ancestor of a popularity-drawn item, so no interest is
empty) and draws interactions from the items under them, by popularity. Interactions are in
generation order, which stands in for time.

Planted dot-product model (`dim` coordinates): every node has an offset vector of dim - 1
coordinates (smaller at deeper levels); an item's vector is the sum of the offsets along its
path plus noise, then its log-popularity as the last coordinate; a user's vector is
`affinity_scale` times the mean of its interests' path sums (plus noise), then 1. So
<user, item> = affinity_scale * tree affinity + log popularity, which mirrors how interactions
are drawn (popular items inside the user's subtrees).

Everything is vectorised and generated in fixed-size chunks, each with its own random stream
keyed by (seed, purpose, chunk index), so a corpus depends only on its config, any slice of item
vectors can be computed alone, and 10M items fit in memory: int32 ids, no [users, items] arrays.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from hsnn_jax.data.splits import group_rows, leave_one_out, split_random
from hsnn_jax.data.types import CSR, RecDataset

_USER_CHUNK = 1 << 16
_ITEM_CHUNK = 1 << 18
# Random stream ids (the second entry of each numpy seed sequence).
_TREE, _USERS, _ITEM_NOISE, _USER_NOISE, _SPLIT = range(5)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Size and shape of a synthetic corpus.

  branching: children per node at each level; depth = len(branching), leaves = prod(branching).
  level_scales: std of the node offsets per level (default 1, 1/2, 1/4, ...).
  split: 'leave_one_out' (last interaction test, second-last valid) or 'random' (a random
    `test_fraction` of each user's interactions is test; no valid split).
  """

  name: str = "synthetic"
  num_items: int = 100_000
  num_users: int = 20_000
  branching: tuple[int, ...] = (32, 32)
  dim: int = 32
  min_interactions: int = 5
  max_interactions: int = 30
  max_interests: int = 3
  popularity_exponent: float = 1.0
  level_scales: Optional[tuple[float, ...]] = None
  item_noise: float = 0.1
  user_noise: float = 0.1
  affinity_scale: float = 5.0
  split: str = "leave_one_out"
  test_fraction: float = 0.2
  seed: int = 0

  @property
  def depth(self) -> int:
    return len(self.branching)

  def scales(self) -> tuple[float, ...]:
    return self.level_scales or tuple(0.5 ** l for l in range(self.depth))


PRESETS = {
    "synthetic": SyntheticConfig(),
    "synthetic_tiny": SyntheticConfig(name="synthetic_tiny", num_items=2_000, num_users=1_000,
                                      branching=(8, 8), dim=16),
    "synthetic_1m": SyntheticConfig(name="synthetic_1m", num_items=1_000_000, num_users=100_000,
                                    branching=(32, 32), dim=64),
    "synthetic_10m": SyntheticConfig(name="synthetic_10m", num_items=10_000_000,
                                     num_users=200_000, branching=(32, 32, 16), dim=64),
}


@dataclasses.dataclass(frozen=True)
class SyntheticCorpus:
  """A generated corpus with its ground truth.

  dataset: the RecDataset (item_tree_paths [V, D] int32 is the planted tree).
  user_interests: [U, max_interests] int32 interest node ids, -1 = unused slot.
  interest_levels: [U, max_interests] int32 level of each interest node, -1 = unused slot.
  node_offsets: per level l, [num_nodes(l), dim - 1] float32 offset vectors.
  log_popularity: [V] float32 log of each item's (unnormalised) popularity weight.
  """

  config: SyntheticConfig
  dataset: RecDataset
  user_interests: np.ndarray
  interest_levels: np.ndarray
  node_offsets: tuple[np.ndarray, ...]
  log_popularity: np.ndarray

  def item_vectors(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
    """[stop - start, dim] float32 planted vectors of items start..stop-1."""
    cfg, paths = self.config, self.dataset.item_tree_paths
    stop = cfg.num_items if stop is None else stop
    out = np.empty((stop - start, cfg.dim), np.float32)
    for c in range(start // _ITEM_CHUNK, -(-stop // _ITEM_CHUNK)):
      lo, hi = c * _ITEM_CHUNK, min((c + 1) * _ITEM_CHUNK, cfg.num_items)
      noise = _rng(cfg, _ITEM_NOISE, c).standard_normal((hi - lo, cfg.dim - 1), np.float32)
      vecs = noise * np.float32(cfg.item_noise / math.sqrt(cfg.dim - 1))
      for level, offsets in enumerate(self.node_offsets):
        vecs += offsets[paths[lo:hi, level]]
      a, b = max(lo, start), min(hi, stop)
      out[a - start:b - start, :-1] = vecs[a - lo:b - lo]
    out[:, -1] = self.log_popularity[start:stop]
    return out

  def user_vectors(self) -> np.ndarray:
    """[U, dim] float32: scaled mean of each user's interest path sums (plus noise), then 1."""
    cfg = self.config
    node_vecs = [_path_sums(self.node_offsets, cfg.branching, level) for level in range(cfg.depth)]
    tree = np.zeros((cfg.num_users, cfg.dim - 1), np.float32)
    for slot in range(cfg.max_interests):
      for level in range(cfg.depth):
        at = self.interest_levels[:, slot] == level
        tree[at] += node_vecs[level][self.user_interests[at, slot]]
    tree /= np.maximum((self.interest_levels >= 0).sum(1, keepdims=True), 1).astype(np.float32)
    noise = _rng(cfg, _USER_NOISE, 0).standard_normal(tree.shape, np.float32)
    tree += noise * np.float32(cfg.user_noise / math.sqrt(cfg.dim - 1))
    return np.concatenate([np.float32(cfg.affinity_scale) * tree,
                           np.ones((cfg.num_users, 1), np.float32)], axis=1)


def _rng(cfg: SyntheticConfig, stream: int, chunk: int) -> np.random.Generator:
  return np.random.default_rng([cfg.seed, stream, chunk])


def _span(branching, level: int) -> int:
  """Number of leaves under one node of `level`."""
  return int(np.prod(branching[level + 1:], dtype=np.int64))


def _path_sums(node_offsets, branching, level: int) -> np.ndarray:
  """[num_nodes(level), dim]: sum of the offsets from the root down to each node of `level`."""
  nodes = np.arange(node_offsets[level].shape[0])
  total = np.zeros_like(node_offsets[level])
  for above in range(level + 1):
    total += node_offsets[above][nodes // int(np.prod(branching[above + 1:level + 1], dtype=np.int64))]
  return total


class _Tree:
  """Items in leaves, with cumulative popularity in leaf order for subtree sampling."""

  def __init__(self, cfg: SyntheticConfig):
    rng = _rng(cfg, _TREE, 0)
    num_leaves = _span(cfg.branching, -1)
    self.leaf = rng.integers(0, num_leaves, cfg.num_items, dtype=np.int32)
    rank = rng.permutation(cfg.num_items).astype(np.float64)
    log_popularity = -cfg.popularity_exponent * np.log1p(rank)
    self.log_popularity = log_popularity.astype(np.float32)
    popularity = np.exp(log_popularity)
    self.by_leaf = np.argsort(self.leaf, kind="stable").astype(np.int32)
    self.cum = np.concatenate([[0.0], np.cumsum(popularity[self.by_leaf])])  # [V + 1]
    self.leaf_start = np.searchsorted(self.leaf[self.by_leaf], np.arange(num_leaves + 1))
    self.paths = np.stack([self.leaf // _span(cfg.branching, l) for l in range(cfg.depth)],
                          axis=1).astype(np.int32)
    self.offsets = tuple(
        (rng.standard_normal((int(np.prod(cfg.branching[:l + 1])), cfg.dim - 1), np.float32)
         * np.float32(scale / math.sqrt(cfg.dim - 1)))
        for l, scale in enumerate(cfg.scales()))

  def sample(self, rng, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Items drawn by popularity from leaf-order positions [lo, hi) (one per entry)."""
    target = self.cum[lo] + rng.random(lo.shape) * (self.cum[hi] - self.cum[lo])
    # Sorted queries make searchsorted ~10x faster on a 10M-entry table (cache locality).
    order = np.argsort(target)
    pos = np.empty(target.shape, np.int64)
    pos[order] = np.searchsorted(self.cum, target[order], side="right") - 1
    pos = np.clip(pos, lo, hi - 1)
    return self.by_leaf[pos]


def _user_chunk(cfg: SyntheticConfig, tree: _Tree, chunk: int, first_user: int, n: int):
  """Interests and de-duplicated interactions of users first_user..first_user+n-1."""
  rng = _rng(cfg, _USERS, chunk)
  m = cfg.max_interests
  num_interests = rng.integers(1, m + 1, n)
  everything = np.zeros(n * m, np.int64), np.full(n * m, cfg.num_items, np.int64)
  anchors = tree.sample(rng, *everything).reshape(n, m)
  levels = rng.integers(0, cfg.depth, (n, m)).astype(np.int32)
  nodes = tree.paths[anchors, levels]
  unused = np.arange(m)[None, :] >= num_interests[:, None]
  counts = rng.integers(cfg.min_interactions, cfg.max_interactions + 1, n)
  user_of = np.repeat(np.arange(n), counts)
  slot = (rng.random(len(user_of)) * num_interests[user_of]).astype(np.int64)
  node, level = nodes[user_of, slot].astype(np.int64), levels[user_of, slot]
  span = np.array([_span(cfg.branching, l) for l in range(cfg.depth)], np.int64)[level]
  items = tree.sample(rng, tree.leaf_start[node * span], tree.leaf_start[(node + 1) * span])
  _, first = np.unique(user_of * cfg.num_items + items, return_index=True)
  keep = np.sort(first)
  nodes[unused], levels[unused] = -1, -1
  return (user_of[keep] + first_user).astype(np.int32), items[keep], nodes, levels


def build(cfg: SyntheticConfig) -> SyntheticCorpus:
  """Generates the corpus described by `cfg` (deterministic in cfg.seed)."""
  if cfg.dim < 2:
    raise ValueError(f"dim must be >= 2 (tree coordinates + log-popularity), got {cfg.dim}")
  if cfg.min_interactions < 1 or cfg.max_interactions < cfg.min_interactions:
    raise ValueError(f"bad interaction range {cfg.min_interactions}..{cfg.max_interactions}")
  tree = _Tree(cfg)
  parts = [_user_chunk(cfg, tree, c, u, min(_USER_CHUNK, cfg.num_users - u))
           for c, u in enumerate(range(0, cfg.num_users, _USER_CHUNK))]
  users, items, interests, levels = (np.concatenate(p) for p in zip(*parts))
  if cfg.split == "leave_one_out":
    train, valid, test, _ = leave_one_out(users, items, cfg.num_users)
  elif cfg.split == "random":
    indptr, values = group_rows(users, cfg.num_users, items)
    train, test, _ = split_random(CSR(indptr, values.astype(np.int32)), cfg.test_fraction,
                                  _rng(cfg, _SPLIT, 0))
    valid = CSR.empty(cfg.num_users)
  else:
    raise ValueError(f"unknown split {cfg.split!r}")
  dataset = RecDataset(
      name=cfg.name, protocol="synthetic", num_users=cfg.num_users, num_items=cfg.num_items,
      train=train, valid=valid, test=test,
      user_ids=np.arange(cfg.num_users, dtype=np.int64),
      item_ids=np.arange(cfg.num_items, dtype=np.int64), item_tree_paths=tree.paths)
  return SyntheticCorpus(cfg, dataset, interests, levels, tree.offsets, tree.log_popularity)


def generate(cfg: SyntheticConfig) -> RecDataset:
  return build(cfg).dataset


def planted_vectors(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
  """([V, dim] item vectors, [U, dim] user vectors) of the planted dot-product model."""
  corpus = build(cfg)
  return corpus.item_vectors(), corpus.user_vectors()
