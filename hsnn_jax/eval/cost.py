"""What a retrieval call costs and loses: work counts, FLOPs, exactness, recall, time, memory.

Every number is per query unless named otherwise.
  items scored / stage pairs scored: means of a `RetrievalResult`'s counts;
  model FLOPs: once-per-query user towers (each distinct one once) + pairs scored at every stage
    times that stage scorer's `flops_per_pair` (item reprs are cached, so `flops_per_item` is not
    a serving cost);
  exactness@K: the fraction of the same model's exhaustive top-K (its non-padding entries) that
    the method returns, averaged over queries (METHOD.md §4);
  recall@K: against held-out truth, the metrics module's definition;
  latency: wall time of each call after one warm-up call (compilation), every call ended by
    `block_until_ready`; p50/p99 over calls, qps = queries / total time;
  peak memory: the accelerator's peak_bytes_in_use when the backend reports it, else the peak
    resident set size above the starting one, sampled every millisecond from /proc (Linux), else
    the growth of ru_maxrss (which only moves when the process sets a new high-water mark);
  numerics platform: what decides the floating-point rounding of a run (`numerics_platform`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import threading
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.eval.metrics import ranking_metrics
from hsnn_jax.retrieval.topk import hit_matrix
from hsnn_jax.models.scorer import Scorer
from hsnn_jax.retrieval.beam_search import RetrievalResult


def exactness_at_k(ids: np.ndarray, reference_ids: np.ndarray) -> float:
  """Mean over queries of |returned ∩ reference| / |reference|.

  Args:
    ids: [U, K'] returned item ids, -1 padded.
    reference_ids: [U, K] the same model's exhaustive top-K, -1 padded (queries whose reference
      is all padding are left out).
  """
  found = np.asarray(hit_matrix(jnp.asarray(reference_ids), jnp.asarray(ids)))
  size = (np.asarray(reference_ids) >= 0).sum(axis=1)
  keep = size > 0
  return float(np.mean(found.sum(axis=1)[keep] / size[keep])) if keep.any() else float("nan")


def recall_at_k(ids: np.ndarray, truth: np.ndarray, k: int) -> float:
  """Recall@k of returned ids [U, >= k] against held-out truth [U, T] (-1 padded)."""
  return float(ranking_metrics(jnp.asarray(ids), jnp.asarray(truth), (k,))[f"recall@{k}"])


def model_flops_per_query(result: RetrievalResult, stage_scorers: Sequence[Scorer],
                          item_scorer: Scorer) -> float:
  """Mean model FLOPs per query of one retrieval call (module docstring)."""
  stage_scored = np.asarray(result.stage_scored, np.float64)
  if stage_scored.shape[1] != len(stage_scorers):
    raise ValueError(f"{stage_scored.shape[1]} stages counted, {len(stage_scorers)} scorers given")
  towers = []
  for s in list(stage_scorers) + [item_scorer]:
    if not any(s.encode_users is t.encode_users for t in towers):
      towers.append(s)
  per_pair = np.array([s.flops_per_pair for s in stage_scorers], np.float64)
  pairs = stage_scored @ per_pair + np.asarray(result.items_scored, np.float64) * item_scorer.flops_per_pair
  return float(sum(t.flops_per_query for t in towers) + pairs.mean())


@dataclasses.dataclass(frozen=True)
class Latency:
  """p50_ms / p99_ms per call, qps over all calls, and the raw per-call times in ms."""

  p50_ms: float
  p99_ms: float
  qps: float
  call_ms: Tuple[float, ...]


def measure_latency(fn: Callable[..., Any], calls: Sequence[Tuple], queries_per_call: int,
                    warmup: bool = True) -> Latency:
  """Times fn(*args) for each args in `calls`, after one untimed fn(*calls[0]) when `warmup`."""
  if warmup:
    jax.block_until_ready(fn(*calls[0]))
  times = []
  for args in calls:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  ms = np.asarray(times) * 1e3
  return Latency(p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                 qps=len(calls) * queries_per_call / float(np.sum(times)),
                 call_ms=tuple(float(t) for t in ms))


def _device_peak_bytes() -> Optional[int]:
  stats = jax.devices()[0].memory_stats()
  return None if not stats or "peak_bytes_in_use" not in stats else int(stats["peak_bytes_in_use"])


def _rss_bytes() -> Optional[int]:
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * resource.getpagesize()
  except OSError:
    return None


class PeakMemory:
  """Context manager: `.mb` is the peak memory the block used (module docstring, last item).

  On the accelerator this is the peak since the process started, not since the block: read it
  around the first large call, or compare against `baseline_mb`.
  """

  def __init__(self, interval_s: float = 0.001):
    self.interval_s = interval_s
    self.mb = float("nan")
    self.source = ""

  def __enter__(self) -> "PeakMemory":
    self._device = _device_peak_bytes()
    self._start_rss = _rss_bytes()
    self._start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    self._peak = self._start_rss or 0
    self._stop = threading.Event()
    if self._device is None and self._start_rss is not None:
      self._thread = threading.Thread(target=self._sample, daemon=True)
      self._thread.start()
    return self

  def _sample(self) -> None:
    while not self._stop.is_set():
      self._peak = max(self._peak, _rss_bytes() or 0)
      time.sleep(self.interval_s)

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._device is not None:
      self.mb, self.source = _device_peak_bytes() / 2**20, "device peak_bytes_in_use"
    elif self._start_rss is not None:
      self._thread.join()
      self._peak = max(self._peak, _rss_bytes() or 0)
      self.mb, self.source = (self._peak - self._start_rss) / 2**20, "sampled RSS above start"
    else:
      grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._start_maxrss
      self.mb, self.source = grown_kb / 1024, "ru_maxrss growth"


def timed(fn: Callable[..., Any], *args, **kwargs) -> Tuple[Any, float]:
  """(fn(*args, **kwargs) with every array ready, wall seconds): for index build times."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args, **kwargs))
  return out, time.perf_counter() - start


def _cpu_model_and_isa() -> Tuple[str, list]:
  """(CPU model name, the vector extensions among avx, fma, avx2, avx512f it has), from Linux's
  /proc/cpuinfo; ('', []) elsewhere."""
  try:
    with open("/proc/cpuinfo") as fh:
      info = fh.read()
  except OSError:
    return platform.processor(), []
  field = lambda name: next((l.split(":", 1)[1].strip() for l in info.splitlines()
                             if l.startswith(name)), "")
  flags = set(field("flags").split())
  return field("model name"), [f for f in ("avx", "fma", "avx2", "avx512f") if f in flags]


def numerics_platform() -> dict:
  """What a run's floating-point results depend on besides the code and the seed: XLA compiles
  for the host's vector extensions and splits work over its cores, NumPy's BLAS picks kernels by
  CPU model. Same values here, same bits; any other, other roundings (which training and k-means
  amplify, so indexes and the figures measured on them move)."""
  cpu, isa = _cpu_model_and_isa()
  blas = {}
  try:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # NumPy >= 1.26
  except Exception:  # pylint: disable=broad-except
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"cpu": cpu, "vector_isa": isa, "cores": cores, "backend": jax.default_backend(),
          "jax": jax.__version__, "numpy": np.__version__,
          "blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
