"""MoNN: shapes per preset, config validation, FLOP accounting, Scorer consistency, learning."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hsnn_jax.data.types import CSR, RecDataset
from hsnn_jax.models import flops as flops_lib
from tests import flops_oracle
from hsnn_jax.models import monn
from hsnn_jax.models.monn import MoNN
from hsnn_jax.models.scorer import UserBatch, take_reprs

# Shape-only checks use a fixed tiny vocabulary (abstract evaluation, nothing is compiled).
SHAPE_KEYS = np.array([[0, 1, -1], [2, -1, -1], [1, 1, 3], [-1, -1, -1], [3, 0, 2]] * 4, np.int32)
SHAPE_USERS = UserBatch(user=jnp.array([0, 1, 2]),
                        history=jnp.array([[0, 1, -1, -1], [2, 3, 4, 5], [-1, -1, -1, -1]]),
                        features=jnp.zeros((3, 2), jnp.int32))
SHAPE_ITEMS = jnp.arange(6)

# Small enough to compile quickly; every module (all three towers, two OverArch layers) is on.
TEST_CONFIG = monn.monn_preset(
    "monn_small", name="monn_test", num_embed_user=2, dim_user=8, dim_item=8, dim_ui=8,
    field_dim=8, user_mlp=(16,), item_mlp=(), ui_mlp=(), afm_attention_dim=4, overarch_dim=8,
    overarch_tokens=2, overarch_token_dim=4, num_tasks=2)


def shape_model(config: monn.MoNNConfig) -> MoNN:
  return MoNN(config, item_keys=jnp.asarray(SHAPE_KEYS), num_keys=4, num_users=5,
              user_feature_sizes=(3, 4))


def method_fns(model):
  """The three apply methods as pure functions of (params, inputs)."""
  apply = lambda method: lambda p, *a: model.apply({"params": p}, *a, method=method)
  return apply(MoNN.encode_users), apply(MoNN.encode_items), apply(MoNN.score)


@functools.lru_cache(maxsize=None)
def abstract_preset(name):
  """Model, abstract params and reprs of a preset on the shape vocabulary (nothing compiled)."""
  model = shape_model(monn.monn_preset(name, num_tasks=2))
  params = jax.eval_shape(model.init, jax.random.key(0), SHAPE_USERS, SHAPE_ITEMS)["params"]
  encode_users, encode_items, _ = method_fns(model)
  return (model, params, jax.eval_shape(encode_users, params, SHAPE_USERS),
          jax.eval_shape(encode_items, params, SHAPE_ITEMS))


@pytest.mark.parametrize("name", monn.PRESET_NAMES)
def test_preset_output_shapes(name):
  model, params, user, item = abstract_preset(name)
  config = model.config
  assert user.tower.shape == (3, config.num_embed_user, config.dim_user)
  assert item.tower.shape == (6, config.num_embed_item, config.dim_item)
  assert jax.eval_shape(method_fns(model)[2], params, user, item).shape == (3, 6, 2)
  if config.num_embed_ui:
    assert user.profile.shape == (3, 4) and item.keys.shape == (6, 3)
    if config.i2if_history_pool:
      assert user.hist_keys.shape == (3, 4, 3)
      assert user.hist_emb.shape == (3, 4, config.field_dim)
    else:
      assert user.hist_keys is None and user.hist_emb is None
    pair = jax.eval_shape(lambda p, u, i: model.apply({"params": p}, u, i,
                                                      method=MoNN.interaction), params, user, item)
    assert pair.shape == (3, 6, config.num_embed_ui, config.dim_ui)
  else:
    assert user.profile is None and item.keys is None


@pytest.mark.parametrize("name", monn.PRESET_NAMES)
def test_traced_flops_match_the_hand_formulas(name):
  model, params, user, item = abstract_preset(name)
  encode_users, encode_items, score = method_fns(model)
  want = flops_oracle.model_flops(model, history_len=SHAPE_USERS.history.shape[1])
  count = flops_lib.count_matmul_flops
  assert count(encode_users, params, SHAPE_USERS) == 3 * want.per_query
  assert count(encode_items, params, SHAPE_ITEMS) == 6 * want.per_item
  # Everything in `score` is per pair: no per-user or per-item work hides there.
  assert count(score, params, user, item) == 3 * 6 * want.per_pair
  # The library's own count (one user, one item) is the same.
  assert monn.model_flops(model, SHAPE_USERS.history.shape[1]) == want


def _flops(name):
  return flops_oracle.monn_flops(monn.monn_preset(name), num_user_features=2, num_key_slots=3,
                              history_len=20)


def test_flops_grow_with_preset_size():
  table5 = [name for name in monn.PRESET_NAMES if not name.endswith("_lite")]
  costs = [_flops(name) for name in table5]
  for smaller, larger in zip(costs, costs[1:]):
    assert larger.per_pair > smaller.per_pair and larger.per_query > smaller.per_query
  assert costs[0].per_pair == 2 * 40  # the two-tower dot product


@pytest.mark.parametrize("base", ["monn_small", "monn_medium"])
def test_public_data_sizes_cut_the_per_pair_work(base):
  """The *_lite presets keep Table 5's embedding counts and cut the per-pair work (what
  full-corpus scoring pays per item) at least five-fold."""
  lite, full = monn.monn_preset(f"{base}_lite"), monn.monn_preset(base)
  for field in ("num_embed_user", "num_embed_item", "num_embed_ui", "user_mlp", "item_mlp"):
    assert getattr(lite, field) == getattr(full, field), field
  assert 5 * _flops(f"{base}_lite").per_pair < _flops(base).per_pair


def test_flops_hand_count_on_tiny_config():
  config = monn.MoNNConfig(
      num_embed_user=2, dim_user=3, num_embed_item=1, dim_item=3, num_embed_ui=1, dim_ui=2,
      field_dim=2, user_mlp=(), item_mlp=(), ui_mlp=(), afm_attention_dim=1, overarch_layers=1,
      overarch_dim=2, overarch_tokens=1, overarch_token_dim=2, num_tasks=1).validate()
  cost = flops_oracle.monn_flops(config, num_user_features=0, num_key_slots=2, history_len=3)
  i2if_pooling = 2 * 4 * 2 + 2 * 2 * 2 + 2 * 3 * 2  # pair features -> d, matched keys, history
  # Interaction tower, 3 fields of size 2 (3 pairs), no MLP: AFM (attention hidden, attention
  # logit, weighted sum), then the output layer on [flattened fields; AFM] -> 1 x 2.
  ui_tower = (2 * 3 * 2 * 1 + 2 * 3 * 1 + 2 * 3 * 2) + 2 * (3 * 2 + 2) * 2
  # OverArch with D_o = 2 and S W = 2: user.item dots (2 of them), project ui, user.ui and
  # item.ui dots, MLP slice for ui, the dense layer on the 5 cross dots, MLP output, head.
  overarch = 2 * 2 * 2 + 2 * 2 * 2 + 2 * 3 * 2 + 2 * 2 * 2 + 2 * 5 * 2 + 2 * 2 * 2 + 2 * 2
  assert cost.per_pair == i2if_pooling + ui_tower + overarch == 166
  # User tower: 3 fields (id, history mean, history key mean) -> 2 x 3, then its OverArch side:
  # project (2 x 3 -> 2), Gram matrix, dense on the single dot, MLP slice.
  user_tower = 30 + 2 * (3 * 2 + 2) * 6
  assert cost.per_query == user_tower + 2 * 2 * 3 * 2 + 2 * 4 * 2 + 2 * 1 * 2 + 2 * 4 * 2


@pytest.mark.parametrize("field, overrides", [
    ("dim_user", {"dim_user": 0}),
    ("user_mlp", {"user_mlp": (8, 0)}),
    ("num_embed_ui", {"num_embed_ui": -1}),
    ("overarch_tokens", {"overarch_tokens": 0}),
])
def test_validate_names_the_bad_field(field, overrides):
  with pytest.raises(ValueError, match=field):
    monn.monn_preset("monn_small", **overrides)


def test_validate_dot_product_constraints():
  for field, overrides in [("num_embed_user", {"num_embed_user": 2}),
                           ("num_embed_ui", {"num_embed_ui": 1}),
                           ("dim_item", {"dim_item": 8})]:
    with pytest.raises(ValueError, match=field):
      monn.monn_preset("two_tower_tiny", **overrides)
  with pytest.raises(ValueError, match="unknown MoNN preset"):
    monn.monn_preset("monn_huge")


# ---- A planted task: label = the item carries a key that occurs in the user's history. ----

NUM_ITEMS, NUM_KEYS, KEY_SLOTS, HISTORY = 60, 10, 3, 6
TRAIN_USERS, TEST_USERS, CANDIDATES = 160, 80, 16


def planted_task(seed: int = 0):
  rng = np.random.default_rng(seed)
  item_keys = np.full((NUM_ITEMS, KEY_SLOTS), -1, np.int32)
  for v in range(NUM_ITEMS):
    keys = rng.choice(NUM_KEYS, size=rng.integers(1, 3), replace=False)
    item_keys[v, rng.choice(KEY_SLOTS, size=len(keys), replace=False)] = keys
  num_users = TRAIN_USERS + TEST_USERS
  history = np.full((num_users, HISTORY), -1, np.int32)
  for u in range(num_users):
    length = rng.integers(1, HISTORY)
    history[u, HISTORY - length:] = rng.choice(NUM_ITEMS, size=length, replace=False)
  users = np.repeat(np.arange(num_users), CANDIDATES)
  items = rng.integers(0, NUM_ITEMS, size=len(users))
  user_keys = [set(item_keys[history[u][history[u] >= 0]].ravel()) - {-1} for u in users]
  matches = np.array([bool(user_keys[j] & set(item_keys[v])) for j, v in enumerate(items)])
  # Task 1 depends on the item alone: it has a key below 5.
  item_task = np.array([bool(set(item_keys[v]) & set(range(5))) for v in items])
  labels = np.stack([matches, item_task], axis=1).astype(np.float32)
  return item_keys, history, users, items, labels


def auc(scores, labels):
  order = np.argsort(scores)
  ranks = np.empty(len(scores))
  ranks[order] = np.arange(1, len(scores) + 1)
  pos = labels > 0.5
  return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


@pytest.fixture(scope="module")
def planted():
  """The planted task, the test model with its initial params, and jitted functions shared by
  the tests below (each distinct shape compiles once)."""
  item_keys, history, users, items, labels = planted_task()
  model = MoNN(TEST_CONFIG, item_keys=jnp.asarray(item_keys), num_keys=NUM_KEYS,
               num_users=TRAIN_USERS + TEST_USERS)
  history_table = jnp.asarray(history)

  def batch(user_ids):
    user_ids = jnp.asarray(user_ids)
    return UserBatch(user=user_ids, history=history_table[user_ids],
                     features=jnp.zeros((user_ids.shape[0], 0), jnp.int32))

  # rbg keys only to compile the initializers faster; the model does not depend on it.
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), batch(np.arange(4)),
                               jnp.arange(5))["params"]
  scorer = monn.make_scorer(model, params, task=1, history_len=HISTORY)
  user_traces = []

  def encode_users(users):
    user_traces.append(users.history.shape)
    return scorer.encode_users(users)

  return dict(model=model, params=params, batch=batch, users=users, items=items, labels=labels,
              scorer=scorer, encode_users=jax.jit(encode_users), user_traces=user_traces,
              encode_items=jax.jit(scorer.encode_items), score=jax.jit(scorer.score),
              pair_logits=jax.jit(lambda p, u, i: monn.pair_logits(model, p, batch(u), i)))


ALIGNED_CHUNK = 24


def aligned_logits(planted, params, user_ids, item_ids):
  """pair_logits in fixed chunks of ALIGNED_CHUNK pairs (one compiled shape) -> [P, T]."""
  size = len(user_ids)
  pad = -size % ALIGNED_CHUNK
  user_ids, item_ids = (np.concatenate([np.asarray(a), np.zeros(pad, np.int32)])
                        for a in (user_ids, item_ids))
  chunk = lambda a, s: a[s:s + ALIGNED_CHUNK]
  out = [planted["pair_logits"](params, chunk(user_ids, s), chunk(item_ids, s))
         for s in range(0, len(user_ids), ALIGNED_CHUNK)]
  return np.concatenate(out)[:size]


def test_scorer_matches_per_pair_and_chunks(planted):
  model, params, batch, scorer = (planted[k] for k in ("model", "params", "batch", "scorer"))
  planted["encode_users"](batch(np.array([3, 4, 6])))
  traced = len(planted["user_traces"])
  user_ids, item_ids = np.array([0, 5, 170]), np.arange(8) * 7
  user, item = planted["encode_users"](batch(user_ids)), planted["encode_items"](item_ids)
  assert len(planted["user_traces"]) == traced  # the item-key constant forces no retracing
  full = np.asarray(planted["score"](user, item))
  assert full.shape == (3, 8)
  # Corpus reprs encoded once and sliced into chunks score the same.
  chunks = [planted["score"](user, take_reprs(item, jnp.arange(s, s + 4))) for s in (0, 4)]
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, atol=1e-5)
  # Each pair scored on its own (aligned pairs, all tasks) agrees with the all-pairs logits.
  alone = aligned_logits(planted, params, np.repeat(user_ids, 8), np.tile(item_ids, 3))
  np.testing.assert_allclose(alone[:, 1].reshape(3, 8), full, atol=1e-5)
  weighted = monn.make_scorer(model, params, task_weights=(0.5, 2.0), history_len=HISTORY)
  np.testing.assert_allclose(jax.jit(weighted.score)(user, item).ravel(),
                             0.5 * alone[:, 0] + 2.0 * alone[:, 1], atol=1e-5)
  assert scorer.flops_per_pair == monn.model_flops(model, HISTORY).per_pair > 0
  with pytest.raises(ValueError, match="history_len"):
    monn.make_scorer(model, params)


def test_history_padding_does_not_change_scores(planted):
  users = planted["batch"](np.array([1, 2, 200]))
  rng = np.random.default_rng(1)
  wide = np.full((3, HISTORY + 4), -1, np.int32)
  for b, row in enumerate(np.asarray(users.history)):  # same items, padding moved and added
    valid = row[row >= 0]
    wide[b, np.sort(rng.choice(HISTORY + 4, size=len(valid), replace=False))] = valid
  padded = UserBatch(user=users.user, history=jnp.asarray(wide), features=users.features)
  item = planted["encode_items"](np.arange(8) * 7)
  scores = [planted["score"](planted["encode_users"](u), item) for u in (users, padded)]
  np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)


def test_learns_planted_key_match_on_unseen_users(planted):
  model, batch = planted["model"], planted["batch"]
  users, items, labels = planted["users"], planted["items"], planted["labels"]
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, u, i, y):
    def loss_fn(p):
      logits = monn.pair_logits(model, p, batch(u), i)
      return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  params = planted["params"]
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  train_idx = np.flatnonzero(users < TRAIN_USERS)
  for _ in range(200):
    j = rng.choice(train_idx, size=256, replace=False)
    params, opt_state = step(params, opt_state, users[j], items[j], labels[j])
  test = users >= TRAIN_USERS
  logits = aligned_logits(planted, params, users[test], items[test])
  assert auc(logits[:, 0], labels[test, 0]) > 0.9  # needs the I2IF features: users are unseen
  assert auc(logits[:, 1], labels[test, 1]) > 0.9


def test_for_dataset_builds_keys_from_item_attrs():
  csr = CSR.from_lists([[0], [1, 2], [0]])
  dataset = RecDataset(
      name="toy", protocol="synthetic", num_users=3, num_items=3, train=csr,
      valid=CSR.empty(3), test=CSR.empty(3), user_ids=np.arange(3), item_ids=np.arange(3),
      item_attrs=CSR.from_lists([[4], [0, 1], []]), num_attrs=5, user_features=None)
  model = MoNN.for_dataset(monn.monn_preset("monn_small"), dataset)
  np.testing.assert_array_equal(model.item_keys, [[4, -1], [0, 1], [-1, -1]])
  assert model.num_keys == 5 and model.num_users == 3
  keyless = MoNN.for_dataset(monn.monn_preset("monn_small"),
                             dataclasses.replace(dataset, item_attrs=None, num_attrs=0))
  assert keyless.item_keys.shape == (3, 1) and np.all(np.asarray(keyless.item_keys) == -1)
