"""I2IF features against slow Python-loop references, including -1 padding and repeated keys."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hsnn_jax.models import i2if

NUM_ITEMS, NUM_KEYS, KEY_SLOTS, HISTORY, USERS, CANDIDATES = 12, 7, 3, 5, 4, 6


def random_case(seed: int):
  """Item keys with padded and repeated slots; histories with padding and an empty user."""
  rng = np.random.default_rng(seed)
  item_keys = rng.integers(0, NUM_KEYS, size=(NUM_ITEMS, KEY_SLOTS))
  item_keys[rng.random(item_keys.shape) < 0.3] = -1
  item_keys[0] = -1  # an item without keys
  item_keys[1] = [2, 2, -1]  # a repeated key counts once
  history = rng.integers(0, NUM_ITEMS, size=(USERS, HISTORY))
  history[rng.random(history.shape) < 0.3] = -1
  history[0] = -1  # a user without history
  history[1, :2] = [1, 1]  # the same item twice counts twice
  candidates = rng.permutation(NUM_ITEMS)[:CANDIDATES]
  candidates[0] = 0
  return item_keys.astype(np.int32), history.astype(np.int32), candidates.astype(np.int32)


def reference_profile(history, item_keys):
  profile = np.zeros((len(history), NUM_KEYS))
  for b, row in enumerate(history):
    items = [v for v in row if v >= 0]
    for v in items:
      for k in {k for k in item_keys[v] if k >= 0}:
        profile[b, k] += 1.0 / len(items)
  return profile


def reference_pair_features(profile, cand_keys):
  out = np.zeros((len(profile), len(cand_keys), i2if.NUM_PAIR_FEATURES))
  for b in range(len(profile)):
    for n, keys in enumerate(cand_keys):
      shares = [profile[b, k] for k in sorted({k for k in keys if k >= 0})]
      if shares:
        out[b, n] = [max(shares), np.mean(shares), sum(shares), float(max(shares) > 0)]
  return out


def reference_history_pool(history, item_keys, candidates, hist_emb):
  out = np.zeros((len(history), len(candidates), hist_emb.shape[-1]))
  for b, row in enumerate(history):
    for n, cand in enumerate(candidates):
      cand_keys = {k for k in item_keys[cand] if k >= 0}
      matched = [h for h, v in enumerate(row) if v >= 0 and cand_keys & set(item_keys[v])]
      if matched:
        out[b, n] = np.mean(hist_emb[b, matched], axis=0)
  return out


@functools.partial(jax.jit, static_argnums=2)
def jitted_profile(history, item_keys, num_keys):
  return i2if.user_key_profile(history, item_keys, num_keys)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_profile_and_pair_features_match_loop(seed):
  item_keys, history, candidates = random_case(seed)
  profile = np.asarray(jitted_profile(history, item_keys, NUM_KEYS))
  np.testing.assert_allclose(profile, reference_profile(history, item_keys), atol=1e-6)
  assert np.all(profile[0] == 0)
  cand_keys = item_keys[candidates]
  features = np.asarray(jax.jit(i2if.pair_features)(profile, cand_keys))
  assert features.shape == (USERS, CANDIDATES, i2if.NUM_PAIR_FEATURES)
  np.testing.assert_allclose(features, reference_pair_features(profile, cand_keys), atol=1e-6)
  assert np.all(features[:, 0] == 0)  # the keyless candidate


@pytest.mark.parametrize("seed", [0, 3])
def test_history_pool_matches_loop(seed):
  item_keys, history, candidates = random_case(seed)
  hist_emb = np.random.default_rng(seed).normal(size=(USERS, HISTORY, 3)).astype(np.float32)
  hist_keys = i2if.history_keys(jnp.asarray(history), jnp.asarray(item_keys))
  assert np.all(np.asarray(hist_keys)[history < 0] == -1)

  @jax.jit
  def pool(hist_keys, cand_keys, hist_emb):
    return i2if.restricted_history_pool(i2if.history_match_mask(hist_keys, cand_keys), hist_emb)

  got = np.asarray(pool(hist_keys, item_keys[candidates], hist_emb))
  want = reference_history_pool(history, item_keys, candidates, hist_emb)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert np.any(want != 0)  # the case exercises real matches


def test_adding_padding_changes_nothing():
  item_keys, history, candidates = random_case(4)
  padded_history = np.concatenate([np.full((USERS, 3), -1, np.int32), history], axis=1)
  padded_keys = np.concatenate([item_keys, np.full((NUM_ITEMS, 2), -1, np.int32)], axis=1)

  @jax.jit
  def features(history, item_keys):
    profile = i2if.user_key_profile(history, item_keys, NUM_KEYS)
    return profile, i2if.pair_features(profile, item_keys[candidates])

  for got, want in zip(features(padded_history, padded_keys), features(history, item_keys)):
    np.testing.assert_allclose(got, want, atol=1e-7)


def test_first_occurrence():
  keys = jnp.array([[3, 3, -1, 1, 3], [-1, -1, -1, -1, -1]])
  np.testing.assert_array_equal(i2if.first_occurrence(keys),
                                [[True, False, False, True, False], [False] * 5])
