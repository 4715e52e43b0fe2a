"""Filling the ledger: train (or finish measuring) the cells a table lacks, or import a run that
was trained elsewhere. Each finished cell's record is written atomically as soon as it is done,
so a killed command keeps every cell it finished.
"""

from __future__ import annotations

import json
import os
from typing import Callable, List, Sequence

import ml_collections

from experiments import ledger, tables
from hsnn_jax.train.writer import read_json


def _run_config(results: dict, table: tables.Table, cache_dir: str) -> ml_collections.ConfigDict:
  """The config a finished run trained with, pointed at `cache_dir`, evaluating every cutoff the
  table shows (for the extras measured on it)."""
  cfg = ml_collections.ConfigDict(results["config"])
  cfg.cache_dir, cfg.progress_bar = cache_dir, False
  cfg.eval.ks = tables.eval_ks(cfg.eval.ks, table.columns)
  return cfg


def fill(name: str, root: str, seeds: Sequence[int], runs_dir: str, cache_dir: str,
         datasets: Sequence[str] = (), rows: Sequence[str] = (),
         log: Callable[[str], None] = print) -> List[str]:
  """Trains every missing or stale cell of table `name` (in its run dir under `runs_dir`, which
  resumes or reuses a run there) and measures the extras of partial ones (on the run dir the
  record names, if it is still on disk, else the standard one). Returns the records written."""
  table = tables.TABLES[name]
  written = []
  for cell in ledger.table_cells(name, root, seeds, datasets, rows):
    if cell.status == "ok":
      continue
    log(f"{cell.status} {cell.key}: {cell.detail or 'training'}")
    cfg = ledger.cell_config(table, cell.row, cell.dataset, cell.seed, cache_dir)
    workdir = tables.run_dir(runs_dir, ledger.SCALE, cell.dataset, cell.row.label, cfg)
    extras = {}
    if cell.status == "partial":
      recorded = cell.record.get("workdir")
      if recorded and os.path.isdir(recorded):
        workdir = recorded
      results = cell.record["results"]
      extras = ledger.extra_values(cell.record)
      if not os.path.isdir(workdir):
        results = tables.train_once(cfg, workdir)
      run_cfg = _run_config(results, table, cache_dir)
    else:
      results = tables.train_once(cfg, workdir)
      run_cfg = cfg
    needs = cell.needs if cell.status == "partial" else table.extras
    extras.update(tables.measure_extras(needs, run_cfg, workdir, ledger.SCALE, cell.seed))
    keep = {k: cell.record[k] for k in ("imported_from",)
            if cell.status == "partial" and k in cell.record}
    record = ledger.make_record(name, cell.dataset, cell.row.label, cell.seed, results, extras,
                                workdir, **keep)
    written.append(ledger.write_record(root, record))
    log(f"recorded {written[-1]}")
  return written


# ---------------------------------------------------------------- import

def parse_import(spec: str, name: str):
  """'DATASET:ROW:SEED:WORKDIR' (ROW: the row's label or its slug) -> (dataset, Row, seed,
  workdir); ValueError naming what is wrong."""
  parts = spec.split(":", 3)
  if len(parts) != 4:
    raise ValueError(f"--import_run={spec!r}: expected DATASET:ROW_LABEL:SEED:WORKDIR")
  dataset, label, seed, workdir = parts
  table = tables.TABLES[name]
  if dataset not in table.datasets:
    raise ValueError(f"table {name} has no dataset {dataset!r}; it has {list(table.datasets)}")
  matches = [r for r in table.rows if label in (r.label, tables.slug(r.label))]
  if not matches:
    raise ValueError(f"table {name} has no row {label!r}; it has "
                     + ", ".join(repr(r.label) for r in table.rows))
  if not seed.isdigit():
    raise ValueError(f"--import_run={spec!r}: SEED {seed!r} is not a non-negative integer")
  return dataset, matches[0], int(seed), workdir


def import_run(name: str, spec: str, root: str, cache_dir: str, measure: bool = True) -> str:
  """Records a finished run dir as the cell `spec` names (see parse_import), after checking its
  results.json config against the row's current config (ValueError naming every differing
  field, or the missing cutoffs, if not). With `measure`, the table's extras are measured on the
  run (its best checkpoint reloaded); without, the cell is recorded partial and the next
  `reproduce --table=NAME` measures them. Returns the record path."""
  dataset, r, seed, workdir = parse_import(spec, name)
  table = tables.TABLES[name]
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise ValueError(f"{workdir} has no results.json: the run has not finished")
  results = read_json(path, "results record", "re-run its training command to rewrite it")
  current = ledger.cell_config(table, r, dataset, seed, cache_dir)
  diff = ledger.config_diff(results.get("config", {}), current)
  if diff:
    raise ValueError(f"{workdir} was not trained with the config of {r.label!r} on {dataset} "
                     f"seed {seed}; differing fields (run -> row): " + "; ".join(diff))
  lacking = [m for m in ledger.needed_cutoff_metrics(table) if m not in results["metrics"]]
  if lacking:
    raise ValueError(f"{workdir}'s metrics lack {', '.join(lacking)}, which table {name} "
                     f"shows: train it with --config.eval.ks including those cutoffs")
  extras = {}
  if measure:
    extras = tables.measure_extras(table.extras, _run_config(results, table, cache_dir),
                                   workdir, ledger.SCALE, seed)
  record = ledger.make_record(name, dataset, r.label, seed, results, extras,
                              os.path.abspath(workdir), imported_from=_origin(workdir))
  return ledger.write_record(root, record)


def _origin(workdir: str) -> dict:
  """Where an imported run came from: its dir and its config.json's hash if it has one."""
  out = {"workdir": os.path.abspath(workdir)}
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    with open(config_path) as fh:
      out["config_json_hash"] = ledger.config_hash(json.load(fh))
  return out
