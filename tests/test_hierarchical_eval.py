"""Evaluation through the index: full beams reproduce exhaustive evaluation exactly, narrow beams
score less and lose exactness, and an HSNN run's own hierarchy ranks by its ensemble."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from experiments.configs import tiny_hsnn
from hsnn_jax.eval import evaluate as evaluation
from hsnn_jax.eval import hierarchical
from hsnn_jax.train import trainer
from hsnn_jax.train.sampler import user_batch_for_eval
from tests import helpers
from tests.test_exhaustive import NUM_ITEMS, make_user_batch, tiny_dataset

NODES = (4, 3)


def _dot_hierarchy():
  users, items = helpers.tie_free_vectors(3, 23, NUM_ITEMS, 4)
  scorer = helpers.dot_scorer(users, items)
  return scorer, hierarchical.sil_hierarchy(scorer, NUM_ITEMS, NODES, jax.random.PRNGKey(0), 5)


@pytest.mark.parametrize("precomputed", [False, True])
def test_full_beams_reproduce_exhaustive_evaluation(precomputed):
  """Also when the exhaustive top items come precomputed (the trainer's final evaluation)."""
  ds = tiny_dataset()
  scorer, hier = _dot_hierarchy()
  exact = evaluation.evaluate(scorer, ds, "test", ks=(5, 10), make_user_batch=make_user_batch,
                              user_chunk=4, item_chunk=128)
  out = hierarchical.evaluate_hierarchical(
      hier, ds, make_user_batch, beam_widths=hier.index.num_nodes, ks=(5, 10), batch_size=4,
      timing_batches=1, exact=exact.topk_items if precomputed else None)
  for name, value in exact.metrics.items():
    assert out[name] == pytest.approx(value), name
  assert out["exactness@5"] == out["exactness@10"] == 1.0
  assert out["items_scored_frac"] == 1.0
  assert out["num_users"] == len(exact.users)
  assert out["beam_p50_ms"] > 0 and out["latency_ratio_vs_exhaustive"] > 0


def test_narrow_beams_score_fewer_items_and_lose_exactness_monotonically():
  ds = tiny_dataset()
  _, hier = _dot_hierarchy()
  leaves = hier.index.num_nodes[1]
  rows = [hierarchical.evaluate_hierarchical(hier, ds, make_user_batch, beam_widths=(b, leaves),
                                             ks=(10,), batch_size=4, timing_batches=1)
          for b in (1, 2, NODES[0])]
  fracs = [r["items_scored_frac"] for r in rows]
  exact = [r["exactness@10"] for r in rows]
  assert fracs[0] < fracs[1] < fracs[2] == 1.0
  assert exact[0] <= exact[1] <= exact[2] == 1.0 and exact[0] < 1.0
  assert rows[0]["flops_per_query"] < rows[0]["exhaustive_flops_per_query"]


def test_sil_hierarchy_refuses_non_vector_item_reprs():
  users, items = helpers.tie_free_vectors(0, 4, NUM_ITEMS, 2)
  scorer = helpers.dot_scorer(users, items)
  tree = dataclasses.replace(scorer, encode_items=lambda ids: {"v": jnp.asarray(items)[ids]})
  with pytest.raises(ValueError, match="item vectors"):
    hierarchical.sil_hierarchy(tree, NUM_ITEMS, NODES, jax.random.PRNGKey(0))


@pytest.mark.slow  # trains a tiny HSNN: about a minute on 2 cores
def test_hsnn_run_hierarchy_ranks_by_its_ensemble(tmp_path):
  cfg = tiny_hsnn.get_config()
  cfg.cache_dir = str(tmp_path / "cache")
  cfg.progress_bar = False
  cfg.model.item_model = "two_tower_tiny"
  cfg.model.level_models = ("two_tower_tiny", "two_tower_tiny")
  cfg.model.index.start_step = 20
  cfg.train.num_steps, cfg.train.log_every, cfg.train.checkpoint_every = 40, 10, 20
  workdir = str(tmp_path / "run")
  results = trainer.train_and_evaluate(cfg, workdir)
  run = trainer.load_trained(cfg, workdir)
  hier = hierarchical.run_hierarchy(run.task, run.params, run.aux, run.ds.num_items, (8,))
  assert hier.index.num_levels == 2 and hier.level_weights is not None
  make = user_batch_for_eval(run.ds, run.task.history_len, include_valid=True)
  full = hierarchical.evaluate_hierarchical(hier, run.ds, make, beam_widths=hier.index.num_nodes,
                                            ks=(20,), timing_batches=1)
  # Full beams score every item by the ensemble: what exhaustive evaluation of the run scored.
  assert full["exactness@20"] >= 0.99
  assert full["recall@20"] == pytest.approx(results["metrics"]["recall@20"], abs=0.01)
  narrow = hierarchical.evaluate_hierarchical(hier, run.ds, make, beam_widths=(2, 4), ks=(20,),
                                              timing_batches=1)
  assert narrow["items_scored_frac"] < full["items_scored_frac"]
