"""Held-out NE: an informative scorer beats the base rate, a constant one does not, and the
calibration makes NE independent of the score's scale."""

import numpy as np
import pytest

from hsnn_jax.data.types import CSR, RecDataset
from hsnn_jax.eval.ne import _fit_platt, heldout_ne
from tests.helpers import dot_scorer
from tests.test_exhaustive import make_user_batch

NUM_USERS, NUM_ITEMS = 200, 400


def planted():
  """Users and items in 4 groups; every test item is in the user's group."""
  rng = np.random.default_rng(0)
  group = np.arange(NUM_ITEMS) % 4
  user_group = np.arange(NUM_USERS) % 4
  train, test = [], []
  for u in range(NUM_USERS):
    own = rng.permutation(np.flatnonzero(group == user_group[u]))[:6]
    train.append(own[:4]), test.append(own[4:])
  ds = RecDataset(name="planted", protocol="synthetic", num_users=NUM_USERS, num_items=NUM_ITEMS,
                  train=CSR.from_lists(train), valid=CSR.empty(NUM_USERS),
                  test=CSR.from_lists(test), user_ids=np.arange(NUM_USERS),
                  item_ids=np.arange(NUM_ITEMS))
  users = np.eye(4, dtype=np.float32)[user_group]
  items = np.eye(4, dtype=np.float32)[group]
  return ds, users, items


def test_informative_scorer_beats_the_base_rate_and_scale_does_not_matter():
  ds, users, items = planted()
  good = heldout_ne(dot_scorer(users, items), ds, make_user_batch, user_chunk=64)
  scaled = heldout_ne(dot_scorer(users * 7.0, items), ds, make_user_batch, user_chunk=64)
  blind = heldout_ne(dot_scorer(np.ones_like(users), items), ds, make_user_batch, user_chunk=64)
  assert 0.0 < good < 0.8
  assert scaled == pytest.approx(good, rel=1e-4)
  assert blind == pytest.approx(1.0, abs=0.02)


def test_platt_fit_recovers_a_known_logistic_model():
  rng = np.random.default_rng(1)
  s = rng.normal(size=20000)
  y = (rng.random(s.shape) < 1 / (1 + np.exp(-(2.0 * s - 1.0)))).astype(np.float64)
  a, b = _fit_platt(s, y)
  assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)
