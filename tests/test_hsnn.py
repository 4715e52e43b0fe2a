"""HSNN model and task without training: gradient routing per index mode, the ensemble scorer,
the published index, node keys and config refusal."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny_hsnn
from hsnn_jax.data import synthetic
from hsnn_jax.index import lifecycle
from hsnn_jax.index.publish import prefix_node_ids
from hsnn_jax.index.published import PublishedIndex
from hsnn_jax.models import hsnn
from hsnn_jax.retrieval.beam_search import encode_ids
from hsnn_jax.train import task_hsnn, tasks, trainer
from hsnn_jax.train.sampler import DeviceInteractions, sample_batch

# Tiny widths; level 0 and the item level are full MoNNs (all three towers, the OverArch), level
# 1 the dot-product preset, so both NodeMoNN paths run and the compile stays short.
SMALL_MONN = dict(dim_user=8, dim_item=8, dim_ui=8, field_dim=8, user_mlp=(16,), item_mlp=(),
                  ui_mlp=(), afm_attention_dim=4, overarch_dim=8, overarch_tokens=2,
                  overarch_token_dim=4)
NODES = (4, 3)


@pytest.fixture(scope="module")
def dataset():
  return synthetic.generate(synthetic.SyntheticConfig(
      name="planted_small", num_items=120, num_users=60, branching=(4, 3), dim=8,
      min_interactions=4, max_interactions=10))


def small_config(mode="joim", **model):
  c = tiny_hsnn.get_config()
  c.progress_bar = False
  c.model.item_model = "monn_small"
  c.model.level_models = ("monn_small", "two_tower_tiny")
  c.model.overrides = SMALL_MONN
  c.model.history_len = 6
  c.model.embed_dim = 8
  c.model.index.nodes_per_level = NODES
  c.model.index.mode = mode
  c.model.index.start_step = 0 if mode == "joim" else 1
  c.model.index.index_loss_warmup_steps = 0
  c.train.batch_size, c.train.num_negatives = 8, 8
  c.eval.item_chunk = 64
  for k, v in model.items():
    node, *path = k.split(".")
    (c.model[node] if path else c.model)[path[0] if path else node] = v
  return c


def built_task(cfg, ds, params_aux=None):
  """(task, params, aux, batch, data) with the index built (from `params_aux` if given)."""
  task = tasks.build_task(cfg, ds)
  data = DeviceInteractions.from_dataset(ds, task.history_len)
  batch = sample_batch(jax.random.PRNGKey(1), data, cfg.train.batch_size,
                       cfg.train.num_negatives, task.history)
  params, aux = params_aux or task.init(jax.random.PRNGKey(0), batch)
  params, aux = task.between_chunks(1, params, aux)
  assert int(aux.index.built_at) >= 0
  return task, params, aux, batch, data


@pytest.fixture(scope="module")
def joim(dataset):
  """The JOIM task with its index built at init, shared (one compilation) by several tests."""
  return built_task(small_config(), dataset)


def grad_norms(task, params, aux, batch, data):
  loss = lambda p: task.loss(p, aux, batch, jax.random.PRNGKey(2), data, 5)[0]
  grads = jax.jit(jax.grad(loss))(params)
  norm = lambda tree: float(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)) ** 0.5)
  return {"codebooks": [norm(grads["quantizer"][f"level_{l}"]) for l in range(len(NODES))],
          "item_head": norm(grads["item_head"]), "levels": norm(grads["levels_0"])}


@pytest.mark.parametrize("mode", ["joim", "sil"])
def test_user_item_loss_reaches_codebooks_only_in_joim(dataset, joim, mode):
  """Reconstruction, balance and the embedding loss are off: what reaches the codebooks and the
  item head comes from the user-item (Eq. 4) losses through the soft assignment. SIL starts
  from the JOIM parameters, its index built by k-means at step 1."""
  cfg = small_config(mode, embedding_loss_weight=0.0, **{"index.reconstruction_weight": 0.0,
                                                         "index.balance_weight": 0.0})
  _, params, aux, _, _ = joim
  if mode == "sil":
    aux = aux.replace(index=aux.index.replace(built_at=jnp.int32(-1)))
  norms = grad_norms(*built_task(cfg, dataset, (params, aux)))
  assert norms["levels"] > 0
  if mode == "joim":
    assert all(n > 1e-6 for n in norms["codebooks"]), norms
    assert norms["item_head"] > 1e-6, norms
  else:
    assert norms["codebooks"] == [0.0, 0.0] and norms["item_head"] == 0.0, norms


def _level_outputs(cfg, dataset, params, aux, batch, alpha, codes):
  model = task_hsnn.hsnn_model(cfg, dataset, aux.index.item_keys)
  candidates = jnp.concatenate([batch.positives, batch.negatives])
  fixed = None if codes is None else jnp.take(codes, candidates, axis=0)
  out = jax.jit(lambda p: model.apply({"params": p}, batch.users, candidates, alpha, fixed,
                                      method=hsnn.HSNN.train_outputs))(params)
  return out.level_logits, out.level_interaction


@pytest.mark.parametrize("fixed", [True, False])
def test_node_shared_level_scoring_equals_per_pair_scoring(dataset, joim, fixed):
  """level_scoring='nodes' scores each node once per user and gives each candidate the expected
  node score; with a fixed index (SIL/EM codes), or assignments made one-hot by a huge alpha
  (JOIM), that is the per-pair score of the candidate's node, logits and MSE predictions alike."""
  _, params, aux, batch, _ = joim
  codes = aux.index.codes if fixed else None
  alpha = 1.0 if fixed else 1e7
  pairs = _level_outputs(small_config(), dataset, params, aux, batch, alpha, codes)
  nodes = _level_outputs(small_config(level_scoring="nodes"), dataset, params, aux, batch,
                         alpha, codes)
  assert nodes[1][0] is not None and nodes[1][1] is None  # level 0 has an interaction head
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), pairs, nodes)


def test_node_shared_scoring_is_an_expectation_under_soft_assignments(dataset, joim):
  """At a soft alpha the node path is the assignment-weighted mean of the per-node scores (not
  the score of the mean embedding), and the Eq. 4 loss still reaches the codebooks."""
  _, params, aux, batch, _ = joim
  cfg = small_config(level_scoring="nodes")
  model = task_hsnn.hsnn_model(cfg, dataset, aux.index.item_keys)
  candidates = jnp.concatenate([batch.positives, batch.negatives])
  out = model.apply({"params": params}, batch.users, candidates, 2.0,
                    method=hsnn.HSNN.train_outputs)
  weights = out.quantized.soft[0]  # level 0: the node softs are the level's own softs
  books = params["quantizer"]["level_0"]["codebook"]
  node_scores = model.apply({"params": params}, model.apply(
      {"params": params}, batch.users, 0, method=hsnn.HSNN.encode_level_users),
      model.apply({"params": params}, books, method=lambda m, v: m.levels[0].encode_nodes(v)),
      0, method=hsnn.HSNN.score_level)[..., 0]
  np.testing.assert_allclose(out.level_logits[0][..., 0], node_scores @ weights.T, rtol=1e-4,
                             atol=1e-5)
  norms = grad_norms(*built_task(cfg, dataset, (params, aux)))
  assert all(n > 1e-6 for n in norms["codebooks"]), norms


def test_distillation_pulls_toward_an_ema_teacher(dataset, joim):
  cfg = small_config(distill_weight=0.5, ema_decay=0.9)
  _, params, aux, _, _ = joim
  teacher = jax.tree.map(lambda x: x + 0.1, params["item_model"])
  task, params, aux, batch, data = built_task(cfg, dataset, (params, aux.replace(teacher=teacher)))
  _, (metrics, new_aux) = jax.jit(task.loss)(params, aux, batch, jax.random.PRNGKey(2), data, 5)
  assert float(metrics["distillation"]) > 0
  want = jax.tree.map(lambda t, p: 0.9 * t + 0.1 * p, teacher, params["item_model"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_aux.teacher, want)


def test_ensemble_scorer_equals_levels_on_representatives(dataset, joim, tmp_path):
  """Exhaustive HSNN score of item v = w_item s_item(v) + sum_l w_l s_l(representative of v's
  level-l node), computed here the slow way: every item's representatives scored one by one."""
  cfg = small_config()
  task, params, aux, batch, _ = joim
  weights = (0.3, -0.2, 1.1)
  params = {**params, "ensemble": jnp.array(weights)}
  scorer = task.scorer(params, aux)
  model = task_hsnn.hsnn_model(cfg, dataset, aux.index.item_keys)
  index = PublishedIndex.load(_export(task, params, aux, str(tmp_path)))
  items, users = jnp.arange(dataset.num_items), batch.users
  got = scorer.score(scorer.encode_users(users), scorer.encode_items(items))
  item = hsnn.item_scorer(model, params, cfg.model.history_len)
  want = weights[-1] * item.score(item.encode_users(users), item.encode_items(items))
  for l in range(len(NODES)):
    level = hsnn.level_scorer(model, params, l, cfg.model.history_len)
    reps = np.asarray(index.representative[l])[np.asarray(index.item_path)[:, l]]
    want += weights[l] * level.score(level.encode_users(users), encode_ids(level, reps))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  assert scorer.flops_per_query > item.flops_per_query > 0


def _export(task, params, aux, directory):
  task.export(params, aux, directory)
  return os.path.join(directory, "index.npz")


def test_published_index_matches_the_codes_it_was_trained_with(joim, tmp_path):
  task, params, aux, _, _ = joim
  index = PublishedIndex.load(_export(task, params, aux, str(tmp_path)))
  codes = np.asarray(aux.index.codes)
  np.testing.assert_array_equal(index.codes, codes)
  np.testing.assert_array_equal(index.item_path, prefix_node_ids(codes, NODES)[0])
  for l, reps in enumerate(index.representative):
    np.testing.assert_array_equal(index.item_path[reps, l], np.arange(reps.shape[0]))
  leaves = index.node_items[index.node_items >= 0]
  assert sorted(leaves.tolist()) == list(range(codes.shape[0]))
  report = task.report(params, aux)
  assert [report["index_health"][f"level_{l}"]["num_nodes"] for l in range(2)] == list(
      index.num_nodes)


def test_node_keys_are_offset_code_prefixes():
  codes = np.array([[0, 0], [0, 2], [3, 1], [3, 1]])
  keys = lifecycle.node_keys(codes, NODES, limit=1000)
  np.testing.assert_array_equal(keys, [[0, 4], [0, 6], [3, 4 + 10], [3, 4 + 10]])
  assert lifecycle.node_keys(codes, NODES, limit=4).shape == (4, 1)  # 12 level-1 nodes > limit


@pytest.mark.parametrize("field,value,message", [
    ("index.mode", "sgd", "model.index.mode='sgd'"),
    ("index.start_step", 0, "model.index.start_step=0: mode 'sil'"),
    ("level_models", ("monn_small",), "model.level_models"),
    ("level_loss_weights", (1.0, -1.0), "model.level_loss_weights"),
    ("overrides", {"user_mlp": (0,)}, "model.overrides.user_mlp"),
    ("item_model", "monn_huge", "model.item_model='monn_huge'"),
    ("level_scoring", "leaves", "model.level_scoring='leaves'"),
])
def test_bad_hsnn_config_is_refused_before_any_data_is_read(tmp_path, field, value, message):
  cfg = small_config("sil", **{field: value})
  cfg.dataset = "no_such_dataset"
  cfg.cache_dir = str(tmp_path / "cache")
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "cache")


def test_beam_widths_need_one_per_index_level_before_any_data_is_read(tmp_path):
  cfg = small_config()
  cfg.dataset, cfg.cache_dir = "no_such_dataset", str(tmp_path / "cache")
  cfg.eval.beam_widths = (2,)
  with pytest.raises(ValueError, match=r"eval.beam_widths=\(2,\): one width per index level \(2"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
