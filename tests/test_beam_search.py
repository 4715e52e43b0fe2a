"""Hierarchical beam search: equals exhaustive retrieval with full beams, widens monotonically,
never returns padded or excluded items, and compiles once per shape."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.publish import publish_index, top_members
from hsnn_jax.models.scorer import UserBatch
from hsnn_jax.retrieval import beam_search as bs
from hsnn_jax.eval.cost import exactness_at_k
from hsnn_jax.retrieval.exhaustive import exhaustive_top_k
from tests import helpers
from tests.helpers import dot_scorer

NUM_USERS, NUM_ITEMS, DIM = 12, 300, 4
NODES = (3, 4, 5)


def user_batch(user_ids):
  user_ids = np.asarray(user_ids, np.int32)
  return UserBatch(user=jnp.asarray(user_ids), history=jnp.full((len(user_ids), 1), -1, jnp.int32),
                   features=jnp.zeros((len(user_ids), 0), jnp.int32))


def tiny_index(items, seed=0):
  """A 3-level index over the items from skewed random codes (uneven fan-outs, empty prefixes)."""
  rng = np.random.default_rng(seed)
  codes = np.stack([rng.integers(0, k, NUM_ITEMS) if l == 0 else rng.zipf(1.8, NUM_ITEMS) % k
                    for l, k in enumerate(NODES)], axis=1)
  codebooks = [rng.normal(size=(k, items.shape[1])).astype(np.float32) for k in NODES]
  return publish_index(codes, codebooks, items)


def stages(scorer, index, node_scoring="representative"):
  """(level scorers, item stage): build once per test, reuse across beam settings."""
  make = (bs.representative_level_scorer if node_scoring == "representative"
          else bs.node_embedding_level_scorer)
  return ([make(scorer, index, l) for l in range(index.num_levels)],
          bs.item_level_scorer(scorer, index.num_items))


def searcher(scorer, index, beams, k, node_scoring="representative", built=None, **kwargs):
  levels, items = built or stages(scorer, index, node_scoring)
  return bs.BeamSearch(index, levels, items, beams, k, **kwargs)


def exclusions(seed, rows=NUM_USERS, width=25):
  rng = np.random.default_rng(seed)
  out = rng.integers(0, NUM_ITEMS, (rows, width)).astype(np.int32)
  out[rng.random(out.shape) < 0.3] = -1
  return jnp.asarray(out)


@pytest.mark.parametrize("node_scoring", ["representative", "embedding"])
@pytest.mark.parametrize("weights", [None, "index_sum"])
def test_full_beams_equal_exhaustive_retrieval(node_scoring, weights):
  users, items = _vectors(0)
  scorer, index = dot_scorer(users, items), tiny_index(items)
  if weights == "index_sum":  # ancestors steer the beams; the item ranking stays the model's
    weights = ((1.0,), (1.0, 1.0), (0.5, 1.0, 2.0), (0.0, 0.0, 0.0, 1.0))
  exclude = exclusions(1)
  ub = user_batch(np.arange(NUM_USERS))
  search = searcher(scorer, index, index.num_nodes, 40, node_scoring, level_weights=weights)
  got = search(ub, exclude)
  want_scores, want_ids = exhaustive_top_k(scorer, ub, 40, num_items=NUM_ITEMS, exclude=exclude)
  np.testing.assert_array_equal(np.asarray(got.ids), np.asarray(want_ids))
  np.testing.assert_array_equal(np.asarray(got.scores), np.asarray(want_scores))
  np.testing.assert_array_equal(np.asarray(got.items_scored), NUM_ITEMS)
  np.testing.assert_array_equal(np.asarray(got.stage_scored), np.tile(index.num_nodes, (12, 1)))


def test_full_beams_with_hsnn_ensemble_weights_rank_by_the_ensemble_score():
  """Flat weights w: the item stage ranks by w[L] s_item(v) + sum_l w[l] s_l(node_l(v))."""
  users, items = _vectors(12)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=12)
  weights = (0.5, 0.25, 0.125, 1.0)
  got = searcher(scorer, index, index.num_nodes, 25, level_weights=weights)(
      user_batch(np.arange(NUM_USERS)))
  want = weights[-1] * users @ items.T
  for l in range(index.num_levels):
    reps = items[index.representative[l][index.item_path[:, l]]]  # [V, d] per item's ancestor
    want += weights[l] * users @ reps.T
  order = np.argsort(-want, axis=1, kind="stable")[:, :25]
  np.testing.assert_array_equal(np.asarray(got.scores), np.take_along_axis(want, order, 1))
  np.testing.assert_array_equal(np.asarray(got.ids), order)


def test_negative_ensemble_weights_never_rank_nodes_worst_first():
  """An ensemble that learnt negative index-level weights (beside a strong frozen base) still
  keeps each level's best nodes; the items are ranked by the ensemble as learnt."""
  assert bs.normalize_weights((-0.5, -0.25, -0.125, 1.0), 4) == (
      (1.0,), (0.0, 1.0), (0.0, 0.0, 1.0), (-0.5, -0.25, -0.125, 1.0))
  assert bs.normalize_weights((0.5, -0.2, 0.3, 1.0), 4)[2] == (0.5, 0.0, 0.3)
  users, items = _vectors(5)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=5)
  built, ub = stages(scorer, index), user_batch(np.arange(NUM_USERS))
  weights = (-0.5, -0.25, -0.125, 1.0)
  got = searcher(scorer, index, (1, 2, 3), 20, built=built, level_weights=weights)(ub)
  own = searcher(scorer, index, (1, 2, 3), 20, built=built, level_weights=(
      (1.0,), (0.0, 1.0), (0.0, 0.0, 1.0), weights))(ub)
  np.testing.assert_array_equal(np.asarray(got.ids), np.asarray(own.ids))
  worst = searcher(scorer, index, (1, 2, 3), 20, built=built, level_weights=(
      (-1.0,), (0.0, -1.0), (0.0, 0.0, -1.0), weights))(ub)
  _, best_items = exhaustive_top_k(scorer, ub, 20, num_items=NUM_ITEMS)  # what levels track
  found = lambda r: exactness_at_k(np.asarray(r.ids), np.asarray(best_items))
  assert found(got) > found(worst), (found(got), found(worst))


def test_exactness_never_falls_as_beams_widen():
  users, items = _vectors(3)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=3)
  ub, exclude = user_batch(np.arange(NUM_USERS)), exclusions(4)
  _, reference = exhaustive_top_k(scorer, ub, 20, num_items=NUM_ITEMS, exclude=exclude)
  exactness, scored, built = [], [], stages(scorer, index)
  for beams in [(1, 1, 1), (2, 3, 4), (3, 8, 16), index.num_nodes]:
    result = searcher(scorer, index, beams, 20, built=built)(ub, exclude)
    exactness.append(exactness_at_k(np.asarray(result.ids), np.asarray(reference)))
    scored.append(float(np.mean(result.items_scored)))
  assert exactness == sorted(exactness), exactness
  assert scored == sorted(scored), scored
  assert exactness[0] < 1.0 and exactness[-1] == 1.0


def test_leaf_beam_and_item_budget_give_nested_candidate_sets():
  """Widening only the leaf beam or the item budget can only add candidates: the returned top-K
  at the wider setting contains every exhaustive top-K item the narrower one found."""
  users, items = _vectors(5)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=5)
  ub = user_batch(np.arange(NUM_USERS))
  _, reference = map(np.asarray, exhaustive_top_k(scorer, ub, 15, num_items=NUM_ITEMS))
  leaf_beams = [((2, 4, b), None) for b in (1, 4, 12)]
  item_budgets = [((2, 4, 12), (0, 0, m)) for m in (20, 0)]  # 0: no budget
  built = stages(scorer, index)
  for sweep in (leaf_beams, item_budgets):
    previous = [set()] * NUM_USERS
    for beams, budget in sweep:
      result = searcher(scorer, index, beams, 15, built=built, max_candidates=budget)(ub)
      ids = np.asarray(result.ids)
      found = [set(r) & set(t) for r, t in zip(ids, reference)]
      assert all(p <= f for p, f in zip(previous, found))
      previous = found
      if budget and budget[-1]:
        assert np.all(np.asarray(result.items_scored) <= budget[-1])
    assert any(previous)


def test_padded_and_excluded_items_are_never_returned():
  users, items = _vectors(6)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=6)
  ub, exclude = user_batch(np.arange(NUM_USERS)), exclusions(7, width=60)
  k = 50  # more than one leaf holds, so rows run out of candidates and must pad
  result = searcher(scorer, index, (1, 1, 1), k)(ub, exclude)
  ids, scores = np.asarray(result.ids), np.asarray(result.scores)
  assert (ids == -1).any()
  np.testing.assert_array_equal(ids == -1, np.isneginf(scores))
  for row, banned in zip(ids, np.asarray(exclude)):
    real = row[row >= 0]
    assert len(set(real)) == len(real)
    assert not set(real) & set(banned[banned >= 0])
    assert np.all(real < NUM_ITEMS)
  eligible = np.asarray(result.items_scored)
  assert np.all((ids >= 0).sum(axis=1) <= eligible)


def test_same_shapes_never_retrace():
  users, items = _vectors(8)
  traces = []

  def counting_score(u, v):
    traces.append(1)  # runs only while tracing
    return u @ v.T

  scorer, index = dot_scorer(users, items, counting_score), tiny_index(items, seed=8)
  search = searcher(scorer, index, (2, 3, 4), 10)
  search(user_batch([0, 1, 2, 3]), exclusions(9, rows=4))
  traced = len(traces)
  assert traced > 0
  for start in (4, 8):
    search(user_batch(np.arange(start, start + 4)), exclusions(start, rows=4))
  assert len(traces) == traced
  search(user_batch([0, 1]), exclusions(9, rows=2))  # a new batch size compiles once more
  assert len(traces) == 2 * traced


def test_expand_lays_children_out_back_to_back():
  table = jnp.array([[5, 6, -1], [7, -1, -1], [8, 9, 10]])
  counts = jnp.array([2, 1, 3])
  cand, slot, valid = bs.expand(jnp.array([[2, -1, 0], [1, 1, -1]]), table, counts, 6)
  np.testing.assert_array_equal(cand, [[8, 9, 10, 5, 6, -1], [7, 7, -1, -1, -1, -1]])
  np.testing.assert_array_equal(valid, np.asarray(cand) >= 0)
  np.testing.assert_array_equal(np.asarray(slot)[0, :5], [0, 0, 0, 2, 2])
  np.testing.assert_array_equal(np.asarray(slot)[1, :2], [0, 1])


def test_expand_runs_lays_consecutive_rows_out_back_to_back():
  starts, counts = jnp.array([0, 2, 3]), jnp.array([2, 1, 3])
  cand, slot, valid = bs.expand_runs(jnp.array([[2, -1, 0], [1, 1, -1]]), starts, counts, 6)
  np.testing.assert_array_equal(cand, [[3, 4, 5, 0, 1, -1], [2, 2, -1, -1, -1, -1]])
  np.testing.assert_array_equal(valid, np.asarray(cand) >= 0)
  np.testing.assert_array_equal(np.asarray(slot)[0, :5], [0, 0, 0, 2, 2])


def test_leaf_major_items_hold_each_leafs_items_consecutively():
  users, items = _vectors(13)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=13)
  layout = bs.leaf_major_items(index, bs.item_level_scorer(scorer, NUM_ITEMS))
  node_items = np.asarray(index.node_items)
  for leaf, row in enumerate(node_items):
    rows = slice(layout.starts[leaf], layout.starts[leaf] + layout.counts[leaf])
    np.testing.assert_array_equal(layout.order[rows], row[row >= 0])
  np.testing.assert_array_equal(np.sort(layout.order), np.arange(NUM_ITEMS))
  np.testing.assert_array_equal(layout.stage.reprs, items[layout.order])


@pytest.mark.parametrize("users_per_step", [None, 1, 5])
def test_the_item_layout_and_user_batching_do_not_change_results(users_per_step):
  """A shared leaf-major layout, one built per search, and every users_per_step give the same
  top-K, scores and counts (narrow beams and an item budget, so candidate sets differ by user)."""
  users, items = _vectors(14)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=14)
  levels, item_stage = stages(scorer, index)
  ub, exclude = user_batch(np.arange(NUM_USERS)), exclusions(15)
  args = (index, levels)
  want = bs.BeamSearch(*args, item_stage, (2, 3, 4), 20, max_candidates=(0, 6, 40),
                       users_per_step=None)(ub, exclude)
  shared = bs.leaf_major_items(index, item_stage)
  got = bs.BeamSearch(*args, shared, (2, 3, 4), 20, max_candidates=(0, 6, 40),
                      users_per_step=users_per_step)(ub, exclude)
  for field in ("ids", "scores", "items_scored", "stage_scored"):
    np.testing.assert_array_equal(np.asarray(getattr(got, field)), np.asarray(getattr(want, field)))
  assert (np.asarray(want.items_scored) < NUM_ITEMS).all()


def test_representative_scorer_encodes_the_representatives():
  users, items = _vectors(10)
  index = tiny_index(items, seed=10)
  level = bs.representative_level_scorer(dot_scorer(users, items), index, 1, chunk=3)
  np.testing.assert_array_equal(level.reprs, items[index.representative[1]])


def test_bad_arguments_raise():
  users, items = _vectors(11)
  scorer, index = dot_scorer(users, items), tiny_index(items, seed=11)
  with pytest.raises(ValueError, match="beam widths"):
    searcher(scorer, index, (2, 2), 5)
  with pytest.raises(ValueError, match="level_weights"):
    searcher(scorer, index, (2, 2, 2), 5, level_weights=((1.0,), (1.0,)))
  levels = [bs.representative_level_scorer(scorer, index, l) for l in range(3)]
  with pytest.raises(ValueError, match="leading dims"):
    bs.BeamSearch(index, levels[::-1], bs.item_level_scorer(scorer, NUM_ITEMS), (2, 2, 2), 5)
  other = bs.leaf_major_items(tiny_index(items, seed=12), bs.item_level_scorer(scorer, NUM_ITEMS))
  with pytest.raises(ValueError, match="another index"):
    bs.BeamSearch(index, levels, other, (2, 2, 2), 5)
  with pytest.raises(ValueError, match="users_per_step"):
    searcher(scorer, index, (2, 2, 2), 5, users_per_step=0)


def _vectors(seed):
  return helpers.tie_free_vectors(seed, NUM_USERS, NUM_ITEMS, DIM)


def test_members_level_scorer_takes_the_max_over_each_nodes_members():
  users, items = _vectors(8)
  scorer = dot_scorer(users, items)
  index = tiny_index(items)
  node_items = np.asarray(index.node_items)
  members = np.where(node_items >= 0, node_items, node_items[:, :1])  # every item of each leaf
  stage = bs.members_level_scorer(scorer, members)
  ub = user_batch(np.arange(NUM_USERS))
  got = np.asarray(stage.scorer.score(scorer.encode_users(ub), stage.reprs))
  full = users @ items.T
  want = np.stack([full[:, row[row >= 0]].max(axis=1) for row in node_items], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert stage.scorer.flops_per_pair == members.shape[1] * scorer.flops_per_pair


def test_beam_search_with_exact_leaf_maxima_finds_the_top_items_in_the_fewest_leaves():
  """With node score = max over all its items, the top-1 item's leaf always ranks first among
  its siblings, so beams of one leaf per parent still find every user's best item."""
  users, items = _vectors(9)
  scorer = dot_scorer(users, items)
  index = tiny_index(items)
  levels = []
  for l in range(index.num_levels):
    col = np.asarray(index.item_path)[:, l]
    members = top_members(col, np.zeros(NUM_ITEMS), index.num_nodes[l], NUM_ITEMS)
    levels.append(bs.members_level_scorer(scorer, members))
  search = bs.BeamSearch(index, levels, bs.item_level_scorer(scorer, NUM_ITEMS), (1, 1, 1), 1)
  ub = user_batch(np.arange(NUM_USERS))
  _, want = exhaustive_top_k(scorer, ub, 1, num_items=NUM_ITEMS)
  np.testing.assert_array_equal(np.asarray(search(ub).ids), np.asarray(want))
