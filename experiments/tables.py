"""The tables `experiments.reproduce` regenerates: rows, datasets, columns, and how each is run.

A table is rows (model variants) x datasets x seeds. Every cell is one training run through the
ordinary train loop (`trainer.train_and_evaluate`, so its results.json is the same as
`experiments.train` writes), then the table's extra measurements on the trained model:
  'hierarchical'  beam search through the run's index (an HSNN's own, else a SIL index on the
                  item vectors) against exhaustive scoring: recall / ndcg / exactness / cost;
  'latency'       retrieval p50 latency of the way the row serves (exhaustive for flat models,
                  beam search for HSNN), relative to the two-tower row of the same dataset and
                  seed, measured in this process one after the other on the same queries;
  'ttt'           test-time training over a phi_DEP x phi_IR grid (hsnn_jax/train/ttt.py).
Mean ± std (population std over seeds) of every number goes to the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
from typing import Callable, Dict, List, Sequence, Tuple

import jax
import ml_collections
import numpy as np

from experiments.configs import (beauty_hsnn, beauty_monn_small, beauty_sasrec, gowalla_hsnn,
                                 gowalla_monn_small, gowalla_two_tower, tiny, tiny_hsnn, tiny_monn)
from hsnn_jax.eval import hierarchical
from hsnn_jax.eval import reference
from hsnn_jax.train import trainer
from hsnn_jax.train.sampler import user_batch_for_eval
from hsnn_jax.train.writer import read_json

ConfigFn = Callable[[str], ml_collections.ConfigDict]  # dataset name -> config


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  full: ConfigFn
  tiny: ConfigFn


@dataclasses.dataclass(frozen=True)
class Table:
  title: str
  rows: Tuple[Row, ...]
  datasets: Tuple[str, ...]
  columns: Tuple[str, ...]
  extras: Tuple[str, ...] = ()
  note: str = ""


# ---------------------------------------------------------------- full-scale configs

def _on(dataset: str, gowalla: Callable, sequential: Callable) -> ml_collections.ConfigDict:
  """The Gowalla (CF) or the Beauty-protocol (sequential) config, pointed at `dataset`."""
  c = gowalla.get_config() if dataset == "gowalla" else sequential.get_config()
  c.dataset = dataset
  return c


def two_tower_full(dataset):
  """The strongest measured bases: MF by sampled softmax (CF; the LightGCN full-softmax config
  measured lower, see README), SASRec by full cross-entropy (sequential)."""
  return _on(dataset, gowalla_two_tower, beauty_sasrec)


def monn_full(preset):
  def make(dataset):
    c = _on(dataset, gowalla_monn_small, beauty_monn_small)
    c.model.preset = preset
    return c
  return make


def _set_index(c: ml_collections.ConfigDict, index: dict) -> None:
  """Sets the model.index fields; constant_alpha=True holds alpha at max_alpha (no schedule:
  the floor min_alpha is raised to it, since alpha_exponent must be > 0)."""
  index = dict(index)
  constant = index.pop("constant_alpha", False)
  c.model.index.update(index)
  if constant:
    c.model.index.min_alpha = c.model.index.max_alpha


def hsnn_full(level_models=None, nodes=None, **index):
  """An HSNN config on the dataset; level_models / nodes change the depth; index fields set."""
  def make(dataset):
    c = _on(dataset, gowalla_hsnn, beauty_hsnn)
    if level_models:
      c.model.level_models = level_models
      c.model.index.nodes_per_level = nodes[dataset]
    _set_index(c, index)
    ix = c.model.index  # the best checkpoint must have its index in place
    c.train.eval_start = max(c.train.eval_start, ix.start_step + ix.index_loss_warmup_steps)
    return c
  return make


# ---------------------------------------------------------------- tiny (CI) configs

TINY_STEPS = 60
TINY_KS = (5, 10, 20)  # every cutoff any table shows, so the tables share the same tiny runs


def _tiny_schedule(c):
  c.train.num_steps, c.train.log_every, c.train.checkpoint_every = TINY_STEPS, 20, 20
  c.train.eval_every, c.train.patience = 0, 0
  c.eval.ks = TINY_KS
  return c


def two_tower_tiny(dataset):
  del dataset
  return _tiny_schedule(tiny.get_config())


def monn_tiny(preset):
  def make(dataset):
    del dataset
    c = _tiny_schedule(tiny_monn.get_config())
    c.model.preset = preset
    return c
  return make


def hsnn_tiny(level_models=None, nodes=None, **index):
  del nodes
  index.pop("start_step", None)  # the tiny schedule builds the index half-way

  def make(dataset):
    del dataset
    c = _tiny_schedule(tiny_hsnn.get_config())
    c.model.index.start_step = TINY_STEPS // 2
    c.model.index.index_loss_warmup_steps = 10
    if level_models:
      c.model.level_models = level_models
      c.model.index.nodes_per_level = (8, 8)[:len(level_models)] if len(level_models) < 3 else (
          4, 4, 4)
    _set_index(c, index)
    if c.model.index.mode == "em":
      c.model.index.em_every = TINY_STEPS // 6  # re-cluster within the short schedule
    return c
  return make


def row(label, make_full, make_tiny, *args, **kwargs) -> Row:
  return Row(label, make_full(*args, **kwargs), make_tiny(*args, **kwargs))


TWO_TOWER = Row("two-tower", two_tower_full, two_tower_tiny)
MONN = {p: row(f"MoNN {p.split('_')[1].title()}", monn_full, monn_tiny, p)
        for p in ("monn_small", "monn_medium", "monn_large")}
HSNN_MODES = {mode: row(f"HSNN 2-level, {mode.upper()}", hsnn_full, hsnn_tiny, mode=mode)
              for mode in ("sil", "em", "joim")}
# HSNN Table 1 names layers by their MoNN sizes, coarsest first, the item level last (Small).
HSNN_2LAYER = row("HSNN 2-layer (Large/Small)", hsnn_full, hsnn_tiny, ("monn_large",),
                  {"gowalla": (256,), "beauty": (128,), "sports": (128,)})
HSNN_3LAYER = row("HSNN 3-layer (Large/Medium/Small)", hsnn_full, hsnn_tiny,
                  ("monn_large", "monn_medium"),
                  {"gowalla": (64, 16), "beauty": (32, 16), "sports": (32, 16)})
JOIM = HSNN_MODES["joim"]

TABLES: Dict[str, Table] = {
    "hsnn_table1": Table(
        "HSNN Table 1 on public data: quality and cost per model",
        (TWO_TOWER, *MONN.values(), HSNN_2LAYER, HSNN_3LAYER), ("gowalla", "beauty", "sports"),
        ("ne", "recall@20", "ndcg@20", "recall@10", "ndcg@10", "flops_per_query",
         "latency_vs_two_tower"), ("latency",),
        "NE: held-out, Platt-calibrated, 10 uniform negatives per positive (hsnn_jax/eval/ne.py). "
        "FLOPs and latency are per query for the way the row serves: exhaustive scoring of the "
        "corpus for flat models, beam search through the learned index for HSNN."),
    "hsnn_table2": Table(
        "HSNN Table 2 on public data: how the index is learnt",
        (TWO_TOWER, MONN["monn_small"], *HSNN_MODES.values()), ("gowalla", "beauty"),
        ("ne", "recall@20", "ndcg@20", "recall@10", "ndcg@10", "max_node_ratio"),
        note="Exhaustive scoring of each model (the HSNN rows: of the ensemble). max_node_ratio: "
             "largest leaf node's items over the mean, at the end of training."),
    "hsnn_table3": Table(
        "HSNN Table 3 on public data: JOIM ablations",
        (JOIM,
         row("JOIM without alpha schedule", hsnn_full, hsnn_tiny, mode="joim",
             constant_alpha=True),
         row("JOIM without index-loss warm-up", hsnn_full, hsnn_tiny, mode="joim",
             index_loss_warmup_steps=0),
         row("JOIM without balance regularizer", hsnn_full, hsnn_tiny, mode="joim",
             balance_weight=0.0)),
        ("gowalla", "beauty"),
        ("ne", "recall@20", "ndcg@20", "recall@10", "ndcg@10", "max_node_ratio"),
        note="Without the schedule, alpha stays at max_alpha from the step the index is built "
             "(min_alpha = max_alpha)."),
    "hill_public": Table(
        "HILL's public table: Gowalla through hierarchical retrieval",
        (TWO_TOWER, JOIM), ("gowalla",),
        ("recall@20", "ndcg@20", "exhaustive_recall@20", "exactness@20", "items_scored_frac"),
        ("hierarchical",),
        "recall@20 / ndcg@20: what beam search returns; exhaustive_recall@20: the same model "
        "scored exhaustively. Two-tower: a SIL index (residual k-means on its item vectors)."),
    "tiger_protocol": Table(
        "TIGER protocol: leave-one-out, full corpus",
        (TWO_TOWER, JOIM), ("beauty", "sports"),
        ("recall@5", "ndcg@5", "recall@10", "ndcg@10")),
    "ttt": Table(
        "Test-time training over phi_DEP x phi_IR",
        (TWO_TOWER,), ("gowalla",), ("recall@20", "ndcg@20"), ("ttt",),
        "Each cell fine-tunes the trained model on (user, ancestor node) examples of the user's "
        "training items (hsnn_jax/train/ttt.py) and re-evaluates on the full corpus."),
}

HIERARCHY_NODES = {"full": (64, 16), "tiny": (8, 8)}
HIERARCHY_BEAMS = {"full": (16, 64), "tiny": (4, 8)}
TTT_DEPTHS, TTT_RATES = (1, 2, 3), (0.2, 0.4, 0.6, 0.8, 1.0)
# The index TTT takes node labels from needs max(TTT_DEPTHS) levels (a shallower one would make
# the deeper phi_DEP columns repeat the last level's).
TTT_NODES = {"full": (64, 16, 4), "tiny": (8, 8, 2)}
RETRIEVAL_K = 20


# ---------------------------------------------------------------- running

def slug(text: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def eval_ks(ks: Sequence[int], columns: Sequence[str]) -> Tuple[int, ...]:
  """The run's cutoffs plus every K a column names ('recall@5' -> 5), so no column is empty."""
  wanted = {int(c.rsplit("@", 1)[1]) for c in columns if "@" in c and c.rsplit("@", 1)[1].isdigit()}
  return tuple(sorted(set(int(k) for k in ks) | wanted))


def ttt_columns() -> List[str]:
  """The ttt table's columns: before, then Recall@20 after each (phi_DEP, phi_IR) cell."""
  return ["ttt before recall@20", "ttt before ndcg@20"] + [
      f"ttt d={d} r={r} recall@20" for d in TTT_DEPTHS for r in TTT_RATES]


def cell_config(table: Table, r: Row, scale: str, dataset: str, seed: int,
                cache_dir: str) -> ml_collections.ConfigDict:
  """The training config of one cell: the row's config at `scale`, with every cutoff the table
  shows evaluated."""
  cfg = (r.full if scale == "full" else r.tiny)(dataset)
  cfg.seed, cfg.cache_dir, cfg.progress_bar = seed, cache_dir, False
  cfg.eval.ks = eval_ks(cfg.eval.ks, table.columns)
  return cfg


# Config fields that say where data lives or how a run reports, not what it trains.
_NOT_IDENTITY = ("cache_dir", "progress_bar")
# Fields added after runs were recorded, with the value that reproduces the old behaviour: at that
# value a field is left out of the identity, so a record made before it existed still matches.
# Fields added after runs were recorded, at the value that reproduces the old behaviour (JOIM
# refreshed its codes after every chunk: every 100 steps at the default log cadence).
_ADDED_FIELDS = {("eval", "valid_users"): 0, ("eval", "beam_widths"): [],
                 ("eval", "beam_max_items"): 0, ("train", "eval_start"): 0,
                 ("model", "level_scoring"): "pairs", ("model", "index", "refresh_every"): 100,
                 ("model", "base_workdir"): "", ("model", "base_weight"): 1.0}


def run_identity(cfg: ml_collections.ConfigDict | dict) -> dict:
  """The config (or its JSON dict, as in results.json) without _NOT_IDENTITY, and without the
  _ADDED_FIELDS at their old-behaviour values: two runs with the same identity train the same
  model, so a moved cache or a progress bar does not orphan a finished run."""
  as_dict = json.loads(json.dumps(cfg)) if isinstance(cfg, dict) else json.loads(
      cfg.to_json_best_effort())
  for (*sections, field), old in _ADDED_FIELDS.items():
    parent = as_dict
    for section in sections:
      parent = parent.get(section) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and parent.get(field, old) == old:
      parent.pop(field, None)
  return {k: v for k, v in as_dict.items() if k not in _NOT_IDENTITY}


def run_dir(runs_dir: str, scale: str, dataset: str, label: str,
            cfg: ml_collections.ConfigDict) -> str:
  """<runs_dir>/<scale>/<dataset>/<row>-<identity hash>/seed<S>: keyed by the run's identity, so
  every table with the same row reuses one run, and a changed config never resumes another's
  checkpoints."""
  digest = hashlib.sha256(json.dumps(run_identity(cfg), sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(runs_dir, scale, dataset, f"{slug(label)}-{digest}", f"seed{cfg.seed}")


def train_once(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """results.json of a finished run with this identity, else trains (resuming if interrupted)."""
  path = os.path.join(workdir, "results.json")
  if os.path.exists(path):
    remedy = ("delete it and run the same command again: the run restores its final checkpoint "
              "and rewrites it")
    done = read_json(path, "results record", remedy)
    if not isinstance(done, dict) or not isinstance(done.get("metrics"), dict):
      raise ValueError(f"results record {path} has no 'metrics' object; {remedy}")
    if run_identity(done.get("config", {})) == run_identity(cfg):
      return done
  return trainer.train_and_evaluate(cfg, workdir)


def _serving_latency_ms(run: trainer.Trained, scale: str, seed: int) -> Tuple[float, float]:
  """(p50 ms per batch of 256 queries, model FLOPs per query) of how the run serves."""
  make = user_batch_for_eval(run.ds, run.task.history_len, include_valid=True)
  users = np.flatnonzero(run.ds.test.lengths() > 0).astype(np.int32)
  if run.task.hierarchy is None:
    scorer = run.scorer()
    latency = hierarchical.retrieval_latency(scorer, make, users, run.ds.num_items, RETRIEVAL_K)
    return latency.p50_ms, float(scorer.flops_per_query + run.ds.num_items * scorer.flops_per_pair)
  hier = run.task.hierarchy(run.params, run.aux)
  out = hierarchical.evaluate_hierarchical(hier, run.ds, make, beam_widths=_beams(hier, scale),
                                           ks=(RETRIEVAL_K,), timing_batches=4)
  return out["beam_p50_ms"], out["flops_per_query"]


def _beams(hier: hierarchical.Hierarchy, scale: str) -> Tuple[int, ...]:
  """The table's beam widths, one per index level (the last setting repeated if deeper)."""
  beams = HIERARCHY_BEAMS[scale]
  levels = hier.index.num_levels
  return tuple(min(beams[min(l, len(beams) - 1)], hier.index.num_nodes[l]) for l in range(levels))


def extra_metrics(extra: str, run: trainer.Trained, cfg, scale: str, seed: int,
                  workdir: str) -> dict:
  make = user_batch_for_eval(run.ds, run.task.history_len, include_valid=True)
  if extra == "hierarchical":
    hier = hierarchical.run_hierarchy(run.task, run.params, run.aux, run.ds.num_items,
                                      HIERARCHY_NODES[scale], seed)
    out = hierarchical.evaluate_hierarchical(hier, run.ds, make, beam_widths=_beams(hier, scale),
                                             ks=tuple(cfg.eval.ks))
    out["beam_widths"] = ",".join(map(str, _beams(hier, scale)))
    return out
  if extra == "latency":
    p50, flops = _serving_latency_ms(run, scale, seed)
    return {"latency_p50_ms": p50, "flops_per_query": flops}
  if extra == "ttt":
    from hsnn_jax.train import ttt  # pylint: disable=import-outside-toplevel
    index = ttt.index_for_run(run, TTT_NODES[scale], seed, workdir)
    before = trainer.run_evaluation(run.task, run.params, run.aux, run.ds, cfg, "test").metrics
    out = {"ttt before recall@20": before["recall@20"], "ttt before ndcg@20": before["ndcg@20"]}
    for depth in TTT_DEPTHS:
      for rate in TTT_RATES:
        t = ttt.default_ttt_config()
        t.depth, t.rate, t.seed = depth, rate, seed
        if scale == "tiny":
          t.steps = 20
        result = ttt.evaluate_ttt(run, index, t, cfg, before=before)
        for name in ("recall@20", "ndcg@20"):
          out[f"ttt d={depth} r={rate} {name}"] = result["after"][name]
    return out
  raise ValueError(f"unknown extra measurement {extra!r}")


def flatten_results(results: dict) -> dict:
  """The numbers a table can show from one results.json."""
  out = dict(results["metrics"])
  health = results.get("index_health")
  if health:
    last = health[f"level_{len(health) - 1}"]
    out["max_node_ratio"] = last["max_node_ratio"]
    out["empty_nodes"] = last["empty_nodes"]
  return out


def run_table(name: str, scale: str, seeds: Sequence[int], runs_dir: str, cache_dir: str,
              command: str) -> dict:
  """Trains and measures every cell of table `name`; returns the report (see `markdown`)."""
  table = TABLES[name]
  datasets = table.datasets if scale == "full" else ("synthetic_tiny",)
  cells: List[dict] = []
  hardware = None
  for dataset in datasets:
    for r in table.rows:
      per_seed = []
      for seed in seeds:
        cfg = cell_config(table, r, scale, dataset, seed, cache_dir)
        workdir = run_dir(runs_dir, scale, dataset, r.label, cfg)
        results = train_once(cfg, workdir)
        hardware = results["hardware"]
        extras = measure_extras(table.extras, cfg, workdir, scale, seed)
        per_seed.append(cell_values(table, results, extras))
      cells.append({"dataset": dataset, "row": r.label, "seeds": list(seeds),
                    "values": per_seed})
  return summarize(name, scale, datasets, cells, command, versions(), hardware,
                   _run_commands(name, scale, runs_dir))


def table_columns(table: Table) -> List[str]:
  """The columns a table's report shows (the ttt grid replaces the listed ones)."""
  return ttt_columns() if "ttt" in table.extras else list(table.columns)


def summarize(name: str, scale: str, datasets: Sequence[str], cells: List[dict], command: str,
              versions_: dict, hardware, run_commands: List[str]) -> dict:
  """The report of table `name` from its cells ({'dataset', 'row', 'seeds', 'values'}): adds
  latency relative to two-tower and each cell's mean ± std summary."""
  table = TABLES[name]
  relative_latency(cells)
  columns = table_columns(table)
  for cell in cells:
    cell["summary"] = {c: mean_std([v.get(c) for v in cell["values"]]) for c in columns}
  return {"table": name, "title": table.title, "scale": scale, "columns": columns,
          "cells": cells, "note": table.note, "command": command,
          "run_commands": run_commands, "versions": versions_, "hardware": hardware,
          "published": {d: [dataclasses.asdict(p) for p in reference.published_for(d)]
                        for d in datasets}}


def measure_extras(names: Sequence[str], cfg: ml_collections.ConfigDict, workdir: str,
                   scale: str, seed: int) -> dict:
  """{extra: its numbers} for each extra measurement in `names`, on the run in `workdir`
  (reloaded from its best checkpoint); {} without loading anything if `names` is empty."""
  if not names:
    return {}
  run = trainer.load_trained(cfg, workdir)
  return {extra: extra_metrics(extra, run, cfg, scale, seed, workdir) for extra in names}


def cell_values(table: Table, results: dict, extras: dict) -> dict:
  """The numbers one seed of a cell shows: its results.json flattened, then the table's extras
  (beam-search recall@20 replaces the exhaustive one, which moves to exhaustive_recall@20)."""
  values = flatten_results(results)
  if "hierarchical" in table.extras and "hierarchical" not in extras:
    # Not measured through the index (yet): show no cutoff metric as if it were.
    values = {k: v for k, v in values.items() if "@" not in k}
  for extra in table.extras:
    values.update(extras.get(extra, {}))
  if "hierarchical" in table.extras and "recall@20" in results["metrics"]:
    values["exhaustive_recall@20"] = results["metrics"]["recall@20"]
  return values


def relative_latency(cells: List[dict]) -> None:
  """latency_vs_two_tower: each seed's serving p50 over the two-tower's on that dataset/seed
  (none where that seed of the two-tower has no latency)."""
  base = {c["dataset"]: dict(zip(c["seeds"], c["values"]))
          for c in cells if c["row"] == TWO_TOWER.label}
  for cell in cells:
    ref = base.get(cell["dataset"], {})
    for seed, v in zip(cell["seeds"], cell["values"]):
      ref_ms = ref.get(seed, {}).get("latency_p50_ms")
      if ref_ms and "latency_p50_ms" in v:
        v["latency_vs_two_tower"] = v["latency_p50_ms"] / ref_ms


def mean_std(values) -> dict | None:
  vals = [float(v) for v in values if isinstance(v, (int, float))]
  if not vals:
    return None
  return {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}


def _run_commands(name: str, scale: str, runs_dir: str) -> List[str]:
  return [f"python -m experiments.reproduce --table={name} --scale={scale} --runs_dir={runs_dir}",
          "each cell's own config: <runs_dir>/<scale>/<dataset>/<row>-<config hash>/seed<S>/"
          "config.json (shared by every table with that row)"]


def versions() -> dict:
  import flax, optax  # pylint: disable=import-outside-toplevel,multiple-imports
  try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False, cwd=os.path.dirname(__file__)).stdout.strip()
  except OSError:
    commit = ""
  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "python": platform.python_version(), "hsnn_jax_commit": commit or "unknown"}


# ---------------------------------------------------------------- report

def _fmt(summary: dict | None, column: str) -> str:
  if summary is None:
    return "-"
  if column in ("flops_per_query",):
    return f"{summary['mean'] / 1e6:.2f}M ± {summary['std'] / 1e6:.2f}M"
  return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def markdown(report: dict) -> str:
  lines = [f"# {report['title']} (`{report['table']}`, scale: {report['scale']})", ""]
  if report["scale"] == "tiny":
    lines += ["Tiny scale: the planted synthetic corpus with short schedules. These numbers check "
              "the pipeline; they are not a reproduction.", ""]
  cols = report["columns"]
  lines += ["| dataset | model | " + " | ".join(cols) + " |",
            "|---|---|" + "---|" * len(cols)]
  for cell in report["cells"]:
    lines.append(f"| {cell['dataset']} | {cell['row']} | "
                 + " | ".join(_fmt(cell["summary"][c], c) for c in cols) + " |")
  seeds = report["cells"][0]["seeds"] if report["cells"] else []
  if "status" in report:  # a ledger report: each cell over the seeds it has records for
    lines += ["", f"Mean ± std over each cell's recorded seeds of {report['seeds']}."]
  else:
    lines += ["", f"Mean ± std over seeds {seeds}."]
  if report["note"]:
    lines += ["", report["note"]]
  if report.get("status"):  # a ledger report: which cells are not (or not fully) recorded
    lines += [""] + [f"- {line}" for line in report["status"]]
  published = [(d, p) for d, rows in report["published"].items() for p in rows]
  if published:
    lines += ["", "Published numbers on the same protocols (quoted, not ours; BENCHMARKS.md):", "",
              "| dataset | method | metrics | source |", "|---|---|---|---|"]
    for d, p in published:
      metrics = ", ".join(f"{k} {v:.4f}" for k, v in p["metrics"].items() if v is not None)
      lines.append(f"| {d} | {p['method']} | {metrics} | {p['source']} |")
  v = report["versions"]
  lines += ["", f"Command: `{report['command']}`", "",
            f"Hardware: {report['hardware']}", "",
            f"Versions: jax {v['jax']}, flax {v['flax']}, optax {v['optax']}, python "
            f"{v['python']}, hsnn_jax {v['hsnn_jax_commit']}", ""]
  return "\n".join(lines)
