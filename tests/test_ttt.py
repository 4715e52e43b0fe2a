"""Test-time training (hsnn_jax/train/ttt.py): example sampling, which parameters move, that
fine-tuning fits its examples (and generalises to held-out ancestors on planted data), the
config checks, and the end-to-end before/after evaluation.

Planted corpus: 200 items in a 4 x 2 tree, 300 users with one interest each. Models are the
tiny configs' (the MoNN and HSNN ones with dot-product or tiny-width presets) and train for at
most 200 steps, so every test runs in seconds on a loaded CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny, tiny_hsnn, tiny_monn
from hsnn_jax.data import synthetic
from hsnn_jax.data.types import CSR
from hsnn_jax.index.publish import publish_index
from hsnn_jax.models import hsnn
from hsnn_jax.train import tasks, trainer, ttt
from hsnn_jax.train.sampler import DeviceInteractions, sample_batch, user_batch_for_eval


@pytest.fixture(scope="module")
def planted():
  return synthetic.generate(synthetic.SyntheticConfig(
      name="ttt_planted", num_items=200, num_users=300, branching=(4, 2), dim=8,
      max_interests=1, min_interactions=5, max_interactions=10))


def _trained(cfg, ds, steps: int = 0) -> trainer.Trained:
  """cfg's model on ds, trained `steps` steps the way the trainer does."""
  task = tasks.build_task(cfg, ds)
  data = DeviceInteractions.from_dataset(ds, task.history_len)
  init_key, key = jax.random.split(jax.random.PRNGKey(cfg.seed))
  t = cfg.train
  # Compiled: eager MoNN init takes 20 s on a loaded CPU. HSNN's init builds its index on the
  # host and jits its own module init.
  init = task.init if cfg.model.kind == "hsnn" else jax.jit(task.init)
  params, aux = init(init_key, sample_batch(key, data, t.batch_size, t.num_negatives,
                                            task.history))
  if steps:
    tx = trainer.make_optimizer(t)
    state = trainer.TrainState(step=jnp.int32(0), params=params, aux=aux,
                               opt_state=tx.init(params), key=key, bad_step=jnp.int32(-1))
    state, _ = trainer.make_train_chunk(task, tx, cfg)(state, data, steps)
    params, aux = state.params, state.aux
  return trainer.Trained(ds=ds, task=task, params=params, aux=aux, step=steps)


def _two_tower_config(**model):
  c = tiny.get_config()
  c.progress_bar = False
  c.train.warmup_steps = 10
  c.train.num_steps = 200
  c.model.update(model)
  return c


def _planted_index(run: trainer.Trained):
  """The planted 4 x 2 tree as a published index over the run's item embeddings (codebooks:
  the mean item per level-0 node, then the mean residual per level-1 code)."""
  vectors = ttt.item_vectors(run.scorer(), run.ds.num_items)
  path = run.ds.item_tree_paths
  codes = np.stack([path[:, 0], path[:, 1] % 2], axis=1)
  top = np.stack([vectors[codes[:, 0] == k].mean(0) for k in range(4)])
  residual = vectors - top[codes[:, 0]]
  bottom = np.stack([residual[codes[:, 1] == k].mean(0) for k in range(2)])
  return publish_index(codes, [top, bottom], vectors)


@pytest.fixture(scope="module")
def two_tower(planted):
  """(config, a 200-step two-tower run, the planted tree as its index)."""
  cfg = _two_tower_config()
  run = _trained(cfg, planted, steps=200)
  return cfg, run, _planted_index(run)


def _hsnn_config():
  c = tiny_hsnn.get_config()
  c.progress_bar = False
  c.model.item_model = "two_tower_tiny"
  c.model.level_models = ("two_tower_tiny", "two_tower_tiny")
  c.model.index.nodes_per_level = (4, 2)
  c.model.index.start_step = 0  # the index is built at init
  return c


def _monn_config():
  """tiny_monn with one OverArch layer and no tower MLPs: every user-side part (embeddings,
  user tower, OverArch user side), compiled in seconds."""
  c = tiny_monn.get_config()
  c.progress_bar = False
  c.model.overrides.update(dict(user_mlp=(), item_mlp=(), overarch_layers=1, num_embed_user=2))
  return c


@pytest.fixture(scope="module")
def hsnn_run(planted):
  cfg = _hsnn_config()
  return cfg, _trained(cfg, planted)


# ----------------------------------------------------------------------------- sampling

def _toy():
  """3 users; 6 items on a 2-level path (level 0: 2 nodes, level 1: 3 nodes)."""
  known = CSR.from_lists([[0, 1, 2], [3], [0, 0, 5, 4]])
  item_path = np.array([[0, 0], [0, 0], [0, 1], [1, 2], [1, 2], [1, 2]], np.int32)
  return known, item_path


def test_rate_one_keeps_every_ancestor_once_padded_and_sorted():
  known, item_path = _toy()
  ex = ttt.sample_examples(known, item_path, rates=(1.0, 1.0), seed=0)
  expected = [sorted({(u, item_path[v, l]) for u in range(3) for v in known.row(u)})
              for l in range(2)]
  assert expected == [[(0, 0), (1, 1), (2, 0), (2, 1)], [(0, 0), (0, 1), (1, 2), (2, 0), (2, 2)]]
  np.testing.assert_array_equal(ex.counts, [4, 5])
  assert ex.users.shape == ex.nodes.shape == (2, 5)
  for l in range(2):
    n = ex.counts[l]
    assert list(zip(ex.users[l, :n].tolist(), ex.nodes[l, :n].tolist())) == expected[l]
    assert (ex.users[l, n:] == -1).all() and (ex.nodes[l, n:] == -1).all()
  np.testing.assert_array_equal(ex.mask, ex.users >= 0)


def test_tiny_rate_keeps_nothing_and_depth_limits_levels():
  known, item_path = _toy()
  empty = ttt.sample_examples(known, item_path, rates=(1e-12, 1e-12), seed=0)
  np.testing.assert_array_equal(empty.counts, [0, 0])
  assert empty.users.shape == (2, 1) and not empty.mask.any()  # static width >= 1
  cfg = ttt.default_ttt_config(depth=1, rate=1.0)
  one = ttt.sample_examples(known, item_path, ttt.level_rates(cfg, 2), seed=0)
  assert one.users.shape[0] == 1 and one.counts.tolist() == [4]
  deep = ttt.default_ttt_config(depth=5, rate=(0.5, 0.25, 0.1))  # clipped to the index's levels
  assert ttt.level_rates(deep, 2) == (0.5, 0.25)


def test_sampling_is_seeded_and_a_node_survives_with_one_minus_one_minus_rate_to_the_k():
  # 4000 users, each with 3 items under level-1 node 0 and 1 item under node 1.
  item_path = np.array([[0, 0], [0, 0], [0, 0], [0, 1]], np.int32)
  known = CSR.from_lists([[0, 1, 2, 3]] * 4000)
  a = ttt.sample_examples(known, item_path, rates=(0.5, 0.5), seed=3)
  b = ttt.sample_examples(known, item_path, rates=(0.5, 0.5), seed=3)
  c = ttt.sample_examples(known, item_path, rates=(0.5, 0.5), seed=4)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.users, c.users)
  kept = a.nodes[1, :a.counts[1]]
  assert np.mean(np.bincount(kept, minlength=2) / 4000 - [1 - 0.5**3, 0.5]) == pytest.approx(
      0, abs=0.03)
  assert a.counts[0] / 4000 == pytest.approx(1 - 0.5**4, abs=0.02)


def test_known_items_add_valid_only_for_test(planted):
  for split, extra in (("test", planted.valid.lengths()), ("valid", 0)):
    np.testing.assert_array_equal(ttt.known_items(planted, split).lengths(),
                                  planted.train.lengths() + extra)


# ----------------------------------------------------------------------------- parameters

def _weighted_sum(tree, seed: int) -> jax.Array:
  """A fixed random linear read-out of every float leaf (a plain sum has zero gradient
  through LayerNorm and L2 normalisation)."""
  total = 0.0
  for i, x in enumerate(jax.tree.leaves(tree)):
    if jnp.issubdtype(x.dtype, jnp.floating):
      total = total + jnp.sum(x * jax.random.normal(jax.random.PRNGKey(seed + i), x.shape))
  return total


@pytest.mark.parametrize("kind", ["id_pooled", "sequence", "monn", "hsnn"])
def test_user_side_parameters_are_exactly_those_only_the_user_tower_reads(planted, hsnn_run,
                                                                          kind):
  if kind == "hsnn":
    cfg, run = hsnn_run
  else:
    cfg = _monn_config() if kind == "monn" else _two_tower_config(user_tower=kind)
    run = _trained(cfg, planted)
  scorer_fn = ttt.ttt_scorer_fn(run)
  users = user_batch_for_eval(planted, run.task.history_len, include_valid=True)(np.arange(32))
  items = jnp.arange(planted.num_items)
  user_out, item_out = jax.jit(lambda p: (
      jax.grad(lambda q: _weighted_sum(scorer_fn(q).encode_users(users), 0))(p),
      jax.grad(lambda q: _weighted_sum(scorer_fn(q).encode_items(items), 100))(p)))(run.params)
  mask = ttt.trainable_mask(run.params, "user", run.task.is_user_param)
  flags = jax.tree.leaves(mask)
  assert any(flags)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(run.params)]
  for path, flag, gu, gi in zip(paths, flags, jax.tree.leaves(user_out), jax.tree.leaves(item_out)):
    reads_user, reads_item = bool(jnp.any(gu != 0)), bool(jnp.any(gi != 0))
    if flag:
      assert not reads_item, f"{path} is marked user-side but item reprs depend on it"
    elif reads_user:
      assert reads_item, f"{path} is read only by the user tower but not marked user-side"
  assert all(jax.tree.leaves(ttt.trainable_mask(run.params, "all", run.task.is_user_param)))


def test_user_finetuning_leaves_item_side_bit_identical_and_fits_its_examples(two_tower):
  cfg, run, index = two_tower
  c = ttt.default_ttt_config(steps=30, learning_rate=1e-2, batch_size=64, num_negatives=64)
  setup = ttt.prepare(run, index, c)
  assert setup.node_repr == "embedding"  # a two-tower on its own index
  new, parts = ttt.fine_tune(run.params, setup, c)
  assert parts["total"].shape == (30,) and np.isfinite(np.asarray(parts["total"])).all()
  mask = ttt.trainable_mask(run.params, "user", run.task.is_user_param)
  for flag, old_leaf, new_leaf in zip(jax.tree.leaves(mask), jax.tree.leaves(run.params),
                                      jax.tree.leaves(new)):
    if flag:
      assert not np.array_equal(old_leaf, new_leaf)
    else:
      assert new_leaf is old_leaf
  before, after = ttt.node_loss(run.params, setup), ttt.node_loss(new, setup)
  assert (after < before - 0.05).all(), (before, after)
  # One planted interest per user: the ancestors of the held-out test items move up as well
  # (measured: level 0 CE 0.10 -> 0.02, level 1 0.77 -> 0.51).
  held_out = setup.replace(examples=jax.tree.map(jnp.asarray, ttt.sample_examples(
      run.ds.test, index.item_path, (1.0, 1.0), seed=0)))
  before, after = ttt.node_loss(run.params, held_out), ttt.node_loss(new, held_out)
  assert (after < 0.8 * before).all(), (before, after)


def test_sil_index_for_a_two_tower_run(two_tower):
  _, run, _ = two_tower
  index = ttt.index_for_run(run, (4, 4), seed=0)
  assert index.num_levels == 2 and index.num_items == run.ds.num_items
  assert index.num_nodes[0] <= 4 and index.num_nodes[1] <= 16


def test_all_parameters_and_representative_nodes(two_tower):
  cfg, run, index = two_tower
  c = ttt.default_ttt_config(steps=10, learning_rate=1e-2, batch_size=32, num_negatives=32,
                             params="all", node_repr="representative", anchor_weight=0.0)
  setup = ttt.prepare(run, index, c)
  assert setup.anchor is None and setup.nodes[0].dtype == jnp.int32
  new, parts = ttt.fine_tune(run.params, setup, c)
  assert "anchor" not in parts
  for old_leaf, new_leaf in zip(jax.tree.leaves(run.params), jax.tree.leaves(new)):
    assert not np.array_equal(old_leaf, new_leaf)
  assert (ttt.node_loss(new, setup) < ttt.node_loss(run.params, setup)).all()


def test_hsnn_run_uses_its_exported_index_and_item_level_scorer(hsnn_run, tmp_path):
  cfg, run = hsnn_run
  with pytest.raises(ValueError, match="index.npz"):
    ttt.index_for_run(run, (4, 2))
  run.task.export(run.params, run.aux, str(tmp_path))
  index = ttt.index_for_run(run, (99,), workdir=str(tmp_path))
  assert index.num_levels == 2
  c = ttt.default_ttt_config(steps=5, batch_size=16, num_negatives=16)
  new = ttt.test_time_train(run, index, c)
  changed = {jax.tree_util.keystr(p) for (p, a), b in zip(
      jax.tree_util.tree_leaves_with_path(run.params), jax.tree.leaves(new))
      if not np.array_equal(a, b)}
  assert changed and all(p.startswith("['item_model']") and hsnn.USER_SIDE_PARAMS & set(
      p.replace("'", "").strip("[]").split("][")) for p in changed), changed


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("field, value, message", [
    ("depth", 0, "depth"), ("depth", 1.5, "depth"), ("rate", 0.0, "rate"), ("rate", 1.5, "rate"),
    ("rate", (0.5, -0.1), "rate"), ("rate", (), "rate"), ("steps", 0, "steps"),
    ("learning_rate", 0.0, "learning_rate"), ("learning_rate", float("nan"), "learning_rate"),
    ("batch_size", 0, "batch_size"), ("num_negatives", -1, "num_negatives"),
    ("params", "items", "params"), ("anchor_weight", -1.0, "anchor_weight"),
    ("node_repr", "centroid", "node_repr"), ("seed", "0", "seed"), ("seed", -1, "seed")])
def test_bad_config_is_refused(field, value, message):
  with pytest.raises(ValueError, match=message):
    ttt.validate_config(ttt.default_ttt_config(**{field: value}))


def test_config_is_checked_against_the_index_before_any_compute(two_tower):
  cfg, run, index = two_tower
  ttt.validate_config(ttt.default_ttt_config())
  short = ttt.default_ttt_config(depth=2, rate=(0.5,))
  ttt.validate_config(short)  # fine without an index...
  with pytest.raises(ValueError, match="one rate per level"):
    ttt.test_time_train(run, index, short, cfg)  # ...not for a 2-level index
  with pytest.raises(ValueError, match="embedding"):
    ttt.node_inputs(_NoVectorScorer(), index, 1, "embedding")


class _NoVectorScorer:
  """A scorer whose item reprs are not vectors (node_repr='embedding' must refuse it)."""

  name = "no_vectors"

  @staticmethod
  def encode_items(ids):
    return {"tower": jnp.zeros((ids.shape[0], 2, 3))}


# ----------------------------------------------------------------------------- end to end

def test_evaluate_ttt_reports_before_and_after_on_the_full_corpus(two_tower):
  cfg, run, index = two_tower
  c = ttt.default_ttt_config(steps=20, learning_rate=1e-2, batch_size=64, num_negatives=64)
  out = ttt.evaluate_ttt(run, index, c, cfg, split="test")
  reference = trainer.run_evaluation(run.task, run.params, run.aux, run.ds, cfg, "test")
  assert out["before"] == reference.metrics  # comparable with results.json
  assert set(out["after"]) == set(out["before"]) and "recall@20" in out["after"]
  assert all(0.0 <= v <= 1.0 for v in out["after"].values())
  assert len(out["examples"]) == 2 and min(out["examples"]) > 0
  assert all(a < b for a, b in zip(out["node_loss_after"], out["node_loss_before"]))
  assert out["node_repr"] == "embedding" and out["config"]["depth"] == 2


def test_evaluate_ttt_takes_the_callers_before_metrics_and_does_not_recompute_them(
    two_tower, monkeypatch):
  cfg, run, index = two_tower
  c = ttt.default_ttt_config(steps=5, learning_rate=1e-2, batch_size=64, num_negatives=64)
  calls = []
  real = ttt.run_evaluation
  monkeypatch.setattr(ttt, "run_evaluation", lambda *a, **k: calls.append(a[-1]) or real(*a, **k))
  given = {"recall@20": -1.0}  # a sentinel no evaluation can produce
  out = ttt.evaluate_ttt(run, index, c, cfg, split="test", before=given)
  assert out["before"] is given and len(calls) == 1  # only "after" was evaluated
