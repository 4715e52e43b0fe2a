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

from experiments import tables
from hsnn_jax.train import trainer, writer

_TABLE = flags.DEFINE_enum("table", None, list(tables.TABLES), "Which table to regenerate.")
_OUT = flags.DEFINE_string("out", "results", "Directory for NAME.md and NAME.json.")
_SCALE = flags.DEFINE_enum("scale", "full", ["full", "tiny"],
                           "'full': the public datasets; 'tiny': planted synthetic data, minutes.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; mean ± std is over them.")
_RUNS = flags.DEFINE_string("runs_dir", "runs/reproduce", "Where each run's workdir goes.")
_CACHE = flags.DEFINE_string("cache_dir", "./cache", "Prepared-array cache.")
flags.mark_flag_as_required("table")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  seeds = [int(s) for s in _SEEDS.value]
  if not seeds:
    raise SystemExit("error: --seeds is empty")
  command = " ".join(["python -m experiments.reproduce"] + sys.argv[1:])
  try:
    report = tables.run_table(_TABLE.value, _SCALE.value, seeds, _RUNS.value, _CACHE.value,
                              command)
    os.makedirs(_OUT.value, exist_ok=True)
    stem = os.path.join(_OUT.value, _TABLE.value)
    writer.write_json_atomic(stem + ".json", report)
    with writer.atomic_path(stem + ".md") as tmp, open(tmp, "w") as fh:
      fh.write(tables.markdown(report))
  except trainer.Preempted as stop:
    logging.warning("%s", stop)
    sys.exit(trainer.PREEMPTED_EXIT_CODE)
  except trainer.USER_ERRORS as err:
    raise SystemExit(f"error: {err}") from None
  print(tables.markdown(report))
  print(f"written: {stem}.md, {stem}.json")


if __name__ == "__main__":
  app.run(main)
