"""The retrieval benchmark script: matched-exactness selection, and an end-to-end dot-suite run."""

import json
import os
import subprocess
import sys

import pytest

from experiments import benchmark_retrieval as br

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(out, config, *overrides, timeout=900) -> subprocess.CompletedProcess:
  """python -m experiments.benchmark_retrieval with a config file and --config.* overrides."""
  cmd = [sys.executable, "-m", "experiments.benchmark_retrieval",
         f"--config=experiments/configs/{config}", f"--out={out}", *overrides]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _row(method, setting, exactness, p50):
  return {"scorer": "dot", "method": method, "setting": setting, "exactness@100": exactness,
          "items_scored_frac": 0.01, "p50_ms": p50, "latency_ratio_vs_exhaustive": p50 / 100}


def test_matched_exactness_picks_the_fastest_setting_reaching_each_target():
  rows = [_row("beam", "a", 0.93, 5.0), _row("beam", "b", 0.99, 9.0), _row("beam", "c", 0.995, 7.0),
          _row("ivf", "x", 0.80, 1.0), _row("ivf", "y", 0.96, 3.0)]
  got = {(m["method"], m["target"]): m for m in br.matched_exactness(rows, 100, (0.9, 0.95, 0.99))}
  assert got[("beam", 0.9)]["setting"] == "a"
  assert got[("beam", 0.95)]["setting"] == "c"  # 'b' reaches it too, but is slower
  assert got[("beam", 0.99)]["setting"] == "c"
  assert got[("ivf", 0.95)]["setting"] == "y"
  missed = got[("ivf", 0.99)]
  assert missed["setting"] is None and missed["exactness@100"] == 0.96
  assert "not reached (best 0.9600)" in br.format_matched(list(got.values()), 100)


def test_benchmark_dot_suite_end_to_end(tmp_path):
  out = tmp_path / "bench.json"
  proc = run_benchmark(out, "bench_synthetic_100k.py", "--config.corpus=synthetic_tiny",
                       "--config.suites=('dot',)", "--config.num_queries=64",
                       "--config.index.dot_nodes_per_level=(8,8)", "--config.peers.nlist=16",
                       "--config.peers.scann_leaves=16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  keys = {"method", "setting", "corpus", "scorer", "exactness@100", "recall@100",
          "items_scored_frac", "qps", "p50_ms", "p99_ms", "peak_mem_mb", "build_s",
          "latency_ratio_vs_exhaustive"}
  assert all(keys <= set(r) for r in rows)
  exhaustive = [r for r in rows if r["method"] == "exhaustive"]
  assert len(exhaustive) == 1 and exhaustive[0]["exactness@100"] == 1.0
  beams = [r for r in rows if r["method"] == "beam_search"]
  assert len(beams) == 5 and all(0 < r["items_scored_frac"] <= 1 for r in beams)
  matched = json.loads((tmp_path / "bench.matched.json").read_text())
  assert {m["target"] for m in matched} == {0.9, 0.95, 0.99}
  assert (tmp_path / "bench.png").stat().st_size > 0
  assert "At matched exactness@100" in proc.stdout


@pytest.mark.slow
def test_benchmark_monn_suite_end_to_end(tmp_path):
  out = tmp_path / "bench.json"
  proc = run_benchmark(out, "bench_synthetic_100k.py", "--config.corpus=synthetic_tiny",
                       "--config.suites=('monn',)", "--config.num_queries=64",
                       "--config.monn_queries=32", "--config.monn.steps=20",
                       "--config.index.monn_index_shapes=((4,4,4),)",
                       "--config.index.calibration_users=32",
                       "--config.monn_sweep=('2,4,8:200','4,16,64:0')",
                       "--config.two_stage_k_primes=(200,)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  beams = [r for r in rows if r["method"] == "beam_search"]
  assert [r["setting"].split()[0] for r in beams] == (
      ["nearest:1"] * 2 + ["mean_score:2"] * 2 + ["mean_score:4"] * 2)
  for r in beams:
    assert r["items_scored_frac"] <= 1 and r["node_evals_frac"] > 0
    if "64" in r["setting"]:  # beams cover every node: exact whatever the node scores
      assert r["exactness@100"] == 1.0
  # Four members per node cost about twice the node evaluations of two.
  two, four = (next(r for r in beams if r["setting"].startswith(p)) for p in ("mean_score:2", "mean_score:4"))
  assert 1.5 < four["node_evals_frac"] / two["node_evals_frac"] <= 2.0


def test_benchmark_refuses_a_bad_node_scoring_entry_before_compute(tmp_path):
  proc = run_benchmark(tmp_path / "b.json", "bench_synthetic_1m.py",
                       "--config.index.monn_node_scoring=('nearest:3',)", timeout=120)
  assert proc.returncode != 0 and "one member per node" in proc.stderr
  assert "corpus synthetic_1m" not in proc.stdout  # refused before the corpus was built


def test_beam_settings_take_an_item_budget_or_a_cap_per_stage():
  assert br.beam_settings(["4,8:100", "4,8", "4,8:16,100"]) == [
      ((4, 8), (0, 100)), ((4, 8), (0, 0)), ((4, 8), (16, 100))]
  with pytest.raises(ValueError, match="one cap per level"):
    br.beam_settings(["4,8,16:1,2"])
