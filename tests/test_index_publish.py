"""Publishing codes and codebooks as the serving index, and the index health report."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from hsnn_jax.index.health import index_health, nmi, purity
from hsnn_jax.index.publish import publish_index, top_members
from hsnn_jax.index.published import PublishedIndex

NODES = (3, 4, 5)


def _random_index(num_items=400, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  # Few level-0 codes and skewed deeper codes, so some prefixes are empty and leaves collide.
  codes = np.stack([rng.integers(0, k, num_items) if l == 0 else rng.zipf(1.8, num_items) % k
                    for l, k in enumerate(NODES)], axis=1)
  codebooks = [rng.normal(size=(k, dim)).astype(np.float32) for k in NODES]
  embeddings = rng.normal(size=(num_items, dim)).astype(np.float32)
  return codes, codebooks, embeddings, publish_index(codes, codebooks, embeddings)


def test_item_paths_are_dense_prefix_ids():
  codes, _, _, index = _random_index()
  for l in range(len(NODES)):
    prefixes = [tuple(row) for row in codes[:, :l + 1]]
    ids = index.item_path[:, l]
    assert set(ids) == set(range(index.num_nodes[l]))
    pairs = set(zip(prefixes, ids))
    assert len(pairs) == len(set(prefixes)) == len(set(ids))  # a bijection prefix <-> id
  np.testing.assert_array_equal(index.codes, codes)


def test_tree_links_are_consistent():
  _, _, _, index = _random_index()
  assert np.all(index.parent[0] == -1)
  for l in range(1, len(NODES)):
    # Parent of an item's level-l node is its level-(l-1) node.
    np.testing.assert_array_equal(index.parent[l][index.item_path[:, l]], index.item_path[:, l - 1])
    children = index.children[l - 1]
    assert children.shape[0] == index.num_nodes[l - 1]
    listed = children[children >= 0]
    np.testing.assert_array_equal(np.sort(listed), np.arange(index.num_nodes[l]))  # each once
    rows = np.nonzero(children >= 0)[0]
    np.testing.assert_array_equal(index.parent[l][listed], rows)
    assert children.shape[1] == np.bincount(index.parent[l]).max()  # exact width


def test_node_items_partition_the_items():
  _, _, _, index = _random_index()
  items = index.node_items
  np.testing.assert_array_equal(np.sort(items[items >= 0]), np.arange(index.num_items))
  for leaf in range(index.num_nodes[-1]):
    np.testing.assert_array_equal(items[leaf][items[leaf] >= 0],
                                  np.nonzero(index.item_path[:, -1] == leaf)[0])
  assert items.shape[1] == np.bincount(index.item_path[:, -1]).max()


def test_node_embeddings_and_representatives():
  codes, codebooks, embeddings, index = _random_index()
  for l in range(len(NODES)):
    expected = sum(codebooks[j][codes[:, j]] for j in range(l + 1))  # per item
    np.testing.assert_allclose(index.node_embedding[l][index.item_path[:, l]], expected, atol=1e-5)
    rep = index.representative[l]
    np.testing.assert_array_equal(index.item_path[rep, l], np.arange(index.num_nodes[l]))
    dist = np.sum((embeddings - index.node_embedding[l][index.item_path[:, l]]) ** 2, axis=1)
    best = np.full(index.num_nodes[l], np.inf)
    np.minimum.at(best, index.item_path[:, l], dist)
    np.testing.assert_allclose(dist[rep], best, rtol=1e-6)


def test_save_load_round_trip(tmp_path):
  _, _, _, index = _random_index(num_items=50)
  index.save(str(tmp_path / "index.npz"))
  loaded = PublishedIndex.load(str(tmp_path / "index.npz"))
  for name in ("item_path", "node_items"):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(index, name))
  np.testing.assert_array_equal(loaded.children[1], index.children[1])


def test_rejects_out_of_range_codes():
  codes, codebooks, embeddings, _ = _random_index(num_items=20)
  codes[3, 1] = NODES[1]
  with pytest.raises(ValueError, match=r"codes\[:, 1\]"):
    publish_index(codes, codebooks, embeddings)


def test_publishes_a_large_index_quickly():
  rng = np.random.default_rng(0)
  num_items, dim = 300_000, 16
  codes = rng.integers(0, 64, size=(num_items, 3))
  codebooks = [rng.normal(size=(64, dim)).astype(np.float32) for _ in range(3)]
  embeddings = rng.normal(size=(num_items, dim)).astype(np.float32)
  start = time.perf_counter()
  index = publish_index(codes, codebooks, embeddings)
  assert time.perf_counter() - start < 10.0  # ~1 s when the machine is idle
  assert index.num_nodes[0] == 64 and index.num_items == num_items


def test_health_on_a_hand_made_index():
  codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
  level0, level1 = index_health(codes, (2, 2))
  h = lambda *p: -sum(x * math.log(x) for x in p)
  assert level0 == pytest.approx({
      "level": 0, "num_nodes": 2, "possible_nodes": 2, "empty_nodes": 0, "unused_codewords": 0,
      "min_items": 1, "max_items": 3, "mean_items": 2.0, "max_node_ratio": 1.5,
      "max_over_uniform": 1.5, "perplexity": math.exp(h(0.75, 0.25)),
      "node_perplexity": math.exp(h(0.75, 0.25)), "shared_fraction": 0.75})
  assert level1 == pytest.approx({
      "level": 1, "num_nodes": 3, "possible_nodes": 4, "empty_nodes": 1, "unused_codewords": 0,
      "min_items": 1, "max_items": 2, "mean_items": 4 / 3, "max_node_ratio": 1.5,
      "max_over_uniform": 2.0, "perplexity": math.exp(h(0.75, 0.25)),
      "node_perplexity": math.exp(h(0.5, 0.25, 0.25)), "shared_fraction": 0.5})
  json.dumps([level0, level1])  # plain Python numbers only
  assert index_health(np.array([[0, 2]] * 4), (3, 3))[0]["unused_codewords"] == 2


def test_nmi_and_purity():
  truth = np.array([0, 0, 1, 1, 2, 2])
  assert nmi(truth, np.array([5, 5, 3, 3, 9, 9])) == pytest.approx(1.0)
  assert purity(truth, np.array([5, 5, 3, 3, 9, 9])) == 1.0
  # Hand-computed: I = .5 ln(4/3) + .25 ln(2/3) + .25 ln 2 = .21576, H(T) = ln 2,
  # H(P) = .56234, NMI = I / mean(H) = .34371.
  assert nmi(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1])) == pytest.approx(0.34371, abs=1e-4)
  assert purity(truth, np.array([1, 1, 0, 0, 0, 2])) == pytest.approx(5 / 6)
  rng = np.random.default_rng(0)
  assert nmi(rng.integers(0, 4, 20000), rng.integers(0, 4, 20000)) < 0.01


def test_top_members_against_a_python_reference():
  rng = np.random.default_rng(7)
  group = rng.integers(0, 9, 200)
  group[:9] = np.arange(9)  # every group non-empty
  priority = rng.integers(0, 5, 200).astype(np.float32)  # many ties
  got = top_members(group, priority, 9, 4)
  for g in range(9):
    members = sorted(np.flatnonzero(group == g), key=lambda i: (-priority[i], i))
    want = (members + [members[0]] * 4)[:4]
    np.testing.assert_array_equal(got[g], want)


def test_top_members_refuses_empty_groups():
  with pytest.raises(ValueError, match="at least one member"):
    top_members(np.array([0, 0, 2]), np.zeros(3), 3, 2)
