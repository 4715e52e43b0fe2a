"""A MoNN / HSNN item level learning a residual over a frozen, trained two-tower (warm start)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import tiny, tiny_hsnn, tiny_monn
from hsnn_jax.models.scorer import Scorer, add_scorers
from hsnn_jax.train import config_check, trainer
from hsnn_jax.train.sampler import user_batch_for_eval
from hsnn_jax.train.task import FrozenBase


def _short(c, tmp_path, steps):
  c.cache_dir = str(tmp_path / "cache")
  c.progress_bar = False
  c.train.num_steps, c.train.eval_every = steps, 0
  c.train.log_every = c.train.checkpoint_every = steps // 2
  c.eval.ne_negatives = 0
  return c


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
  """A two-tower trained on the planted corpus: (its workdir, its results)."""
  tmp = tmp_path_factory.mktemp("base")
  wd = str(tmp / "two_tower")
  return wd, trainer.train_and_evaluate(_short(tiny.get_config(), tmp, 200), wd)


def test_add_scorers_adds_weighted_scores():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
  a = Scorer(encode_users=lambda x: jnp.asarray(u[x]), encode_items=lambda x: jnp.asarray(v[x]),
             score=lambda p, q: p @ q.T, flops_per_pair=8, flops_per_query=1, name="a")
  b = Scorer(encode_users=lambda x: jnp.asarray(u[x]) ** 2, encode_items=lambda x: jnp.asarray(v[x]),
             score=lambda p, q: -(p @ q.T), flops_per_pair=3, flops_per_item=2, name="b")
  both = add_scorers(a, b, 0.5)
  ids_u, ids_v = np.arange(3), np.arange(5)
  got = both.score(both.encode_users(ids_u), both.encode_items(ids_v))
  want = u @ v.T - 0.5 * (u ** 2) @ v.T
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
  assert (both.flops_per_pair, both.flops_per_query, both.flops_per_item) == (11, 1, 2)


def _residual_config(make, tmp_path, base_wd, steps=60):
  c = _short(make(), tmp_path, steps)
  c.model.base_workdir = base_wd
  return c


def _residual_run(make, tmp_path, base_wd):
  cfg = _residual_config(make, tmp_path, base_wd)
  if cfg.model.kind == "hsnn":
    cfg.model.index.start_step, cfg.model.index.index_loss_warmup_steps = 20, 10
    cfg.model.eval_scorer = "item"
  wd = str(tmp_path / "residual")
  return cfg, wd, trainer.train_and_evaluate(cfg, wd)


@pytest.fixture(scope="module")
def monn_residual(tmp_path_factory, base_run):
  return _residual_run(tiny_monn.get_config, tmp_path_factory.mktemp("monn"), base_run[0])


def test_monn_residual_scores_are_own_plus_frozen_base(monn_residual):
  _check_own_plus_base(*monn_residual[:2])


@pytest.mark.slow
def test_hsnn_residual_scores_are_own_plus_frozen_base(tmp_path, base_run):
  _check_own_plus_base(*_residual_run(tiny_hsnn.get_config, tmp_path, base_run[0])[:2])


def _check_own_plus_base(cfg, wd):
  run = trainer.load_trained(cfg, wd)
  base = trainer.load_base(cfg, run.ds)  # freshly restored from the base run's checkpoint
  aux_base = run.aux if cfg.model.kind == "monn" else run.aux.base
  # The base was never updated: the run's copy equals the base run's parameters.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               aux_base, base.params)
  users16 = user_batch_for_eval(run.ds, run.task.history_len, include_valid=True)(np.arange(16))
  items = jnp.arange(run.ds.num_items)
  scores = lambda s: s.score(s.encode_users(users16), s.encode_items(items))
  combined, own, base_scorer = run.scorer(), own_scorer(run, cfg), base.scorer(base.params)
  np.testing.assert_allclose(np.asarray(scores(combined)),
                             np.asarray(scores(own) + scores(base_scorer)), rtol=1e-4, atol=1e-4)
  assert combined.flops_per_pair == own.flops_per_pair + base_scorer.flops_per_pair


def test_base_reading_more_history_than_the_model_is_refused():
  base = FrozenBase(params=(), logits=None, scorer=None, history="causal", history_len=50,
                    weight=1.0)
  with pytest.raises(ValueError, match="model.history_len >= 50"):
    base.check_compatible("causal", 20, "runs/sasrec")
  with pytest.raises(ValueError, match="model.history='causal'"):
    base.check_compatible("full", 50, "runs/sasrec")
  base.check_compatible("causal", 50, "runs/sasrec")
  FrozenBase(params=(), logits=None, scorer=None, history="none", history_len=50,
             weight=1.0).check_compatible("full", 1, "runs/mf")


def own_scorer(run, cfg):
  """The residual model's own scorer, without the base."""
  from hsnn_jax.models import hsnn, monn  # pylint: disable=import-outside-toplevel
  from hsnn_jax.train import task_hsnn, task_monn  # pylint: disable=import-outside-toplevel
  m = cfg.model
  if m.kind == "monn":
    module = monn.MoNN.for_dataset(task_monn.monn_config(m.preset, m.overrides, num_tasks=1),
                                   run.ds)
    return monn.make_scorer(module, run.params, history_len=m.history_len)
  model = task_hsnn.hsnn_model(cfg, run.ds, run.aux.index.item_keys)
  return hsnn.item_scorer(model, run.params, m.history_len)


def test_residual_over_base_keeps_its_quality(tmp_path, base_run, monn_residual):
  """A short MoNN residual over the trained base ranks at least about as well as the base,
  where a MoNN trained alone for the same steps is below it."""
  base_recall = base_run[1]["metrics"]["recall@20"]
  residual = monn_residual[2]["metrics"]["recall@20"]
  alone = trainer.train_and_evaluate(_short(tiny_monn.get_config(), tmp_path, 60),
                                     str(tmp_path / "alone"))["metrics"]["recall@20"]
  assert residual >= 0.9 * base_recall, (residual, base_recall)
  assert alone < residual, (alone, residual)


def test_bad_base_is_refused(tmp_path, base_run):
  base_wd, _ = base_run
  cfg = _residual_config(tiny_monn.get_config, tmp_path, str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="model.base_workdir"):
    config_check.validate(cfg)
  cfg.model.base_workdir, cfg.model.base_weight = base_wd, 0.0
  with pytest.raises(ValueError, match="model.base_weight"):
    config_check.validate(cfg)
  # A MoNN run can not be a base.
  monn_wd = str(tmp_path / "monn")
  os.makedirs(monn_wd)
  with open(os.path.join(monn_wd, "config.json"), "w") as fh:
    json.dump(tiny_monn.get_config().to_dict(), fh)
  cfg.model.base_workdir, cfg.model.base_weight = monn_wd, 1.0
  with pytest.raises(ValueError, match="expected a 'two_tower' run"):
    trainer.train_and_evaluate(cfg, str(tmp_path / "run"))


@pytest.mark.parametrize("make", [tiny_monn.get_config, tiny_hsnn.get_config],
                         ids=["monn", "hsnn"])
def test_residual_model_starts_exactly_at_its_base(make, tmp_path, base_run):
  """Its own output layer starts at zero, so before training it ranks exactly as the base."""
  cfg = _residual_config(make, tmp_path, base_run[0])
  if cfg.model.kind == "hsnn":
    cfg.model.eval_scorer, cfg.model.index.start_step = "item", 20
  setup = trainer.build_training(cfg)
  base = trainer.load_base(cfg, setup.ds)
  params, aux = setup.state.params, setup.state.aux
  users = user_batch_for_eval(setup.ds, setup.task.history_len, include_valid=True)(np.arange(8))
  items = jnp.arange(setup.ds.num_items)
  scores = lambda s: np.asarray(s.score(s.encode_users(users), s.encode_items(items)))
  np.testing.assert_allclose(scores(setup.task.scorer(params, aux)),
                             scores(base.scorer(base.params)), rtol=1e-5, atol=1e-5)
