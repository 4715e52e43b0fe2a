"""A table's report assembled from the ledger's records, and the --plan of what it still needs.

`assemble` is a pure function of the records and the code (no clock, no current versions), so a
committed results/NAME.json and .md can be checked against the committed records exactly
(tests/test_ledger.py).
"""

from __future__ import annotations

import glob
import json
import os
from typing import List, Optional, Sequence

from experiments import ledger, tables


def _merged(values: Sequence[str]) -> str:
  distinct = sorted({str(v) for v in values if v})
  return "; ".join(distinct) if distinct else "unknown"


def assemble(name: str, root: str, seeds: Sequence[int]) -> dict:
  """The report of table `name` (see tables.markdown) from the records under `root`: every
  cell's recorded seeds (ok or partial: a partial cell shows what it has), mean ± std over
  them, and a status line for each cell that is missing, stale or partial."""
  table = tables.TABLES[name]
  cells = ledger.table_cells(name, root, seeds)
  report_cells, used = [], []
  for dataset in table.datasets:
    for r in table.rows:
      mine = [c for c in cells if c.dataset == dataset and c.row.label == r.label
              and c.status in ("ok", "partial")]
      used += [c.record for c in mine]
      report_cells.append({
          "dataset": dataset, "row": r.label, "seeds": [c.seed for c in mine],
          "values": [tables.cell_values(table, c.record["results"], ledger.extra_values(c.record))
                     for c in mine]})
  versions = {k: _merged([rec["versions"].get(k) for rec in used])
              for k in ("jax", "flax", "optax", "python", "hsnn_jax_commit")}
  report = tables.summarize(
      name, "full", table.datasets, report_cells, f"python -m experiments.reproduce --table={name}",
      versions, _merged([rec.get("hardware") for rec in used]),
      [f"python -m experiments.reproduce --table={name} --plan",
       "each cell's record, with its own command: results/runs/<dataset>/<row>/seed<S>.json"])
  report["seeds"] = list(seeds)
  report["status"] = status_lines(cells)
  return report


def status_lines(cells: List[ledger.Cell]) -> List[str]:
  """'DATASET/ROW seeds S,..: STATUS (detail)' for the cells that are not ok, seeds of one
  dataset and row with the same status and detail on one line."""
  groups: dict = {}
  for c in cells:
    if c.status != "ok":
      key = (c.dataset, tables.slug(c.row.label), c.status, c.detail)
      groups.setdefault(key, []).append(str(c.seed))
  return [f"{d}/{r} seeds {','.join(s)}: {st.upper()}" + (f" ({detail})" if detail else "")
          for (d, r, st, detail), s in groups.items()]


# ---------------------------------------------------------------- plan

def seconds_per_step(root: str, dataset: str, label: str) -> Optional[float]:
  """Mean wall seconds per training step over the recorded seeds of this dataset and row (any
  config), from results.json's wall_seconds.total / steps; None if no record has them. A resumed
  run's wall time counts its last process only, so this can be low."""
  rates = []
  for path in sorted(glob.glob(os.path.join(root, dataset, tables.slug(label), "seed*.json"))):
    res = ledger.load_record(path)["results"]
    wall, steps = (res.get("wall_seconds") or {}).get("total"), res.get("steps")
    if wall and steps:
      rates.append(wall / steps)
  return sum(rates) / len(rates) if rates else None


def run_seconds_per_step(runs_dir: str, dataset: str, label: str) -> Optional[float]:
  """Seconds per training step measured by unrecorded runs of this dataset and row under
  `runs_dir` (<runs_dir>/full/<dataset>/<row>-<hash>/seed<S>, any config): batch_size over the
  median train/examples_per_sec of their metrics.jsonl. Training only (no evaluation); None if
  there is no such run."""
  rates = []
  pattern = os.path.join(runs_dir, ledger.SCALE, dataset, f"{tables.slug(label)}-*", "seed*")
  for workdir in sorted(glob.glob(pattern)):
    try:
      with open(os.path.join(workdir, "config.json")) as fh:
        batch = json.load(fh)["train"]["batch_size"]
      with open(os.path.join(workdir, "metrics.jsonl")) as fh:
        speeds = sorted(json.loads(line)["train/examples_per_sec"] for line in fh
                        if "train/examples_per_sec" in line)
    except (OSError, ValueError, KeyError):
      continue
    if speeds:
      rates.append(batch / speeds[len(speeds) // 2])
  return sum(rates) / len(rates) if rates else None


def _hours(seconds: float) -> str:
  return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def plan_lines(name: str, root: str, cells: List[ledger.Cell], runs_dir: str = "") -> List[str]:
  """One line per cell that is not ok (status, cell, why, projected time), then a total.
  Projection: the row's config num_steps x the seconds per step of that dataset and row,
  recorded (wall time of a recorded run, on its hardware) or else measured by a run under
  `runs_dir` (training steps only); 'unknown' if neither exists. A partial cell needs only its
  extras measured, which the plan does not project."""
  todo = [c for c in cells if c.status != "ok"]
  lines = [f"table {name}: {len(cells)} cells, {len(cells) - len(todo)} recorded, "
           + ", ".join(f"{sum(c.status == s for c in cells)} {s}"
                       for s in ("missing", "stale", "partial"))]
  known, unknown = 0.0, 0
  for c in todo:
    line = f"  {c.status.upper():8s} {c.key}"
    if c.detail:
      line += f"  ({c.detail})"
    if c.status == "partial":
      line += "; extras only, time not projected"
      unknown += 1
    else:
      steps = ledger.cell_config(tables.TABLES[name], c.row, c.dataset, c.seed).train.num_steps
      rate, source = seconds_per_step(root, c.dataset, c.row.label), "recorded"
      if rate is None and runs_dir:
        rate, source = run_seconds_per_step(runs_dir, c.dataset, c.row.label), "measured in a run"
      if rate is None:
        line += f"; {steps} steps x unknown s/step = unknown"
        unknown += 1
      else:
        line += f"; {steps} steps x {rate:.2f} s/step ({source}) = {_hours(steps * rate)}"
        known += steps * rate
    lines.append(line)
  lines.append(f"projected: {_hours(known)} of CPU wall time for {len(todo) - unknown} cells "
               f"with a known rate; {unknown} cells unknown")
  return lines
