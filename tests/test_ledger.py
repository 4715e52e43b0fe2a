"""The results ledger (experiments/ledger*.py): the committed tables are exactly what the
committed records give, and, on synthetic records in a temp dir, assembly (mean ± std over
seeds), staleness, partial cells, --plan, import and filling work. No training: fast."""

import json
import os
import subprocess
import sys

import pytest

from experiments import figures, ledger, ledger_runs, ledger_tables, tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")


# ---------------------------------------------------------------- the committed ledger

def _committed_reports():
  if not os.path.isdir(RESULTS):
    return []
  return sorted(f[:-5] for f in os.listdir(RESULTS)
                if f.endswith(".json") and f[:-5] in tables.TABLES)


def test_committed_records_are_valid_and_where_their_cell_says():
  root = os.path.join(RESULTS, "runs")
  for dirpath, _, files in os.walk(root):
    for f in files:
      path = os.path.join(dirpath, f)
      assert f.endswith(".json"), f"not a record: {path} (no checkpoints or data in the ledger)"
      record = ledger.load_record(path)
      assert path == ledger.record_path(root, record["dataset"], record["row"], record["seed"])
      assert record["scale"] == "full" and record["config_hash"] == ledger.config_hash(
          record["results"]["config"])
      for key in ("command", "versions", "hardware", "git_commit"):
        assert record[key], f"{path} has no {key}"


def check_table_matches_records(name: str, out_dir: str, ledger_dir: str) -> None:
  """OUT/NAME.json and .md are exactly what the records under ledger_dir assemble to."""
  with open(os.path.join(out_dir, f"{name}.json")) as fh:
    committed = json.load(fh)
  assembled = ledger_tables.assemble(name, ledger_dir, committed["seeds"])
  fix = f"run: python -m experiments.reproduce --table={name} --notrain"
  assert json.loads(json.dumps(assembled)) == committed, (
      f"{name}.json differs from its records; {fix}")
  with open(os.path.join(out_dir, f"{name}.md")) as fh:
    assert fh.read() == tables.markdown(assembled), f"{name}.md differs from its records; {fix}"


@pytest.mark.parametrize("name", _committed_reports() or ["<no committed table>"])
def test_committed_table_is_exactly_what_its_records_give(name):
  if name not in tables.TABLES:
    return  # nothing committed yet: nothing can drift (the check itself is tested below)
  check_table_matches_records(name, RESULTS, os.path.join(RESULTS, "runs"))


# ---------------------------------------------------------------- synthetic records

def _results(name, label, dataset, seed, metrics, steps_delta=0, wall=None):
  """A results.json as the trainer writes it for this cell (config: the row's current one)."""
  table = tables.TABLES[name]
  row = next(r for r in table.rows if r.label == label)
  cfg = ledger.cell_config(table, row, dataset, seed)
  cfg.train.num_steps += steps_delta
  out = {"metrics": dict(metrics), "config": json.loads(cfg.to_json_best_effort()),
         "hardware": "2 CPU cores", "steps": cfg.train.num_steps, "split": "test"}
  if wall is not None:
    out["wall_seconds"] = {"total": wall, "final_eval": 1.0}
  return out


def _record(root, name, label, dataset, seed, metrics, extras=None, **kw):
  rec = ledger.make_record(name, dataset, label, seed,
                           _results(name, label, dataset, seed, metrics, **kw), extras or {},
                           "/nowhere")
  return ledger.write_record(str(root), rec)


def test_assembly_means_over_seeds_and_lists_what_is_missing(tmp_path):
  for seed, r in ((0, 0.1), (1, 0.3)):
    _record(tmp_path, "hsnn_table2", "two-tower", "gowalla", seed, {"recall@20": r, "recall@10": r})
  assert os.path.exists(tmp_path / "gowalla" / "two_tower" / "seed1.json")
  report = ledger_tables.assemble("hsnn_table2", str(tmp_path), [0, 1, 2])
  cell = report["cells"][0]
  assert (cell["dataset"], cell["row"], cell["seeds"]) == ("gowalla", "two-tower", [0, 1])
  s = cell["summary"]["recall@20"]
  assert s["n"] == 2 and s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
  assert all(c["values"] == [] for c in report["cells"][1:])
  assert report["status"][:2] == ["gowalla/two_tower seeds 2: MISSING",
                                  "gowalla/monn_small seeds 0,1,2: MISSING"]
  assert len(report["status"]) == 2 * 5  # one line per dataset x row not fully recorded
  md = tables.markdown(report)
  assert "| gowalla | two-tower | - | 0.2000 ± 0.1000 |" in md
  assert "- gowalla/two_tower seeds 2: MISSING" in md
  assert "Mean ± std over each cell's recorded seeds of [0, 1, 2]." in md
  # Pure function of the records: assembling twice gives the same report.
  assert json.dumps(report) == json.dumps(ledger_tables.assemble("hsnn_table2", str(tmp_path),
                                                                 [0, 1, 2]))


def test_changed_config_is_stale_and_never_reused_but_cosmetic_fields_are_not(tmp_path):
  _record(tmp_path, "hsnn_table2", "two-tower", "gowalla", 0, {"recall@20": 0.5,
                                                               "recall@10": 0.4}, steps_delta=7)
  cells = ledger.table_cells("hsnn_table2", str(tmp_path), [0], ["gowalla"], ["two_tower"])
  assert [c.status for c in cells] == ["stale"] and "train.num_steps" in cells[0].detail
  report = ledger_tables.assemble("hsnn_table2", str(tmp_path), [0])
  assert report["cells"][0]["values"] == [] and report["cells"][0]["summary"]["recall@20"] is None
  assert any(line.startswith("gowalla/two_tower seeds 0: STALE (config differs: train.num_steps")
             for line in report["status"])
  table = tables.TABLES["hsnn_table2"]
  a = ledger.cell_config(table, table.rows[0], "gowalla", 0)
  b = ledger.cell_config(table, table.rows[0], "gowalla", 0, cache_dir="/elsewhere")
  b.progress_bar, b.eval.ks = True, (1, 2, 3)
  assert ledger.config_hash(a) == ledger.config_hash(b) and not ledger.config_diff(
      json.loads(b.to_json_best_effort()), a)
  # A record made before a field existed matches while the field keeps its old-behaviour value.
  old = json.loads(a.to_json_best_effort())
  del old["eval"]["valid_users"], old["train"]["eval_start"]
  assert ledger.config_hash(old) == ledger.config_hash(a)
  a.eval.valid_users = 1000
  assert ledger.config_diff(old, a) == ["eval.valid_users: '<absent>' -> 1000"]
  # A record whose metrics lack a cutoff the table shows is stale too.
  _record(tmp_path, "tiger_protocol", "two-tower", "beauty", 0, {"recall@10": 0.1})
  cell, = ledger.table_cells("tiger_protocol", str(tmp_path), [0], ["beauty"], ["two_tower"])
  assert cell.status == "stale" and "recall@5" in cell.detail


def test_hierarchical_table_needs_its_extra_and_never_shows_exhaustive_as_beam(tmp_path):
  metrics = {"recall@20": 0.18, "ndcg@20": 0.15}
  _record(tmp_path, "hill_public", "two-tower", "gowalla", 0, metrics)
  beam = {"recall@20": 0.17, "ndcg@20": 0.14, "exactness@20": 0.95, "items_scored_frac": 0.05}
  _record(tmp_path, "hill_public", "two-tower", "gowalla", 1, metrics, {"hierarchical": beam})
  cells = ledger.table_cells("hill_public", str(tmp_path), [0, 1], rows=["two_tower"])
  assert [c.status for c in cells] == ["partial", "ok"] and cells[0].needs == ("hierarchical",)
  values = ledger_tables.assemble("hill_public", str(tmp_path), [0, 1])["cells"][0]["values"]
  assert "recall@20" not in values[0] and values[0]["exhaustive_recall@20"] == 0.18
  assert values[1]["recall@20"] == 0.17 and values[1]["exhaustive_recall@20"] == 0.18
  # Measured with other beam widths: to measure again.
  path = ledger.record_path(str(tmp_path), "gowalla", "two-tower", 1)
  rec = ledger.load_record(path)
  rec["extras"]["hierarchical"]["settings"]["beams"] = [1, 1]
  ledger.write_record(str(tmp_path), rec)
  cell = ledger.table_cells("hill_public", str(tmp_path), [1], rows=["two_tower"])[0]
  assert cell.status == "partial"


def test_plan_projects_from_records_and_runs_and_says_unknown(tmp_path):
  ledger_dir, runs = tmp_path / "ledger", tmp_path / "runs"
  _record(ledger_dir, "hsnn_table2", "two-tower", "gowalla", 0, {"recall@20": 0.2,
                                                                 "recall@10": 0.1}, wall=300.0)
  _record(ledger_dir, "hsnn_table2", "two-tower", "gowalla", 1, {"recall@20": 0.2,
                                                                 "recall@10": 0.1}, steps_delta=1)
  run = runs / "full" / "beauty" / "two_tower-0123456789" / "seed0"
  run.mkdir(parents=True)
  (run / "config.json").write_text(json.dumps({"train": {"batch_size": 100}}))
  (run / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "train/examples_per_sec": v}) + "\n"
      for s, v in ((1, 50.0), (2, 200.0), (3, 1000.0))))
  cells = ledger.table_cells("hsnn_table2", str(ledger_dir), [0, 1, 2], rows=["two_tower"])
  lines = ledger_tables.plan_lines("hsnn_table2", str(ledger_dir), cells, str(runs))
  assert lines[0] == "table hsnn_table2: 6 cells, 1 recorded, 4 missing, 1 stale, 0 partial"
  steps = ledger.cell_config(tables.TABLES["hsnn_table2"], tables.TWO_TOWER, "gowalla",
                             0).train.num_steps
  rate = 300.0 / steps
  # The rate comes from seed0's record (seed1's, stale, has no wall time); beauty's from the run.
  assert any(l.startswith("  STALE    gowalla/two_tower/seed1  (config differs: train.num_steps")
             and f"x {rate:.2f} s/step (recorded)" in l for l in lines)
  assert f"  MISSING  gowalla/two_tower/seed2; {steps} steps x {rate:.2f} s/step (recorded)" in (
      "\n".join(lines))
  beauty_steps = ledger.cell_config(tables.TABLES["hsnn_table2"], tables.TWO_TOWER, "beauty",
                                    0).train.num_steps
  assert (f"  MISSING  beauty/two_tower/seed0; {beauty_steps} steps x 0.50 s/step "
          "(measured in a run)") in "\n".join(lines)
  assert lines[-1].endswith("for 5 cells with a known rate; 0 cells unknown")
  lines = ledger_tables.plan_lines("hsnn_table2", str(tmp_path / "empty"),
                                   ledger.table_cells("hsnn_table2", str(tmp_path / "empty"), [0]))
  assert all("unknown s/step = unknown" in l for l in lines[1:-1]) and len(lines) == 2 * 5 + 2


def test_plan_command_prints_and_writes_nothing(tmp_path):
  _record(tmp_path / "ledger", "tiger_protocol", "two-tower", "beauty", 0,
          {"recall@5": 0.05, "recall@10": 0.09})
  cmd = [sys.executable, "-m", "experiments.reproduce", "--table=tiger_protocol", "--plan",
         f"--ledger_dir={tmp_path / 'ledger'}", f"--out={tmp_path / 'out'}",
         f"--runs_dir={tmp_path / 'runs'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.splitlines()[0] == (
      "table tiger_protocol: 12 cells, 1 recorded, 11 missing, 0 stale, 0 partial")
  assert "MISSING  sports/hsnn_2_level__joim/seed2" in proc.stdout
  assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def _workdir(tmp_path, name, label, dataset, seed, metrics, **kw):
  workdir = tmp_path / f"run_{seed}_{kw.get('steps_delta', 0)}"
  workdir.mkdir()
  res = _results(name, label, dataset, seed, metrics, **kw)
  (workdir / "results.json").write_text(json.dumps(res))
  (workdir / "config.json").write_text(json.dumps(res["config"]))
  return str(workdir)


def test_import_checks_the_config_and_measures_or_records_partial(tmp_path, monkeypatch):
  metrics = {"recall@20": 0.18, "ndcg@20": 0.15, "recall@10": 0.1}
  good = _workdir(tmp_path, "hill_public", "two-tower", "gowalla", 0, metrics)
  bad = _workdir(tmp_path, "hill_public", "two-tower", "gowalla", 0, metrics, steps_delta=3)
  root = str(tmp_path / "ledger")
  with pytest.raises(ValueError, match=r"train\.num_steps: \d+ -> \d+"):
    ledger_runs.import_run("hill_public", f"gowalla:two-tower:0:{bad}", root, "./cache")
  with pytest.raises(ValueError, match="has no row"):
    ledger_runs.import_run("hill_public", f"gowalla:MoNN Small:0:{good}", root, "./cache")
  path = ledger_runs.import_run("hill_public", f"gowalla:two-tower:0:{good}", root, "./cache",
                                measure=False)
  cell, = ledger.table_cells("hill_public", root, [0], rows=["two_tower"])
  assert cell.status == "partial" and ledger.load_record(path)["imported_from"]["workdir"] == good
  calls = []
  monkeypatch.setattr(tables, "measure_extras", lambda names, cfg, workdir, scale, seed: (
      calls.append((tuple(names), workdir, tuple(cfg.eval.ks), scale))
      or {"hierarchical": {"recall@20": 0.17, "items_scored_frac": 0.05}}))
  ledger_runs.import_run("hsnn_table2", f"gowalla:two_tower:0:{good}", root, "./cache")
  assert calls[0][0] == ()  # a table without extras measures nothing (loads no checkpoint)
  ledger_runs.import_run("hill_public", f"gowalla:two-tower:0:{good}", root, "./cache")
  assert calls[1][:2] == (("hierarchical",), good) and 20 in calls[1][2] and calls[1][3] == "full"
  cell, = ledger.table_cells("hill_public", root, [0], rows=["two_tower"])
  assert cell.status == "ok"


def test_fill_trains_only_what_is_not_recorded(tmp_path, monkeypatch):
  root = str(tmp_path / "ledger")
  _record(root, "hsnn_table2", "two-tower", "gowalla", 0, {"recall@20": 0.2, "recall@10": 0.1})
  trained = []

  def fake_train(cfg, workdir):
    trained.append((cfg.dataset, cfg.seed, workdir))
    return _results("hsnn_table2", "two-tower", cfg.dataset, cfg.seed,
                    {"recall@20": 0.3, "recall@10": 0.2})
  monkeypatch.setattr(tables, "train_once", fake_train)
  written = ledger_runs.fill("hsnn_table2", root, [0, 1], str(tmp_path / "runs"), "./cache",
                             datasets=["gowalla"], rows=["two_tower"], log=lambda _: None)
  assert [t[:2] for t in trained] == [("gowalla", 1)] and len(written) == 1
  assert trained[0][2].startswith(str(tmp_path / "runs" / "full" / "gowalla" / "two_tower-"))
  rec = ledger.load_record(written[0])
  assert rec["command"] == ("python -m experiments.reproduce --table=hsnn_table2 "
                            "--datasets=gowalla --rows=two_tower --seeds=1")
  assert [c.status for c in ledger.table_cells("hsnn_table2", root, [0, 1], ["gowalla"],
                                               ["two_tower"])] == ["ok", "ok"]


def test_figures_render_for_both_kinds(tmp_path):
  for name, extras in (("hill_public", {"hierarchical": {"recall@20": 0.17, "ndcg@20": 0.1,
                                                         "items_scored_frac": 0.05}}),
                       ("hsnn_table2", {})):
    root = tmp_path / name
    assert not figures.has_values(ledger_tables.assemble(name, str(root), [0]))
    for seed in (0, 1):
      _record(root, name, "two-tower", "gowalla", seed, {"recall@20": 0.2, "ndcg@20": 0.1,
                                                         "recall@10": 0.1}, extras)
    png = tmp_path / f"{name}.png"
    assert figures.render(ledger_tables.assemble(name, str(root), [0, 1]), str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_is_relative_to_the_two_tower_of_the_same_seed(tmp_path):
  for label, seed, ms in (("two-tower", 0, 10.0), ("two-tower", 1, 20.0), ("MoNN Small", 1, 40.0)):
    _record(tmp_path, "hsnn_table1", label, "gowalla", seed,
            {"recall@20": 0.2, "recall@10": 0.1},
            {"latency": {"latency_p50_ms": ms, "flops_per_query": 1e6}})
  cells = ledger_tables.assemble("hsnn_table1", str(tmp_path), [0, 1])["cells"]
  assert [v["latency_vs_two_tower"] for v in cells[0]["values"]] == [1.0, 1.0]
  assert cells[1]["seeds"] == [1] and cells[1]["values"][0]["latency_vs_two_tower"] == 2.0


def test_rewriting_a_record_keeps_other_tables_extras_of_the_same_config(tmp_path):
  metrics = {"recall@20": 0.2, "recall@10": 0.1}
  _record(tmp_path, "hill_public", "two-tower", "gowalla", 0, metrics,
          {"hierarchical": {"recall@20": 0.17}})
  path = _record(tmp_path, "hsnn_table1", "two-tower", "gowalla", 0, metrics,
                 {"latency": {"latency_p50_ms": 3.0}})
  assert sorted(ledger.load_record(path)["extras"]) == ["hierarchical", "latency"]
  path = _record(tmp_path, "hsnn_table1", "two-tower", "gowalla", 0, metrics, steps_delta=1)
  assert ledger.load_record(path)["extras"] == {}  # another config: its extras are not this one's


def test_import_command_refuses_another_config_naming_the_fields(tmp_path):
  bad = _workdir(tmp_path, "tiger_protocol", "two-tower", "beauty", 1, {"recall@5": 0.1,
                                                                       "recall@10": 0.2},
                 steps_delta=5)
  cmd = [sys.executable, "-m", "experiments.reproduce", "--table=tiger_protocol",
         f"--import_run=beauty:two-tower:1:{bad}", f"--ledger_dir={tmp_path / 'ledger'}",
         f"--out={tmp_path / 'out'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert "differing fields (run -> row): train.num_steps:" in proc.stderr
  assert not (tmp_path / "ledger").exists() and not (tmp_path / "out").exists()


def test_notrain_command_writes_what_the_consistency_check_expects(tmp_path):
  ledger_dir, out = tmp_path / "runs", tmp_path / "out"
  for seed, r in ((0, 0.05), (2, 0.07)):
    _record(ledger_dir, "tiger_protocol", "two-tower", "beauty", seed,
            {"recall@5": r, "recall@10": 2 * r, "ndcg@5": r / 2, "ndcg@10": r})
  cmd = [sys.executable, "-m", "experiments.reproduce", "--table=tiger_protocol", "--notrain",
         f"--ledger_dir={ledger_dir}", f"--out={out}", f"--runs_dir={tmp_path / 'train'}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not (tmp_path / "train").exists()
  committed = json.loads((out / "tiger_protocol.json").read_text())
  assert committed["seeds"] == [0, 1, 2] and committed["cells"][0]["seeds"] == [0, 2]
  check_table_matches_records("tiger_protocol", str(out), str(ledger_dir))
  assert (out / "tiger_protocol.png").read_bytes()[:4] == b"\x89PNG"
  # A record changed after the table was written: the check catches the drift.
  _record(ledger_dir, "tiger_protocol", "two-tower", "beauty", 1,
          {"recall@5": 0.5, "recall@10": 0.5, "ndcg@5": 0.5, "ndcg@10": 0.5})
  with pytest.raises(AssertionError, match="tiger_protocol.json differs from its records"):
    check_table_matches_records("tiger_protocol", str(out), str(ledger_dir))
