"""Regenerate one of the papers' tables on public data: trains every row over several seeds,
measures, and writes DIR/NAME.md and DIR/NAME.json (mean ± std, commands, versions, hardware).

  python -m experiments.reproduce --table=hill_public --out=results
  python -m experiments.reproduce --table=hsnn_table2 --out=results --seeds=0,1,2
  python -m experiments.reproduce --table=ttt --out=/tmp/tables --scale=tiny      # what CI runs

Tables (experiments/tables.py says which rows, datasets and columns each has):
  hsnn_table1     two-tower, MoNN Small / Medium / Large, HSNN 2- and 3-layer: NE, Recall@K,
                  NDCG@K, model FLOPs per query, retrieval latency relative to two-tower;
  hsnn_table2     the index learnt separately (SIL), by alternation (EM) or jointly (JOIM);
  hsnn_table3     JOIM without the alpha schedule, without warm-up, without the balance term;
  hill_public     Gowalla Recall@20 / NDCG@20 through hierarchical retrieval, with exactness@20;
  tiger_protocol  Beauty and Sports, Recall / NDCG @5 and @10, beside TIGER and SASRec;
  ttt             test-time training over phi_DEP x phi_IR.
--scale=tiny runs the same table on the planted synthetic corpus with short schedules (minutes
on a CPU): it checks the pipeline, its numbers are not the papers'.

At full scale the tables come from the committed ledger (experiments/ledger.py): one record
per finished cell under --ledger_dir/<dataset>/<row>/seed<S>.json. The command trains only the
cells with no record, a stale one (its config no longer the row's) or a partial one (an extra
measurement missing), writes each record as its cell finishes, then assembles DIR/NAME.md,
.json and .png from the records alone:

  python -m experiments.reproduce --table=hill_public --plan        # what is missing, how long
  python -m experiments.reproduce --table=hill_public --import_run=gowalla:two-tower:0:runs/x
  python -m experiments.reproduce --table=hill_public --datasets=gowalla --rows=two_tower --seeds=1
  python -m experiments.reproduce --table=hill_public --notrain     # assemble from records only

--plan prints the missing, stale and partial cells with projected time and trains nothing;
--import_run records a finished run dir as a cell (its config must be the row's; the table's
extras are measured on its checkpoint unless --nomeasure_imported, which records it partial).
Tiny-scale runs never touch the ledger.

Each run lives in --runs_dir/<scale>/<dataset>/<row>-<config hash>/seed<S>; a finished run (its
results.json, same config) is reused, by any table with that row, and an interrupted one resumes
from its checkpoints, so re-running the command after a kill continues where it stopped.
A damaged cache or results record, a full disk or a run dir that another live run holds ends the
command with one line on stderr and exit 1; SIGTERM saves the current run and exits 75.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from experiments import figures, ledger, ledger_runs, ledger_tables, tables
from hsnn_jax.train import trainer, writer

_TABLE = flags.DEFINE_enum("table", None, list(tables.TABLES), "Which table to regenerate.")
_OUT = flags.DEFINE_string("out", "results", "Directory for NAME.md and NAME.json.")
_SCALE = flags.DEFINE_enum("scale", "full", ["full", "tiny"],
                           "'full': the public datasets; 'tiny': planted synthetic data, minutes.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; mean ± std is over them.")
_RUNS = flags.DEFINE_string("runs_dir", "runs/reproduce", "Where each run's workdir goes.")
_CACHE = flags.DEFINE_string("cache_dir", "./cache", "Prepared-array cache.")
_LEDGER = flags.DEFINE_string("ledger_dir", ledger.LEDGER_DIR,
                              "Full scale: the committed per-cell records.")
_PLAN = flags.DEFINE_bool("plan", False, "Full scale: list the cells to run, with projected "
                          "time, and exit without training.")
_IMPORT = flags.DEFINE_string("import_run", None, "Full scale: DATASET:ROW_LABEL:SEED:WORKDIR, "
                              "record a finished run dir as that cell, then assemble.")
_MEASURE = flags.DEFINE_bool("measure_imported", True, "--import_run: measure the table's extras "
                             "on the imported run now (else the cell is recorded partial).")
_TRAIN = flags.DEFINE_bool("train", True, "Full scale: train the missing cells first; "
                           "--notrain assembles the report from the records alone.")
_DATASETS = flags.DEFINE_list("datasets", [], "Full scale: only these datasets' cells.")
_ROWS = flags.DEFINE_list("rows", [], "Full scale: only these rows (slugs, e.g. two_tower).")
flags.mark_flag_as_required("table")


def _write(report: dict, out: str, name: str, figure: bool) -> str:
  """Writes OUT/NAME.json and .md atomically (and .png if `figure` and it has values)."""
  os.makedirs(out, exist_ok=True)
  stem = os.path.join(out, name)
  writer.write_json_atomic(stem + ".json", report)
  with writer.atomic_path(stem + ".md") as tmp, open(tmp, "w") as fh:
    fh.write(tables.markdown(report))
  if figure and figures.has_values(report):
    with writer.atomic_path(stem + ".png") as tmp:
      figures.render(report, tmp)
  return stem


def _full_scale(name: str, seeds) -> dict | None:
  """The ledger path: plan (None: nothing to write), import, or fill; then assemble."""
  root = _LEDGER.value
  if _PLAN.value:
    cells = ledger.table_cells(name, root, seeds, _DATASETS.value, _ROWS.value)
    print("\n".join(ledger_tables.plan_lines(name, root, cells, _RUNS.value)))
    return None
  if _IMPORT.value:
    path = ledger_runs.import_run(name, _IMPORT.value, root, _CACHE.value, _MEASURE.value)
    print(f"recorded {path}")
  elif _TRAIN.value:
    ledger_runs.fill(name, root, seeds, _RUNS.value, _CACHE.value, _DATASETS.value,
                     _ROWS.value)
  # The report covers the table's seeds even when this command filled only some.
  return ledger_tables.assemble(name, root, sorted(set(ledger.SEEDS) | set(seeds)))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in _SEEDS.value]
  if not seeds:
    raise SystemExit("error: --seeds is empty")
  if _SCALE.value == "tiny" and (_PLAN.value or _IMPORT.value):
    raise SystemExit("error: --plan and --import_run work on the full-scale ledger; tiny runs "
                     "are never recorded")
  command = " ".join(["python -m experiments.reproduce"] + sys.argv[1:])
  try:
    if _SCALE.value == "full":
      report = _full_scale(_TABLE.value, seeds)
      if report is None:
        return
    else:
      report = tables.run_table(_TABLE.value, _SCALE.value, seeds, _RUNS.value, _CACHE.value,
                                command)
    stem = _write(report, _OUT.value, _TABLE.value, figure=_SCALE.value == "full")
  except trainer.Preempted as stop:
    logging.warning("%s", stop)
    sys.exit(trainer.PREEMPTED_EXIT_CODE)
  except trainer.USER_ERRORS as err:
    raise SystemExit(f"error: {err}") from None
  print(tables.markdown(report))
  print(f"written: {stem}.md, {stem}.json")


if __name__ == "__main__":
  app.run(main)
