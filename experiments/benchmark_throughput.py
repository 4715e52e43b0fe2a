"""Training throughput (examples/sec) and the fraction of hardware peak it reaches.

  python -m experiments.benchmark_throughput
  python -m experiments.benchmark_throughput --configs=experiments/configs/tiny.py \
      --batch_size=1024 --steps=50 --mesh_data=1
  python -m experiments.benchmark_throughput --steps=5 --repeats=2 --configs=\
experiments/configs/beauty_monn_small.py,experiments/configs/beauty_hsnn.py
  python -m experiments.benchmark_throughput --configs=experiments/configs/beauty_hsnn.py:accelerator \
      --set="model.level_scoring='nodes'" --eval_users=0

For each config (default: the tiny two-tower and, when the HSNN task builds, the tiny HSNN) the
real training step of hsnn_jax/train/trainer.py runs with the data resident on device (batches
are sampled inside the jitted step): `--steps` steps per call, `--repeats` timed calls, median.

Work per step is XLA's own count, `compiled.cost_analysis()` of the one-step program (FLOPs and
bytes accessed; for a partitioned program these are per device, so multiplied by the mesh size).
Peak: there is no datasheet number for a shared CPU, so the reference is measured here, a large
float32 matmul's FLOP/s and a large elementwise pass's bytes/s on one device, and the fractions are
of those. XLA's bytes accessed counts every operand read and result written, cache-resident or
not, so its rate can exceed the DRAM-bound reference: read it as traffic, not as a bound.
With --eval_users > 0 it also times full-corpus ranking of that many users with the task's own
scorer and projects the whole run: steps, validations and the final test evaluation.
Prints the command and the hardware.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from hsnn_jax.data import cache
from hsnn_jax.eval import evaluate as evaluation
from hsnn_jax.train import trainer
from hsnn_jax.train.sampler import user_batch_for_eval

_CONFIGS = flags.DEFINE_list("configs", ["experiments/configs/tiny.py",
                                         "experiments/configs/tiny_hsnn.py"],
                             "Config files to measure; one that fails to build is skipped.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Override train.batch_size (0: the config's).")
_SET = flags.DEFINE_list("set", [], "Config overrides applied to every config, dotted=value "
                         "(Python literals), e.g. model.level_scoring='pairs'.")
_STEPS = flags.DEFINE_integer("steps", 20, "Training steps per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls; the median is reported.")
_MESH_DATA = flags.DEFINE_integer("mesh_data", 1, "mesh.data (0: every device).")
_MESH_MODEL = flags.DEFINE_integer("mesh_model", 1, "mesh.model.")
_CACHE = flags.DEFINE_string("cache_dir", "./cache", "Prepared-dataset cache.")
_MATMUL = flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n reference matmul.")
_EVAL_USERS = flags.DEFINE_integer("eval_users", 512, "Users ranked against the full corpus to "
                                   "time evaluation (0: no evaluation timing or projection).")


def load_config(path: str):
  """'file.py' or 'file.py:arg' (get_config(arg), as --config of experiments.train)."""
  path, _, arg = path.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def median_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def reference_peaks(n: int, repeats: int) -> tuple[float, float]:
  """(FLOP/s of an n^3 float32 matmul, bytes/s of a sum over 128 MiB) on one device.

  The sum only reads (a fresh output buffer per call would measure page faults instead).
  """
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  flops = 2.0 * n ** 3 / median_seconds(lambda: matmul(a, a), repeats)
  x = jnp.ones((32 << 20,), jnp.float32)
  total = jax.jit(jnp.sum)
  return flops, x.nbytes / median_seconds(lambda: total(x), repeats)


def step_cost(chunk, state, data, devices: int) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of one training step, summed over the mesh's devices.

  XLA's cost analysis counts a while loop's body once whatever its trip count (checked: the
  same numbers for 1, 2 and 5 steps), so the one-step chunk is the per-step cost.
  """
  cost = chunk.lower(state, data, 1).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return devices * float(cost.get("flops", 0.0)), devices * float(cost.get("bytes accessed", 0.0))


def measure(path: str, peaks: tuple[float, float]) -> None:
  cfg = load_config(path)
  cfg.cache_dir, cfg.progress_bar = _CACHE.value, False
  cfg.mesh.data, cfg.mesh.model = _MESH_DATA.value, _MESH_MODEL.value
  if _BATCH.value:
    cfg.train.batch_size = _BATCH.value
  for item in _SET.value:
    dotted, _, value = item.partition("=")
    *parents, name = dotted.split(".")
    node = cfg
    for parent in parents:
      node = node[parent]
    node[name] = ast.literal_eval(value)
  try:
    setup = trainer.build_training(cfg)
  except cache.CacheError as err:  # a damaged cache is the user's to fix, not a skip
    raise SystemExit(f"error: {err}") from None
  except Exception as err:  # pylint: disable=broad-except
    print(f"{path}: skipped, the task does not build here ({type(err).__name__}: {err})")
    return
  chunk = setup.train_chunk(cfg)
  devices = setup.mesh.size
  flops, nbytes = step_cost(chunk, setup.state, setup.data, devices)
  holder = {"state": setup.state}

  def run():
    holder["state"], metrics = chunk(holder["state"], setup.data, _STEPS.value)
    return metrics

  seconds = median_seconds(run, _REPEATS.value) / _STEPS.value
  b = cfg.train.batch_size
  print(f"{path} {' '.join(_SET.value)}: model.kind={cfg.model.kind}, dataset={cfg.dataset}, "
        f"batch {b}, "
        f"negatives {cfg.train.num_negatives}, mesh data={setup.mesh.shape['data']} x "
        f"model={setup.mesh.shape['model']}")
  print(f"  {b / seconds:12,.0f} examples/sec   ({1 / seconds:,.1f} steps/sec, "
        f"{seconds * 1e3:.2f} ms/step)")
  print(f"  {flops / 1e6:12,.1f} MFLOP/step  -> {flops / seconds / 1e9:8.2f} GFLOP/s = "
        f"{100 * flops / seconds / peaks[0]:5.1f}% of the matmul reference")
  print(f"  {nbytes / 1e6:12,.1f} MB/step     -> {nbytes / seconds / 1e9:8.2f} GB/s    = "
        f"{100 * nbytes / seconds / peaks[1]:5.1f}% of the read-bandwidth reference")
  print(f"  arithmetic intensity {flops / max(nbytes, 1):.2f} FLOP/byte (XLA's count; the "
        f"reference machine balance is {peaks[0] / peaks[1]:.1f})")
  if _EVAL_USERS.value:
    project_run(cfg, setup, holder["state"], seconds)


def project_run(cfg, setup, state, step_seconds: float) -> None:
  """Times full-corpus ranking of `--eval_users` users (the task's own scorer, built once and
  compiled by a first call) and projects the run: steps, the validations (eval.valid_users each,
  or every validation user) and the final evaluation of every test user. Compilation, index
  events (k-means builds, code refreshes) and beam search are not included."""
  ds, t = setup.ds, cfg.train
  split = "valid" if ds.valid.nnz else "test"
  scorer = setup.task.scorer(state.params, state.aux)  # built once: one compilation
  make_users = user_batch_for_eval(ds, setup.task.history_len, include_valid=split == "test")
  timed = lambda users: evaluation.evaluate(
      scorer, ds, split, tuple(cfg.eval.ks), make_user_batch=make_users,
      exclude_train=cfg.eval.exclude_train, user_chunk=cfg.eval.user_chunk,
      item_chunk=cfg.eval.item_chunk, max_users=users, seed=cfg.seed)
  timed(min(cfg.eval.user_chunk, _EVAL_USERS.value))  # compile
  start = time.perf_counter()
  result = timed(_EVAL_USERS.value)
  per_user = (time.perf_counter() - start) / len(result.users)
  test_users = int((ds.test.lengths() > 0).sum())
  valid_users = int((ds.valid.lengths() > 0).sum())
  if cfg.eval.valid_users:
    valid_users = min(valid_users, cfg.eval.valid_users)
  validations = sum(s >= t.eval_start for s in range(t.eval_every, t.num_steps + 1,
                                                      t.eval_every)) if (
      t.eval_every and ds.valid.nnz) else 0
  train_s, valid_s = t.num_steps * step_seconds, validations * valid_users * per_user
  test_s = test_users * per_user
  print(f"  evaluation: {per_user * 1e3:.2f} ms per user over {ds.num_items:,} items; projected "
        f"run {(train_s + valid_s + test_s) / 60:.1f} min = train {train_s / 60:.1f} "
        f"({t.num_steps:,} steps) + {validations} validations {valid_s / 60:.1f} "
        f"({valid_users:,} users) + final test {test_s / 60:.1f} ({test_users:,} users)")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  print("command: python -m experiments.benchmark_throughput " + " ".join(sys.argv[1:]))
  print(f"hardware: {trainer.hardware_description()}")
  peaks = reference_peaks(_MATMUL.value, _REPEATS.value)
  print(f"reference peak (measured here): {peaks[0] / 1e9:.1f} GFLOP/s float32 matmul "
        f"{_MATMUL.value}^3; {peaks[1] / 1e9:.1f} GB/s reading 128 MiB (sum)")
  for path in _CONFIGS.value:
    measure(path, peaks)


if __name__ == "__main__":
  app.run(main)
