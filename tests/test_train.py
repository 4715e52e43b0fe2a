"""The train loop on the planted synthetic corpus: learning, resume, NaN guard, config refusal."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments.configs import tiny
from hsnn_jax.train import trainer


def _config(tmp_path, **train):
  c = tiny.get_config()
  c.cache_dir = str(tmp_path / "cache")
  c.progress_bar = False
  c.train.num_steps = 300
  c.train.eval_every = 0
  c.train.checkpoint_every = 100
  c.train.log_every = 50
  for k, v in train.items():
    c.train[k] = v
  return c


def _popularity_recall(ds, k=20):
  """Recall@k of ranking every user by training popularity (the no-learning baseline)."""
  counts = np.bincount(ds.train.values, minlength=ds.num_items)
  hits, users = 0.0, 0
  for u in range(ds.num_users):
    truth = set(ds.test.row(u).tolist())
    if not truth:
      continue
    seen = set(ds.train.row(u).tolist()) | set(ds.valid.row(u).tolist())
    ranked = [i for i in np.argsort(-counts, kind="stable") if i not in seen][:k]
    hits += len(truth & set(ranked)) / len(truth)
    users += 1
  return hits / users


def test_learns_planted_corpus_and_writes_outputs(tmp_path):
  cfg = _config(tmp_path)
  wd = str(tmp_path / "run")
  results = trainer.train_and_evaluate(cfg, wd)
  ds = trainer.load_dataset(cfg)
  baseline = _popularity_recall(ds)
  assert results["metrics"]["recall@20"] > 1.25 * baseline, (results["metrics"], baseline)
  with open(os.path.join(wd, "results.json")) as fh:
    on_disk = json.load(fh)
  assert set(on_disk) >= {"metrics", "config", "hardware"}
  assert all(k == k.lower() for k in on_disk["metrics"])
  with np.load(os.path.join(wd, "topk.npz")) as z:
    assert z["items"].shape == (z["users"].shape[0], max(cfg.eval.ks))
    assert set(np.unique(z["items"])) <= set(ds.item_ids.tolist()) | {-1}
  lines = open(os.path.join(wd, "metrics.jsonl")).read().splitlines()
  assert json.loads(lines[0])["step"] == 50
  assert os.listdir(os.path.join(wd, "tensorboard"))


def test_resume_after_lost_checkpoints_reproduces_the_run(tmp_path):
  """A run that lost everything after step 100 resumes there and ends where the full run ended."""
  cfg = _config(tmp_path)
  wd = str(tmp_path / "run")
  full = trainer.train_and_evaluate(cfg, wd)
  ckpts = os.path.join(wd, "checkpoints")
  for step in os.listdir(ckpts):
    if step.isdigit() and int(step) > 100:
      shutil.rmtree(os.path.join(ckpts, step))
  resumed = trainer.train_and_evaluate(cfg, wd)
  for k, v in full["metrics"].items():
    assert resumed["metrics"][k] == pytest.approx(v, abs=1e-6), k


def test_non_finite_loss_stops_with_last_good_checkpoint_intact(tmp_path):
  cfg = _config(tmp_path, inject_nan_at_step=150)
  wd = str(tmp_path / "run")
  with pytest.raises(trainer.NonFiniteError, match="step 150") as err:
    trainer.train_and_evaluate(cfg, wd)
  assert "step 100" in str(err.value)
  steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())
  assert steps == [100]
  # The intact checkpoint restores, and a fixed run resumes from it.
  cfg.train.inject_nan_at_step = -1
  results = trainer.train_and_evaluate(cfg, wd)
  assert results["steps"] == cfg.train.num_steps
  assert np.isfinite(results["metrics"]["recall@20"])


@pytest.mark.parametrize("field,value,message", [
    ("train.batch_size", 0, "train.batch_size=0"),
    ("train.loss", "hinge", "train.loss='hinge'"),
    ("model.user_tower", "graph", "model.user_tower='graph'"),
    ("eval.ks", (0,), "eval.ks"),
    ("train.ccl_margin", 1.5, "train.ccl_margin=1.5"),
    ("train.ccl_negatives", "hard", "train.ccl_negatives='hard'"),
    ("eval.valid_users", -1, "eval.valid_users=-1"),
    ("eval.beam_widths", (0,), "eval.beam_widths"),
    ("train.eval_start", -5, "train.eval_start=-5"),
])
def test_bad_config_is_refused_before_any_data_is_read(tmp_path, field, value, message):
  cfg = _config(tmp_path)
  cfg.dataset = "no_such_dataset"  # would raise FileNotFoundError if data were touched first
  section, name = field.split(".")
  cfg[section][name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "cache")


def test_in_step_sampling_draws_valid_pairs_and_masks_the_label():
  from hsnn_jax.data.synthetic import PRESETS, generate
  from hsnn_jax.train.sampler import DeviceInteractions, sample_batch
  ds = generate(PRESETS["synthetic_tiny"])
  data = DeviceInteractions.from_dataset(ds, history_len=8)
  batch = jax.jit(sample_batch, static_argnums=(2, 3, 4))(jax.random.PRNGKey(3), data, 64, 32, "full")
  users, pos = np.asarray(batch.users.user), np.asarray(batch.positives)
  for u, i, hist in zip(users, pos, np.asarray(batch.users.history)):
    assert i in ds.train.row(u)
    assert i not in hist  # the positive never leaks into its own history
    assert set(hist[hist >= 0]) <= set(ds.train.row(u).tolist())
  assert np.asarray(batch.negatives).max() < ds.num_items


def test_user_sampling_takes_each_user_at_its_last_training_item():
  from hsnn_jax.data.synthetic import PRESETS, generate
  from hsnn_jax.train.sampler import DeviceInteractions, sample_batch
  ds = generate(PRESETS["synthetic_tiny"])
  data = DeviceInteractions.from_dataset(ds, history_len=8, sample_unit="user")
  assert data.last_pairs.shape[0] == np.sum(ds.train.lengths() > 0)
  batch = jax.jit(sample_batch, static_argnums=(2, 3, 4))(jax.random.PRNGKey(5), data, 256, 0,
                                                          "causal")
  users, pos = np.asarray(batch.users.user), np.asarray(batch.positives)
  assert len(set(users.tolist())) > 100  # users drawn uniformly, not one user's pairs
  for u, i, hist in zip(users, pos, np.asarray(batch.users.history)):
    row = ds.train.row(u)
    assert i == row[-1]
    np.testing.assert_array_equal(hist[hist >= 0], row[:-1][-8:])



def test_identity_pooled_tower_adds_the_mean_history_item():
  import jax.numpy as jnp
  from hsnn_jax.models import two_tower
  from hsnn_jax.models.scorer import UserBatch
  mc = two_tower.TwoTowerConfig(num_users=3, num_items=6, embed_dim=4, user_tower="id_pooled",
                                history_proj="identity").validate()
  model = two_tower.TwoTower(mc)
  users = UserBatch(user=jnp.array([0, 2]), history=jnp.array([[-1, 1, 4], [-1, -1, 5]]),
                    features=jnp.zeros((2, 0), jnp.int32))
  params = model.init(jax.random.PRNGKey(0), users, jnp.arange(6))["params"]
  assert set(params) == {"item_id", "user_id"}  # no dense map to train
  got = np.asarray(model.apply({"params": params}, users, method=two_tower.TwoTower.encode_users))
  e_u, e_i = np.asarray(params["user_id"]["embedding"]), np.asarray(params["item_id"]["embedding"])
  want = np.stack([e_u[0] + (e_i[1] + e_i[4]) / 2, e_u[2] + e_i[5]])
  np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5)


@pytest.mark.parametrize("overrides", [
    {"train.loss": "ccl", "train.ccl_margin": 0.5, "train.ccl_negative_weight": 10.0},
    {"train.user_weight_power": 1.0, "model.user_tower": "id_pooled",
     "model.history_proj": "identity"},
    {"train.loss": "full_softmax", "model.user_tower": "lightgcn", "model.graph_layers": 2,
     "train.num_negatives": 0, "train.learning_rate": 1e-2},
])
def test_two_tower_variants_beat_popularity(tmp_path, overrides):
  cfg = _config(tmp_path)
  for field, value in overrides.items():
    section, name = field.split(".")
    cfg[section][name] = value
  results = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  baseline = _popularity_recall(trainer.load_dataset(cfg))
  assert results["metrics"]["recall@20"] > 1.25 * baseline, (results["metrics"], baseline)


def _cyclic_sequences(num_users=400, num_items=60, length=8, seed=0):
  """Leave-one-out dataset whose sequences step through the items in order (i, i+1, ...) from a
  random start: only a model of the order can predict the held-out next item."""
  from hsnn_jax.data.types import CSR, RecDataset
  rng = np.random.default_rng(seed)
  seqs = (rng.integers(0, num_items, num_users)[:, None] + np.arange(length)) % num_items
  csr = lambda cols: CSR(np.arange(num_users + 1, dtype=np.int64) * cols.shape[1],
                         cols.reshape(-1).astype(np.int32))
  return RecDataset(name="cyclic", protocol="leave_one_out", num_users=num_users,
                    num_items=num_items, train=csr(seqs[:, :-2]), valid=csr(seqs[:, -2:-1]),
                    test=csr(seqs[:, -1:]), user_ids=np.arange(num_users),
                    item_ids=np.arange(num_items))


def test_sequence_tower_with_full_softmax_learns_the_order(tmp_path):
  from hsnn_jax.data import cache
  cfg = _config(tmp_path, loss="full_softmax", sample_unit="user", max_targets=512,
                num_negatives=0, batch_size=128, num_steps=200, learning_rate=3e-3)
  cfg.dataset = "cyclic"
  cfg.model.user_tower = "sequence"
  cfg.model.history_len = 8
  cfg.eval.selection_metric = "recall@10"
  cache.save(_cyclic_sequences(), cfg.cache_dir)
  results = trainer.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert results["metrics"]["recall@10"] > 0.8, results["metrics"]  # popularity: ~10 / 60
