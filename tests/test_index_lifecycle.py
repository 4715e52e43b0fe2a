"""The index life cycle (hsnn_jax/index/lifecycle.py): events on exact steps, per mode."""

import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.lifecycle import IndexLifecycle
from hsnn_jax.index.residual_quantizer import get_codebooks

NUM_ITEMS, DIM, NODES = 40, 4, (4, 2)


def lifecycle(mode, node_key_limit=None, **schedule):
  config = IndexConfig(nodes_per_level=NODES, mode=mode, kmeans_iters=3, **schedule).validate()
  return IndexLifecycle(config, balance_widths=(4, 8), seed=0, node_key_limit=node_key_limit)


def quantizer():
  return {f"level_{l}": {"codebook": jnp.zeros((k, DIM))} for l, k in enumerate(NODES)}


class Embedder:
  """embed_and_code stand-in: fixed embeddings, codes all 1; counts its calls."""

  def __init__(self):
    self.calls = 0
    self.embeddings = np.random.default_rng(0).normal(size=(NUM_ITEMS, DIM)).astype(np.float32)

  def __call__(self, params, state):
    self.calls += 1
    return self.embeddings, np.ones((NUM_ITEMS, len(NODES)), np.int32)


def run(life, steps):
  """Applies `update` after every step in `steps`; returns the steps where the index changed."""
  q, state, embed, changed = quantizer(), None, Embedder(), []
  state = life.initial_state(NUM_ITEMS, np.full((NUM_ITEMS, 1), -1, np.int32))
  for step in steps:
    new_q, new_state = life.update(step, q, state, None, embed)
    if new_state is not state:
      changed.append(step)
    q, state = new_q, new_state
  return changed, q, state


@pytest.mark.parametrize("mode, schedule, want", [
    ("joim", dict(start_step=5, refresh_every=4), [5, 8, 12, 16]),
    ("sil", dict(start_step=5), [5]),
    ("em", dict(start_step=5, em_every=6), [5, 11, 17]),
])
def test_events_happen_on_their_steps_and_next_event_finds_them(mode, schedule, want):
  life = lifecycle(mode, **schedule)
  changed, _, _ = run(life, range(0, 19))
  assert changed == want
  # Walking from event to event with next_event visits the same steps.
  q, embed, step, visited = quantizer(), Embedder(), 0, []
  state = life.initial_state(NUM_ITEMS, np.full((NUM_ITEMS, 1), -1, np.int32))
  while True:
    nxt = life.next_event(step, state)
    if nxt is None or nxt > 18:
      break
    q, new_state = life.update(nxt, q, state, None, embed)
    assert new_state is not state, (mode, nxt)
    visited.append(nxt)
    step, state = nxt, new_state
  assert visited == want


def test_build_sets_kmeans_codebooks_and_the_build_step():
  changed, q, state = run(lifecycle("sil", start_step=3), range(0, 5))
  assert changed == [3] and int(state.built_at) == 3 and int(state.last_cluster) == 3
  books = get_codebooks(q)
  assert [b.shape for b in books] == [(4, DIM), (2, DIM)]
  assert all(float(jnp.abs(b).sum()) > 0 for b in books)  # k-means replaced the zeros
  codes = np.asarray(state.codes)
  assert codes.shape == (NUM_ITEMS, 2) and codes[:, 0].max() < 4 and codes[:, 1].max() < 2


def test_node_keys_follow_the_codes_only_on_attribute_free_data():
  _, _, keyed = run(lifecycle("joim", start_step=2, refresh_every=2), range(0, 5))
  assert np.all(np.asarray(keyed.item_keys) == -1)  # attribute keys: never touched
  _, _, nodes = run(lifecycle("joim", node_key_limit=1000, start_step=2, refresh_every=2),
                    range(0, 5))
  keys = np.asarray(nodes.item_keys)
  assert keys.shape == (NUM_ITEMS, 2)
  np.testing.assert_array_equal(keys, [[1, 4 + 1 * 2 + 1]] * NUM_ITEMS)  # codes (1, 1) last


def test_initial_keys_are_empty_with_one_column_per_key_level():
  keys, vocab = lifecycle("joim", node_key_limit=1000).initial_keys(NUM_ITEMS)
  assert keys.shape == (NUM_ITEMS, 2) and np.all(keys == -1) and vocab == 4 + 8
  keys, vocab = lifecycle("joim", node_key_limit=4).initial_keys(NUM_ITEMS)
  assert keys.shape == (NUM_ITEMS, 1) and vocab == 4
