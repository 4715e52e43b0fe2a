"""Top-k selection cost side by side: scoring alone, `lax.top_k`, `fast_top_k`.

  python -m experiments.benchmark_topk --batch=256 --num_items=1000000 --k=100

Two score matrices: i.i.d. normal, and dot products of clustered embeddings with items sorted
by cluster (the high scores of a user crowd into a few chunks, as in a real corpus laid out by
an index). Each variant is jitted once, then all run in turn `--repeats` times (interleaved, so
load from other processes hits them alike); medians are printed with ratios and an exactness
check of `fast_top_k` against `lax.top_k` (values equal; index sets equal where values do not
tie). Prints the devices it ran on.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.retrieval.topk import auto_chunk_size, chunked_top_k, fast_top_k

_BATCH = flags.DEFINE_integer("batch", 256, "Queries per call.")
_NUM_ITEMS = flags.DEFINE_integer("num_items", 1_000_000, "Corpus size N.")
_K = flags.DEFINE_integer("k", 100, "Results per query.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding width for the scoring runs.")
_CLUSTERS = flags.DEFINE_integer("clusters", 1000, "Clusters of the structured corpus.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per variant.")
_CHUNK = flags.DEFINE_integer("chunk_size", 0, "fast_top_k chunk size; 0 = auto.")


def embeddings(key, batch, num_items, dim, clusters, structured):
  """Users [B, D] and items [N, D] float32; structured ones share cluster centres."""
  ku, ki, kc, ka = jax.random.split(key, 4)
  if not structured:
    return (jax.random.normal(ku, (batch, dim)) / np.sqrt(dim),
            jax.random.normal(ki, (num_items, dim)))
  centres = jax.random.normal(kc, (clusters, dim))
  item_cluster = jnp.arange(num_items) * clusters // num_items  # sorted by cluster
  items = centres[item_cluster] + 0.5 * jax.random.normal(ki, (num_items, dim))
  users = centres[jax.random.randint(ka, (batch,), 0, clusters)]
  return users + 0.5 * jax.random.normal(ku, (batch, dim)), items


def timed(fns, args, repeats):
  """Median seconds per call of each jitted fn(*args), interleaved across fns."""
  for f in fns.values():
    jax.block_until_ready(f(*args))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, f in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(f(*args))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def exactness(scores, k, chunk):
  """(values equal on every row, rows whose index sets differ without a tie at the k-th value)."""
  ref_v, ref_i = map(np.asarray, chunked_top_k(scores, k))
  got_v, got_i = map(np.asarray, fast_top_k(scores, k, chunk))
  tie = (np.asarray(scores) == ref_v[:, -1:]).sum(axis=1) > 1
  differ = np.array([set(a) != set(b) for a, b in zip(ref_i, got_i)])
  return bool(np.array_equal(ref_v, got_v)), int((differ & ~tie).sum())


def main(argv):
  del argv
  b, n, k = _BATCH.value, _NUM_ITEMS.value, _K.value
  chunk = _CHUNK.value or None
  print(f"devices: {jax.devices()}  backend: {jax.default_backend()}  jax {jax.__version__}")
  print(f"B={b} N={n} k={k} D={_DIM.value} chunk_size={chunk or auto_chunk_size(n, k)}"
        f" repeats={_REPEATS.value} (median seconds)")
  score = lambda u, v: u @ v.T
  fns = {
      "score only": jax.jit(score),
      "score + lax.top_k": jax.jit(lambda u, v: chunked_top_k(score(u, v), k)),
      "score + fast_top_k": jax.jit(lambda u, v: fast_top_k(score(u, v), k, chunk)),
  }
  select = {
      "lax.top_k": jax.jit(lambda s: chunked_top_k(s, k)),
      "fast_top_k": jax.jit(lambda s: fast_top_k(s, k, chunk)),
  }
  for structured in (False, True):
    users, items = embeddings(jax.random.PRNGKey(0), b, n, _DIM.value, _CLUSTERS.value,
                              structured)
    scores = jax.jit(score)(users, items)
    t_sel = timed(select, (scores,), _REPEATS.value)
    t_end = timed(fns, (users, items), _REPEATS.value)
    same_values, bad_rows = exactness(scores, k, chunk)
    print(f"\n{'structured' if structured else 'random normal'} scores:"
          f" values exact={same_values}, rows with a wrong untied index set={bad_rows}")
    for name, t in {**t_sel, **t_end}.items():
      print(f"  {name:22s} {t * 1e3:9.1f} ms")
    print(f"  selection speed-up, lax.top_k / fast_top_k: "
          f"{t_sel['lax.top_k'] / t_sel['fast_top_k']:.2f}x")
    base = t_end["score only"]
    print(f"  end to end over scoring alone: lax {t_end['score + lax.top_k'] / base:.2f}x, "
          f"fast {t_end['score + fast_top_k'] / base:.2f}x")
    del scores


if __name__ == "__main__":
  app.run(main)
