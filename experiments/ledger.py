"""The results ledger: one committed record per finished full-scale cell (dataset x row x seed),
and the tables assembled from those records.

A record lives at <root>/<dataset>/<row slug>/seed<S>.json (root: results/runs), independent of
the table that asked for it, so every table with that row shares it. It holds the run's
results.json ('results': metrics, config, index health, wall time, hardware), the table extras
measured on the trained model ('extras', with the settings they used), the command that
reproduces the cell, library versions and the git commit. Never checkpoints or data.

A cell of a table is
  ok       its record matches the row's current config and has every extra the table needs;
  missing  no record;
  stale    a record whose config identity (the config without cache_dir, progress_bar and
           eval.ks) differs from the row's, or whose metrics lack a cutoff the table shows:
           never reused, listed with the differing fields;
  partial  trained and recorded, but an extra the table needs (beam search through the index,
           latency, ttt) is not measured yet, or was measured with other settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from typing import Dict, List, Optional, Sequence

import ml_collections

from experiments import tables
from hsnn_jax.train.writer import read_json, write_json_atomic

LEDGER_DIR = os.path.join("results", "runs")
SEEDS = (0, 1, 2)  # every table's report covers at least these
SCALE = "full"  # the ledger holds full-scale cells only; tiny (CI) runs never write here
_NOT_IDENTITY_EVAL = ("ks",)  # which cutoffs are reported does not change what trains


# ---------------------------------------------------------------- config identity

def config_identity(config: ml_collections.ConfigDict | dict) -> dict:
  """tables.run_identity without eval.ks: the fields that decide what model trains."""
  ident = json.loads(json.dumps(tables.run_identity(config)))  # a deep copy
  for key in _NOT_IDENTITY_EVAL:
    ident.get("eval", {}).pop(key, None)
  return ident


def config_hash(config: ml_collections.ConfigDict | dict) -> str:
  """12 hex digits of sha256 over the sorted JSON of `config_identity`."""
  text = json.dumps(config_identity(config), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_diff(recorded: dict, current: ml_collections.ConfigDict | dict) -> List[str]:
  """'field: recorded -> current' for every identity field that differs, sorted."""
  a, b = _flat(config_identity(recorded)), _flat(config_identity(current))
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def extra_settings(extra: str) -> dict:
  """The full-scale settings an extra measurement uses; a record measured with others is
  re-measured."""
  if extra == "hierarchical":
    return {"nodes": list(tables.HIERARCHY_NODES[SCALE]),
            "beams": list(tables.HIERARCHY_BEAMS[SCALE])}
  if extra == "latency":
    return {"k": tables.RETRIEVAL_K, "beams": list(tables.HIERARCHY_BEAMS[SCALE])}
  if extra == "ttt":
    return {"depths": list(tables.TTT_DEPTHS), "rates": list(tables.TTT_RATES),
            "nodes": list(tables.TTT_NODES[SCALE])}
  raise ValueError(f"unknown extra measurement {extra!r}")


def needed_cutoff_metrics(table: tables.Table) -> List[str]:
  """'recall@K' for every K a column names: the run's own metrics must have them."""
  ks = tables.eval_ks((), table.columns)
  return [f"recall@{k}" for k in ks]


# ---------------------------------------------------------------- cells

@dataclasses.dataclass
class Cell:
  """One dataset x row x seed of a table, and what the ledger holds for it."""

  dataset: str
  row: tables.Row
  seed: int
  status: str  # 'ok' | 'missing' | 'stale' | 'partial'
  record: Optional[dict]
  detail: str = ""
  needs: tuple = ()  # the extras still to measure, for 'partial'

  @property
  def key(self) -> str:
    return f"{self.dataset}/{tables.slug(self.row.label)}/seed{self.seed}"


def record_path(root: str, dataset: str, label: str, seed: int) -> str:
  return os.path.join(root, dataset, tables.slug(label), f"seed{seed}.json")


def load_record(path: str) -> dict:
  record = read_json(path, "ledger record", "restore it from git or delete it to retrain")
  if not isinstance(record, dict) or not isinstance(record.get("results"), dict):
    raise ValueError(f"ledger record {path} has no 'results' object; restore it from git")
  return record


def cell_config(table: tables.Table, r: tables.Row, dataset: str, seed: int,
                cache_dir: str = "./cache") -> ml_collections.ConfigDict:
  return tables.cell_config(table, r, SCALE, dataset, seed, cache_dir)


def classify(table: tables.Table, r: tables.Row, dataset: str, seed: int,
             record: Optional[dict]) -> Cell:
  """The cell's status given its record (None: missing)."""
  if record is None:
    return Cell(dataset, r, seed, "missing", None)
  current = cell_config(table, r, dataset, seed)
  diff = config_diff(record["results"].get("config", {}), current)
  if diff:
    return Cell(dataset, r, seed, "stale", record, "config differs: " + "; ".join(diff))
  lacking = [m for m in needed_cutoff_metrics(table) if m not in record["results"]["metrics"]]
  if lacking:
    return Cell(dataset, r, seed, "stale", record,
                f"its metrics lack {', '.join(lacking)} (trained with other eval.ks)")
  extras = record.get("extras", {})
  needs = tuple(e for e in table.extras
                if e not in extras or extras[e].get("settings") != extra_settings(e))
  if needs:
    return Cell(dataset, r, seed, "partial", record, "not measured yet: " + ", ".join(needs),
                needs)
  return Cell(dataset, r, seed, "ok", record)


def table_cells(name: str, root: str, seeds: Sequence[int], datasets: Sequence[str] = (),
                rows: Sequence[str] = ()) -> List[Cell]:
  """Every cell of table `name` (optionally only these datasets / row slugs), in table order."""
  table = tables.TABLES[name]
  cells = []
  for dataset in table.datasets:
    if datasets and dataset not in datasets:
      continue
    for r in table.rows:
      if rows and tables.slug(r.label) not in rows:
        continue
      for seed in seeds:
        path = record_path(root, dataset, r.label, seed)
        record = load_record(path) if os.path.exists(path) else None
        cells.append(classify(table, r, dataset, seed, record))
  return cells


# ---------------------------------------------------------------- records

def cell_command(name: str, dataset: str, label: str, seed: int) -> str:
  """The command that (re)produces exactly this cell's record."""
  return (f"python -m experiments.reproduce --table={name} --datasets={dataset} "
          f"--rows={tables.slug(label)} --seeds={seed}")


def make_record(name: str, dataset: str, label: str, seed: int, results: dict,
                extras: Dict[str, dict], workdir: str, **more) -> dict:
  """A ledger record from a finished run's results.json and its measured extras."""
  versions = tables.versions()
  return {"dataset": dataset, "row": label, "seed": seed, "scale": SCALE,
          "config_hash": config_hash(results["config"]), "results": results,
          "extras": {e: {"settings": extra_settings(e), "values": v} for e, v in extras.items()},
          "command": cell_command(name, dataset, label, seed), "versions": versions,
          "hardware": results.get("hardware"), "git_commit": _commit(versions),
          "workdir": workdir, **more}


def _commit(versions: dict) -> str:
  """The short HEAD commit, '-dirty' if tracked files differ from it (the record was made by
  uncommitted code)."""
  commit = versions["hsnn_jax_commit"]
  try:
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False,
                           cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except OSError:
    return commit
  return commit + "-dirty" if dirty else commit


def write_record(root: str, record: dict) -> str:
  """Writes the record atomically to its place under `root`; returns the path. Extras the
  record there already holds for the same config (another table's: latency, beam search) and
  this one lacks are kept, so tables sharing a cell do not erase each other's measurements."""
  path = record_path(root, record["dataset"], record["row"], record["seed"])
  if os.path.exists(path):
    old = load_record(path)
    if old.get("config_hash") == record["config_hash"]:
      record["extras"] = {**old.get("extras", {}), **record["extras"]}
  write_json_atomic(path, record)
  return path


def extra_values(record: dict) -> Dict[str, dict]:
  """{extra: numbers} of the extras a record holds."""
  return {e: x["values"] for e, x in record.get("extras", {}).items()}
