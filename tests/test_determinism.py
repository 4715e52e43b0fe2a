"""Same command, same seed, same machine: the same numbers and the same index, bit for bit.

A tiny run trains in this process and again as `python -m experiments.train` in a child with
another PYTHONHASHSEED (so set or dict order of strings cannot hide in it): the two-tower run in
the fast suite, an HSNN run (a k-means index built mid-run, joint training, the published
index) in the slow one. The benchmark's MoNN index path (warm start from the planted vectors,
training, k-means, publishing) runs twice in the fast suite. Across machines the figures do vary:
XLA compiles for the host's instruction set and NumPy's BLAS picks kernels by CPU model (see
experiments/benchmark_retrieval.py, 'Reproducibility')."""

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import benchmark_retrieval as br
from experiments.configs import bench_synthetic_100k, tiny, tiny_hsnn
from hsnn_jax.data import synthetic
from hsnn_jax.retrieval import beam_search as bs
from hsnn_jax.train import trainer
from tests.helpers import set_fields

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT = {"train.num_steps": 30, "train.log_every": 10, "train.checkpoint_every": 30,
         "train.eval_every": 0, "eval.ne_negatives": 0, "progress_bar": False}
RUNS = {
    "tiny": (tiny, SHORT),
    # A 1-level index of 8 nodes built at step 10 over dot-product models: the smallest HSNN
    # run (about a minute of compilation per run on a loaded 2-core CPU, hence slow).
    "tiny_hsnn": (tiny_hsnn, {**SHORT, "model.item_model": "two_tower_tiny",
                              "model.level_models": ("two_tower_tiny",),
                              "model.index.nodes_per_level": (8,),
                              "model.index.start_step": 10}),
}


def _config(name, cache_dir):
  module, overrides = RUNS[name]
  cfg = module.get_config()
  cfg.cache_dir = str(cache_dir)
  return set_fields(cfg, overrides)


def _flag(value):
  if isinstance(value, tuple):
    return "(" + "".join(f"{v!r}," for v in value) + ")"
  return value


def _train_in_child(name, workdir, cache_dir):
  cmd = [sys.executable, "-m", "experiments.train", f"--config=experiments/configs/{name}.py",
         f"--workdir={workdir}", f"--config.cache_dir={cache_dir}",
         *[f"--config.{k}={_flag(v)}" for k, v in RUNS[name][1].items()]]
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONHASHSEED="12345")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _digests(path):
  with np.load(path) as z:
    return {k: hashlib.sha256(z[k].tobytes()).hexdigest() for k in z.files}


def _outputs(workdir):
  """What a run leaves that should repeat: results (less the hardware line and wall time), logged losses, the
  top-K lists, the index (if any) and the fingerprints of the final checkpoint's arrays."""
  results = json.load(open(os.path.join(workdir, "results.json")))
  del results["hardware"], results["wall_seconds"]
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  for line in logged:
    line.pop("train/examples_per_sec", None)
  index = os.path.join(workdir, "index.npz")
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    meta = manager.restore(manager.latest_step(),
                           args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  return {"results": results, "logged": logged, "topk": _digests(os.path.join(workdir, "topk.npz")),
          "index": _digests(index) if os.path.exists(index) else None,
          "fingerprint": meta["fingerprint"]}


@pytest.mark.parametrize("name", ["tiny", pytest.param("tiny_hsnn", marks=pytest.mark.slow)])
def test_a_run_repeats_bit_for_bit_in_another_process(tmp_path, name):
  cache_dir = tmp_path / "cache"
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  trainer.train_and_evaluate(_config(name, cache_dir), first)
  _train_in_child(name, second, cache_dir)
  a, b = _outputs(first), _outputs(second)
  assert a["results"] == b["results"]  # the config, metrics, index health: exactly equal
  assert a["logged"] == b["logged"] and len(a["logged"]) >= 3
  assert a["topk"] == b["topk"] and a["fingerprint"] == b["fingerprint"]
  assert a["index"] == b["index"]
  if name == "tiny_hsnn":
    assert len(a["index"]) == 6  # a 1-level index: no children array


def _benchmark_monn_index(corpus, cfg):
  """The benchmark's MoNN index path, as `monn_suite` runs it (without the timed searches)."""
  scorer, params, _ = br.train_monn(corpus, cfg.monn, cfg.history_len, cfg.seed)
  reprs = bs.item_level_scorer(scorer, corpus.config.num_items).reprs
  embedding = br.monn_index_embedding(cfg.index.monn_embedding, params, reprs, corpus,
                                      cfg.index.key_weight)
  index, _ = br.build_index(embedding, (8, 8, 4), cfg.index.kmeans_iters, cfg.seed)
  return params, embedding, index


def test_the_benchmark_monn_index_repeats_bit_for_bit():
  cfg = bench_synthetic_100k.get_config()
  cfg.monn.preset, cfg.monn.steps = "two_tower_tiny", 10  # the shipped preset compiles for minutes
  corpus = synthetic.build(synthetic.PRESETS["synthetic_tiny"])
  runs = [_benchmark_monn_index(corpus, cfg) for _ in range(2)]
  for x, y in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(runs[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
