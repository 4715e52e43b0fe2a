"""Cost accounting on hand-checkable cases, and the two-stage baseline."""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.publish import publish_index
from hsnn_jax.models.scorer import Scorer
from hsnn_jax.retrieval import beam_search as bs
from hsnn_jax.eval import cost
from hsnn_jax.retrieval import peers
from hsnn_jax.retrieval.exhaustive import exhaustive_top_k
from hsnn_jax.retrieval.two_stage import TwoStage
from tests.helpers import dot_scorer
from tests.test_beam_search import _vectors as tie_free_vectors
from tests.test_beam_search import NUM_ITEMS, NUM_USERS, user_batch


def test_exactness_counts_the_reference_items_returned():
  ids = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9]])
  reference = np.array([[1, 2, 9], [4, -1, -1], [-1, -1, -1]])  # last row: nothing to find
  assert cost.exactness_at_k(ids, reference) == pytest.approx((2 / 3 + 1) / 2)


def test_recall_uses_held_out_truth():
  ids = np.array([[1, 2, 3], [4, 5, 6]])
  truth = np.array([[3, 10], [11, -1]])
  assert cost.recall_at_k(ids, truth, 3) == pytest.approx((1 / 2 + 0) / 2)


def test_model_flops_add_user_towers_once_and_pairs_per_stage():
  encode_a, encode_b = (lambda u: u), (lambda u: u)
  make = lambda enc, pair, query: Scorer(encode_users=enc, encode_items=None, score=None,
                                         flops_per_pair=pair, flops_per_query=query)
  stages = [make(encode_a, 2, 100), make(encode_b, 3, 1000)]
  item = make(encode_a, 7, 100)  # shares stage 0's user tower: counted once
  result = bs.RetrievalResult(scores=jnp.zeros((2, 1)), ids=jnp.zeros((2, 1), jnp.int32),
                              items_scored=jnp.array([100, 200]),
                              stage_scored=jnp.array([[3, 10], [5, 20]]))
  per_query = [3 * 2 + 10 * 3 + 100 * 7, 5 * 2 + 20 * 3 + 200 * 7]
  assert cost.model_flops_per_query(result, stages, item) == 1100 + np.mean(per_query)


def hand_index():
  """Two levels over 24 items: 4 roots with 2 leaves each, 3 items per leaf (item v sits in leaf
  v // 3, root v // 6); embeddings put root r's and leaf n's items in clearly ordered groups."""
  items = np.arange(24)
  codes = np.stack([items // 6, (items // 3) % 2], axis=1)
  embeddings = np.stack([items.astype(np.float32), np.ones(24, np.float32)], axis=1)
  codebooks = [np.stack([np.arange(4) * 6.0 + 2.5, np.ones(4)], 1).astype(np.float32),
               np.array([[-1.5, 0.0], [1.5, 0.0]], np.float32)]
  return embeddings, publish_index(codes, codebooks, embeddings)


def test_beam_search_counts_on_a_hand_checkable_index():
  items, index = hand_index()
  users = np.array([[1.0, 0.0], [-1.0, 0.0]], np.float32)  # likes high ids / low ids
  scorer = Scorer(encode_users=lambda ub: jnp.asarray(users)[ub.user],
                  encode_items=lambda ids: jnp.asarray(items)[ids], score=lambda u, v: u @ v.T,
                  flops_per_pair=4, flops_per_query=0)
  levels = [bs.node_embedding_level_scorer(scorer, index, l) for l in range(2)]
  search = bs.BeamSearch(index, levels, bs.item_level_scorer(scorer, 24), (1, 1), 2)
  result = search(user_batch([0, 1]), jnp.array([[23], [-1]]))
  # 4 roots scored, then the kept root's 2 leaves, then the kept leaf's 3 items.
  np.testing.assert_array_equal(result.stage_scored, [[4, 2], [4, 2]])
  np.testing.assert_array_equal(result.items_scored, [3, 3])  # item 23 is scored, then masked
  np.testing.assert_array_equal(result.ids, [[22, 21], [0, 1]])
  assert search.widths == (4, 2, 3)
  assert cost.model_flops_per_query(result, search.scorers[:-1], search.scorers[-1]) == 4 * 9


def test_two_stage_counts_and_full_prefilter_is_exact():
  users, items = tie_free_vectors(0)
  model = dot_scorer(users, items)
  rng = np.random.default_rng(1)
  cheap = dot_scorer(users + rng.normal(size=users.shape).astype(np.float32), items)
  ub, exclude = user_batch(np.arange(6)), jnp.asarray(rng.integers(0, NUM_ITEMS, (6, 10)))
  item_stage = bs.item_level_scorer(model, NUM_ITEMS)
  _, reference = exhaustive_top_k(model, ub, 20, num_items=NUM_ITEMS, exclude=exclude)
  narrow = TwoStage(cheap, item_stage, NUM_ITEMS, 30, 20, item_chunk=64)(ub, exclude)
  np.testing.assert_array_equal(narrow.items_scored, 30)
  np.testing.assert_array_equal(narrow.stage_scored, NUM_ITEMS)
  full = TwoStage(cheap, item_stage, NUM_ITEMS, NUM_ITEMS, 20, item_chunk=64)(ub, exclude)
  np.testing.assert_array_equal(full.ids, reference)
  vmapped = TwoStage(cheap, item_stage, NUM_ITEMS, 30, 20, item_chunk=64, users_per_step=None)
  np.testing.assert_array_equal(vmapped(ub, exclude).ids, narrow.ids)  # same whatever batching
  np.testing.assert_array_equal(full.items_scored, NUM_ITEMS - np.array(
      [len(set(r)) for r in np.asarray(exclude)]))
  assert cost.exactness_at_k(np.asarray(narrow.ids), np.asarray(reference)) < 1.0


def test_latency_warms_up_then_times_every_call():
  calls = []

  def fn(x):
    calls.append(x)
    time.sleep(0.01 if x else 0.0)
    return jnp.zeros(())

  latency = cost.measure_latency(fn, [(1,), (2,), (3,)], queries_per_call=4)
  assert calls == [1, 1, 2, 3]
  assert len(latency.call_ms) == 3 and min(latency.call_ms) >= 10.0
  assert latency.p50_ms <= latency.p99_ms
  assert latency.qps == pytest.approx(12 / (sum(latency.call_ms) / 1e3))


def test_peak_memory_sees_an_allocation():
  with cost.PeakMemory() as meter:
    block = np.ones(32 * 2**20 // 8 * 4)  # 128 MiB, touched
    time.sleep(0.02)
  del block
  assert meter.mb > 100, (meter.mb, meter.source)


def test_peers_drop_excluded_and_padded_neighbours():
  scores = np.array([[9.0, 8.0, 7.0, 6.0], [5.0, 4.0, 3.0, 2.0]])
  ids = np.array([[3, 1, 4, 5], [2, -1, 7, 8]])
  got_scores, got_ids = peers.drop_excluded(scores, ids, np.array([[1, -1], [-1, -1]]), 3)
  np.testing.assert_array_equal(got_ids, [[3, 4, 5], [2, 7, 8]])
  np.testing.assert_array_equal(got_scores, [[9.0, 7.0, 6.0], [5.0, 3.0, 2.0]])
  _, short = peers.drop_excluded(scores[:1, :2], ids[:1, :2], np.array([[3]]), 2)
  np.testing.assert_array_equal(short, [[1, -1]])


def test_faiss_flat_peer_matches_exhaustive():
  pytest.importorskip("faiss")
  users, items = tie_free_vectors(2)
  exclude = np.random.default_rng(3).integers(0, NUM_ITEMS, (NUM_USERS, 5)).astype(np.int32)
  _, want = exhaustive_top_k(dot_scorer(users, items), user_batch(np.arange(NUM_USERS)), 10,
                             num_items=NUM_ITEMS, exclude=jnp.asarray(exclude))
  _, got = peers.Peer("faiss_flat", items).search(users, 10, exclude)
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["faiss_ivf", "faiss_ivf_rcq"])
def test_ivf_peers_are_exact_when_every_list_is_probed(name):
  pytest.importorskip("faiss")
  users, items = tie_free_vectors(4)
  exclude = np.random.default_rng(5).integers(0, NUM_ITEMS, (NUM_USERS, 5)).astype(np.int32)
  _, want = exhaustive_top_k(dot_scorer(users, items), user_batch(np.arange(NUM_USERS)), 10,
                             num_items=NUM_ITEMS, exclude=jnp.asarray(exclude))
  peer = peers.Peer(name, items, nlist=16)
  _, got = peer.search(users, 10, exclude, setting=16)
  np.testing.assert_array_equal(got, want)
  _, narrow = peer.search(users, 10, exclude, setting=1)
  assert (narrow != want).any()  # one list of 16 cannot hold every user's top 10


def test_rcq_peer_refuses_nlist_that_is_not_a_power_of_four():
  pytest.importorskip("faiss")
  with pytest.raises(ValueError, match="power of 4"):
    peers.Peer("faiss_ivf_rcq", np.zeros((64, 4), np.float32), nlist=32)


def test_mips_to_l2_turns_inner_product_order_into_distance_order():
  rng = np.random.default_rng(6)
  items, query = rng.normal(size=(50, 3)) * rng.uniform(0.1, 3, (50, 1)), rng.normal(size=3)
  lifted = peers.mips_to_l2(items.astype(np.float32))
  dist = np.sum((np.append(query, 0.0) - lifted) ** 2, axis=1)
  np.testing.assert_array_equal(np.argsort(dist), np.argsort(-(items @ query)))


def test_hnsw_peer_finds_the_inner_product_top_k():
  pytest.importorskip("faiss")
  users, items = tie_free_vectors(7)
  _, want = exhaustive_top_k(dot_scorer(users, items), user_batch(np.arange(NUM_USERS)), 10,
                             num_items=NUM_ITEMS)
  scores, got = peers.Peer("faiss_hnsw", items, hnsw_m=16).search(users, 10, None, setting=512)
  assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(np.asarray(got), np.asarray(want))]) > 0.95
  np.testing.assert_allclose(scores, np.take_along_axis(users @ items.T, got, axis=1), rtol=1e-5)
