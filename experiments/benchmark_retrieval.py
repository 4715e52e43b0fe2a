"""Retrieval cost on the planted synthetic corpus (docs/BENCHMARKS.md §E).

  python -m experiments.benchmark_retrieval --config=experiments/configs/bench_synthetic_1m.py \
      --out=runs/bench_1m.json

Two scorers over one corpus, each against its own exhaustive top-K on the same queries:
  dot:   the planted dot-product model (user and item vectors from the generator; no training).
         Methods: exhaustive, beam search (index levels scored per config.dot_node_scoring:
         representative items or node embeddings), and the FAISS / ScaNN peers on the same
         vectors when importable. Index: residual k-means on the planted item vectors.
  monn:  a MoNN (config.monn.preset) with the planted category path of each item as its I2IF
         keys, its user and item id embeddings optionally warm-started from the planted vectors
         (config.monn.init_from_planted), trained config.monn.steps steps of sampled softmax on
         the training interactions. Methods: exhaustive (on the first config.monn_queries
         queries only: it is the slow reference), beam search (every index level scored by the
         same MoNN, once per config.index.monn_node_scoring entry 'rule:R': a node scores as the
         max over R member items, chosen as the ones nearest the node embedding ('nearest', R = 1
         is HSNN's representative item) or of highest mean MoNN score over
         config.index.calibration_users training users that are not queries ('mean_score')),
         and the two-stage baseline (planted dot-product top-k', then MoNN rescoring). Index:
         residual k-means on an embedding of the MoNN's own item side
         (config.index.monn_embedding, see `monn_index_embedding`).
Indexes are residual k-means, published (`kmeans_index`); `build_s` includes k-means, publishing
and encoding the representatives.

Queries: a fixed random sample of users with a test item; each user's train and valid items are
excluded; recall@K is against the held-out test item. Every method runs the same query batches
of config.query_batch users; latency is per batch, after one warm-up call.

Output: a JSON list, one row per (method, setting, corpus, scorer), with
  exactness@K                  share of the same scorer's exhaustive top-K returned
  recall@K                     against the held-out test item
  items_scored_frac            items scored by the item-level model per query / corpus size
  node_evals_frac              model evaluations spent on index nodes per query / corpus size
                               (nodes scored x members per node; beam search only, else 0)
  qps, p50_ms, p99_ms          per batch of query_batch queries
  peak_mem_mb                  peak RSS (or device memory) above the start of the timed calls
  build_s                      what the method needs beyond the shared item reprs: index
                               k-means + publish + node reprs, a peer's index, the two-stage
                               prefilter corpus; 0 for exhaustive
  latency_ratio_vs_exhaustive  this p50 / the same scorer's exhaustive p50 (0.05 = 20x faster)
and a PNG of exactness against items_scored_frac next to it. A plain table goes to stdout, then
the matched-exactness comparison (`matched_exactness`): for each scorer, method and target in
config.matched_exactness, the fastest setting of that run whose exactness@K reaches the target,
also written to FILE.matched.json.

Reproducibility: nothing here draws without a seed, so the same command on the same machine
gives the same index and the same exactness, bit for bit (tests/test_determinism.py); only the
timings move. Another machine may not: XLA compiles for the host's vector extensions and splits
work over its cores, and NumPy's BLAS (the warm start's SVD) picks kernels by CPU model; the MoNN's
300 training steps amplify the different roundings, and k-means turns them into another index.
On the 100K corpus (30 steps) capping XLA at AVX, forcing OpenBLAS's Sandybridge kernels or
running on 1 core instead of 2 each changed the 64x32x8 index from 872 / 2,268 nodes at levels
1 / 2 to 965 / 2,013, 948 / 2,461 and 1,024 / 2,151. What decides it is printed at the start and
written to FILE.platform.json (`cost.numerics_platform`); compare figures only between runs
whose platforms match.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import optax

from hsnn_jax.data import synthetic
from hsnn_jax.data.types import concat_rows
from hsnn_jax.index.kmeans import kmeans_index
from hsnn_jax.index.publish import top_members
from hsnn_jax.models import monn as monn_lib
from hsnn_jax.models.scorer import Scorer, UserBatch
from hsnn_jax.retrieval import beam_search as bs
from hsnn_jax.eval import cost
from hsnn_jax.retrieval import peers
from hsnn_jax.retrieval.exhaustive import encode_corpus, exhaustive_top_k, mean_item_scores
from hsnn_jax.retrieval.two_stage import TwoStage
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import DeviceInteractions, right_aligned, sample_batch
from hsnn_jax.train.writer import write_json_atomic

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config file.")
_OUT = flags.DEFINE_string("out", None, "Output JSON path (the plot goes next to it).")
flags.mark_flags_as_required(["config", "out"])


class Queries:
  """B-sized query batches of one fixed user sample: users, exclusions, truth, MoNN histories."""

  def __init__(self, corpus: synthetic.SyntheticCorpus, num: int, batch: int, history_len: int,
               seed: int):
    ds = corpus.dataset
    candidates = np.flatnonzero(ds.test.lengths() > 0)
    rng = np.random.default_rng(seed)
    self.users = np.sort(rng.choice(candidates, num - num % batch, replace=False)).astype(np.int32)
    known = concat_rows([ds.train, ds.valid], self.users)
    self.exclude, _ = known.to_padded()
    self.history = right_aligned(known, history_len)
    self.truth, _ = concat_rows([ds.test], self.users).to_padded()
    self.batch = batch

  def batches(self, limit: int = 0):
    """[(UserBatch, exclude [B, E]) per batch], the first `limit` queries (0: all)."""
    stop = min(limit or len(self.users), len(self.users))
    out = []
    for start in range(0, stop - stop % self.batch, self.batch):
      rows = slice(start, start + self.batch)
      users = UserBatch(user=jnp.asarray(self.users[rows]), history=jnp.asarray(self.history[rows]),
                        features=jnp.zeros((self.batch, 0), jnp.int32))
      out.append((users, jnp.asarray(self.exclude[rows])))
    return out


def calibration_batches(corpus: synthetic.SyntheticCorpus, queries: Queries, num: int,
                        history_len: int, seed: int) -> List[UserBatch]:
  """UserBatches of `num` training users that are not queries (index build time only)."""
  others = np.setdiff1d(np.arange(corpus.config.num_users), queries.users)
  users = np.sort(np.random.default_rng(seed + 1).choice(others, num, replace=False)).astype(np.int32)
  ds = corpus.dataset
  history = right_aligned(concat_rows([ds.train, ds.valid], users), history_len)
  rows = [slice(i, i + queries.batch) for i in range(0, num - num % queries.batch, queries.batch)]
  return [UserBatch(user=jnp.asarray(users[r]), history=jnp.asarray(history[r]),
                    features=jnp.zeros((r.stop - r.start, 0), jnp.int32)) for r in rows]


def node_scoring_specs(entries) -> List[tuple]:
  """Config entries 'rule:R' -> [(rule, R)], rule 'nearest' or 'mean_score'."""
  out = []
  for entry in entries:
    rule, _, count = entry.partition(":")
    if rule not in ("nearest", "mean_score") or not count.isdigit() or int(count) < 1:
      raise ValueError(f"index.monn_node_scoring entry {entry!r}: expected 'nearest:1' or "
                       f"'mean_score:R' with R >= 1")
    if rule == "nearest" and int(count) != 1:
      raise ValueError(f"{entry!r}: 'nearest' has one member per node (the representative)")
    out.append((rule, int(count)))
  return out


def planted_scorer(corpus: synthetic.SyntheticCorpus) -> Scorer:
  """The generator's dot-product model: user vectors [U, d] . item vectors [V, d]."""
  users = jnp.asarray(corpus.user_vectors())
  items = jnp.asarray(corpus.item_vectors())
  dim = int(items.shape[1])
  return Scorer(encode_users=lambda ub: users[ub.user], encode_items=lambda ids: items[ids],
                score=lambda u, v: u @ v.T, flops_per_pair=2 * dim, name="planted_dot")


def planted_keys(corpus: synthetic.SyntheticCorpus) -> tuple[np.ndarray, int]:
  """Each item's planted category path as I2IF keys: [V, depth] int32 (level offsets added)."""
  paths = corpus.dataset.item_tree_paths
  sizes = np.cumprod(corpus.config.branching)
  offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  return (paths + offsets).astype(np.int32), int(sizes.sum())


def planted_warm_start(params, corpus: synthetic.SyntheticCorpus):
  """Replaces the MoNN's user and item id embeddings [*, field_dim] by the planted vectors,
  centred (which shifts each user's scores by a constant) and projected on their top principal
  directions, scaled to the initialiser's spread. The towers still start random."""
  items, users = corpus.item_vectors(), corpus.user_vectors()
  items -= items.mean(axis=0)
  dim = params["item_embed"]["embedding"].shape[1]
  sample = items[np.random.default_rng(0).choice(items.shape[0], min(items.shape[0], 65536),
                                                 replace=False)]
  projection = np.linalg.svd(sample, full_matrices=False)[2][:dim].T  # [d_planted, <= dim]
  projection = np.pad(projection, ((0, 0), (0, dim - projection.shape[1])))
  scale = float(np.std(params["item_embed"]["embedding"])) / float(np.std(sample @ projection))
  params = jax.tree.map(lambda x: x, params)  # a copy whose dicts may be replaced
  params["item_embed"] = {"embedding": jnp.asarray(items @ projection * scale)}
  params["user_embed"] = {"embedding": jnp.asarray(users @ projection * scale)}
  return params


def train_monn(corpus: synthetic.SyntheticCorpus, mc, history_len: int, seed: int):
  """Sampled softmax (in-batch + uniform negatives, logQ-corrected) for mc.steps Adam steps.

  Returns (Scorer, trained params, a one-line description of how it was trained).
  """
  keys, num_keys = planted_keys(corpus)
  config = monn_lib.monn_preset(mc.preset)
  model = monn_lib.MoNN(config, item_keys=jnp.asarray(keys), num_keys=num_keys,
                        num_users=corpus.config.num_users)
  data = DeviceInteractions.from_dataset(corpus.dataset, history_len)
  key = jax.random.PRNGKey(seed)
  draw = lambda k: sample_batch(k, data, mc.batch_size, mc.num_negatives, "full")
  first = draw(key)
  params = model.init(jax.random.fold_in(key, 1), first.users, first.positives[:2])["params"]
  if mc.init_from_planted:
    params = planted_warm_start(params, corpus)
  tx = optax.adam(mc.learning_rate)
  opt_state = tx.init(params)

  def loss_fn(p, batch):
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    logits = model.apply({"params": p}, batch.users, candidates)[..., 0]
    logq = losses.logq_offsets(batch.positives, batch.negatives, data.item_logq, data.num_items)
    return losses.retrieval_loss(logits, batch.positives, candidates, kind="softmax", logq=logq)

  @jax.jit
  def step(p, state, k):
    value, grads = jax.value_and_grad(loss_fn)(p, draw(k))
    updates, state = tx.update(grads, state, p)
    return optax.apply_updates(p, updates), state, value

  start, history = time.perf_counter(), []
  for i in range(mc.steps):
    params, opt_state, value = step(params, opt_state, jax.random.fold_in(key, 100 + i))
    if i % max(1, mc.steps // 10) == 0 or i == mc.steps - 1:
      history.append(f"{i}:{float(value):.3f}")
  warm = "id embeddings warm-started from the planted vectors, then " if mc.init_from_planted else ""
  note = (f"{config.name}, I2IF keys = planted category path, {warm}trained {mc.steps} steps (batch {mc.batch_size}, "
          f"{mc.num_negatives} uniform negatives, lr {mc.learning_rate}) in "
          f"{time.perf_counter() - start:.0f}s; loss {' '.join(history)}")
  return monn_lib.make_scorer(model, params, history_len=history_len), params, note


def build_index(embeddings: np.ndarray, nodes_per_level: Sequence[int], iters: int, seed: int):
  """The SIL index (`kmeans_index`) and the seconds it took."""
  start = time.perf_counter()
  index = kmeans_index(jax.random.PRNGKey(seed), embeddings, nodes_per_level, iters)
  return index, time.perf_counter() - start


def monn_index_embedding(kind: str, params, item_reprs, corpus, key_weight: float) -> np.ndarray:
  """[V, d] embedding the MoNN index clusters, each part standardised.

  item_tower: the MoNN's item tower output;
  keys_tower: key_weight x the mean of the item's key (category) embeddings, next to the item
    tower output: k-means then splits categories first, whose items share I2IF features;
  planted: the generator's item vectors.
  """
  standardise = lambda x: (x - x.mean(axis=0)) / x.std()
  tower = np.asarray(item_reprs.tower)
  tower = standardise(tower.reshape(tower.shape[0], -1))
  if kind == "item_tower":
    return tower
  if kind == "keys_tower":
    keys, _ = planted_keys(corpus)
    categories = np.asarray(params["key_embed"]["embedding"])[keys].mean(axis=1)
    return np.concatenate([key_weight * standardise(categories), tower], axis=1)
  if kind == "planted":
    return corpus.item_vectors()
  raise ValueError(f"index.monn_embedding must be item_tower, keys_tower or planted, got {kind!r}")


class Bench:
  """Runs methods on query batches and collects rows against each scorer's exhaustive run."""

  def __init__(self, cfg, corpus_name: str, queries: Queries, out: str):
    """out: the JSON file of rows, rewritten after every row so that a crash keeps them."""
    self.cfg, self.corpus_name, self.queries, self.out = cfg, corpus_name, queries, out
    self.rows: List[Dict] = []
    self.reference: Dict[str, np.ndarray] = {}
    self.exhaustive_p50: Dict[str, float] = {}

  def run(self, method: str, setting: str, scorer_name: str, search: Callable, batches,
          num_items: int, build_s: float, flops: Callable = None, scans_all: bool = True,
          members_per_node: Sequence[int] = ()):
    """search(users, exclude) -> RetrievalResult or (scores, ids); timed on every batch.

    members_per_node: per index level, model evaluations per node scored (beam search).
    flops: optional result -> model FLOPs per query, for the printed table.
    scans_all: for (scores, ids) results, whether every item is scored (else the fraction is
      unknown and written as null: HNSW, IVF and ScaNN do not report what they scored).
    """
    jax.block_until_ready(search(*batches[0]))  # compile outside the memory and time windows
    results = []

    def call(users, exclude):
      results.append(search(users, exclude))
      return results[-1]

    with cost.PeakMemory() as memory:
      latency = cost.measure_latency(call, batches, self.queries.batch, warmup=False)
    hierarchical = isinstance(results[0], bs.RetrievalResult)
    ids = np.concatenate([np.asarray(r.ids if hierarchical else r[1]) for r in results])
    if hierarchical:
      scored = float(np.mean(np.concatenate([np.asarray(r.items_scored) for r in results])))
      scored_frac = scored / num_items
      stage = np.concatenate([np.asarray(r.stage_scored) for r in results])
      # Index nodes only: two-stage's stage is its cheap prefilter, not the model.
      node_frac = (float(np.mean(stage @ np.asarray(members_per_node, np.float64))) / num_items
                   if members_per_node else 0.0)
    else:
      scored_frac, node_frac = (1.0 if scans_all else None), 0.0
    mflops = np.mean([flops(r) for r in results]) / 1e6 if flops else float("nan")
    k = self.cfg.k
    if method == "exhaustive":
      self.reference[scorer_name] = ids
      self.exhaustive_p50[scorer_name] = latency.p50_ms
    reference = self.reference[scorer_name][:len(ids)]
    row = {"method": method, "setting": setting, "corpus": self.corpus_name, "scorer": scorer_name,
           f"exactness@{k}": cost.exactness_at_k(ids, reference),
           f"recall@{k}": cost.recall_at_k(ids, self.queries.truth[:len(ids)], k),
           "items_scored_frac": scored_frac, "node_evals_frac": node_frac, "qps": latency.qps,
           "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms, "peak_mem_mb": memory.mb,
           "build_s": build_s,
           "latency_ratio_vs_exhaustive": latency.p50_ms / self.exhaustive_p50[scorer_name]}
    self.rows.append(row)
    write_json_atomic(self.out, self.rows)
    print(_format(row, k, mflops), flush=True)
    return row


HEADER = (f"{'scorer':12s} {'method':12s} {'setting':28s} {'exact':>6s} {'recall':>6s} "
          f"{'scored%':>8s} {'nodes%':>7s} {'MFLOP/q':>8s} {'qps':>8s} {'p50ms':>9s} {'p99ms':>9s} "
          f"{'mem MB':>7s} {'build s':>7s} {'p50/exh':>8s}")


def _percent(fraction) -> str:
  return "?" if fraction is None else f"{100 * fraction:.3f}"


def _format(row, k, mflops):
  return (f"{row['scorer']:12s} {row['method']:12s} {row['setting']:28s} "
          f"{row[f'exactness@{k}']:6.4f} {row[f'recall@{k}']:6.4f} "
          f"{_percent(row['items_scored_frac']):>8s} {_percent(row['node_evals_frac']):>7s} {mflops:8.2f} {row['qps']:8.1f} "
          f"{row['p50_ms']:9.1f} {row['p99_ms']:9.1f} {row['peak_mem_mb']:7.0f} "
          f"{row['build_s']:7.1f} {row['latency_ratio_vs_exhaustive']:8.4f}")


def beam_settings(sweep) -> List[tuple]:
  """Config sweep entries 'b0,...,b{L-1}[:max_items]' or 'b0,...,b{L-1}:w1,...,w{L-1},max_items'
  -> [(beam widths, max candidates per stage (levels 1..L-1, then items; 0 = uncapped))].

  Beam search computes every slot of a stage (static shapes): a level's slots are
  b_{l-1} x the widest node's children, so one wide node makes every query pay for padding;
  the w_l caps bound that work (the lowest-ranked nodes' children are dropped when they overflow).
  """
  out = []
  for entry in sweep:
    beams, _, caps = entry.partition(":")
    beams = tuple(int(b) for b in beams.split(","))
    caps = tuple(int(c) for c in caps.split(",")) if caps else (0,)
    if len(caps) == 1:
      caps = (0,) * (len(beams) - 1) + caps
    if len(caps) != len(beams):
      raise ValueError(f"beam setting {entry!r}: give the item budget alone or one cap per level "
                       f"below the root plus the item budget ({len(beams)} numbers)")
    out.append((beams, caps))
  return out


def run_beam_sweep(bench: Bench, scorer_name: str, index, level_scorers, item_stage, batches,
                   sweep, build_s: float, label: str = "", members_per_node: Sequence[int] = ()):
  members_per_node = tuple(members_per_node) or (1,) * index.num_levels
  stages = [s.scorer for s in level_scorers]
  flops = lambda r: cost.model_flops_per_query(r, stages, item_stage.scorer)
  items = bs.leaf_major_items(index, item_stage)  # one copy of the reprs for the whole sweep
  for beams, caps in beam_settings(sweep):
    search = bs.BeamSearch(index, level_scorers, items, beams, bench.cfg.k,
                           max_candidates=caps)
    setting = (f"{label}beams={','.join(map(str, beams))}"
               + (f" slots<={','.join(map(str, caps[:-1]))}" if any(caps[:-1]) else "")
               + (f" items<={caps[-1]}" if caps[-1] else ""))
    bench.run("beam_search", setting, scorer_name, search, batches, index.num_items, build_s,
              flops, members_per_node=members_per_node)


def dot_suite(bench: Bench, corpus, cfg):
  scorer = planted_scorer(corpus)
  batches = bench.queries.batches()
  num_items = corpus.config.num_items
  corpus_reprs = encode_corpus(scorer, num_items, cfg.item_chunk)
  exhaustive = lambda u, e: exhaustive_top_k(scorer, u, cfg.k, exclude=e, corpus=corpus_reprs)
  bench.run("exhaustive", "exact", "planted_dot", exhaustive, batches, num_items, 0.0,
            lambda _: scorer.flops_per_query + num_items * scorer.flops_per_pair)
  vectors = corpus.item_vectors()
  index, build_s = build_index(vectors, cfg.index.dot_nodes_per_level, cfg.index.kmeans_iters,
                               cfg.seed)
  print(f"dot index: nodes per level {index.num_nodes}, max items per leaf "
        f"{index.node_items.shape[1]}, built in {build_s:.1f}s", flush=True)
  make_level = {"embedding": bs.node_embedding_level_scorer,
                "representative": bs.representative_level_scorer}[cfg.dot_node_scoring]
  levels = [make_level(scorer, index, l) for l in range(index.num_levels)]
  item_stage = bs.item_level_scorer(scorer, num_items)
  run_beam_sweep(bench, "planted_dot", index, levels, item_stage, batches, cfg.dot_sweep, build_s)
  run_peers(bench, vectors, corpus.user_vectors(), cfg)


def run_peers(bench: Bench, items: np.ndarray, users: np.ndarray, cfg):
  present = peers.available()
  batches = [(np.asarray(users[np.asarray(u.user)]), np.asarray(e))
             for u, e in bench.queries.batches()]
  for name, settings in cfg.peer_settings.items():
    if not present[name]:
      print(f"peer {name}: not importable here, skipped", flush=True)
      continue
    peer = peers.Peer(name, items, nlist=cfg.peers.nlist, hnsw_m=cfg.peers.hnsw_m,
                      scann_leaves=cfg.peers.scann_leaves, seed=cfg.seed)
    for setting in settings:
      search = lambda u, e, s=setting: peer.search(u, cfg.k, e, s or None)
      bench.run(name, f"search={setting}" if setting else "default", "planted_dot", search,
                batches, items.shape[0], peer.build_s, scans_all=name == "faiss_flat")


def node_level_scorers(scorer: Scorer, index, rule: str, count: int, mean_scores) -> List:
  """One LevelScorer per index level: 'nearest' scores the representative item, 'mean_score'
  the max over the `count` members of highest mean score ([V] `mean_scores`)."""
  if rule == "nearest":
    return [bs.representative_level_scorer(scorer, index, l) for l in range(index.num_levels)]
  path = np.asarray(index.item_path)
  return [bs.members_level_scorer(scorer, top_members(path[:, l], mean_scores, index.num_nodes[l],
                                                      count))
          for l in range(index.num_levels)]


def monn_suite(bench: Bench, corpus, cfg):
  scorer, params, note = train_monn(corpus, cfg.monn, cfg.history_len, cfg.seed)
  print(f"monn scorer: {note}; {scorer.flops_per_pair} FLOPs per pair, "
        f"{scorer.flops_per_query} per query", flush=True)
  num_items = corpus.config.num_items
  batches = bench.queries.batches(cfg.monn_queries)
  start = time.perf_counter()
  corpus_reprs = encode_corpus(scorer, num_items, cfg.item_chunk)
  item_stage = bs.item_level_scorer(scorer, num_items)
  print(f"monn item reprs encoded twice (scan and flat layouts) in "
        f"{time.perf_counter() - start:.1f}s", flush=True)
  exhaustive = lambda u, e, c=corpus_reprs: exhaustive_top_k(scorer, u, cfg.k, exclude=e, corpus=c)
  bench.run("exhaustive", "exact", "monn", exhaustive, batches, num_items, 0.0,
            lambda _: scorer.flops_per_query + num_items * scorer.flops_per_pair)
  del exhaustive  # holds corpus_reprs, freed below
  specs = node_scoring_specs(cfg.index.monn_node_scoring)
  mean_scores, mean_s = None, 0.0
  if any(rule == "mean_score" for rule, _ in specs):
    start = time.perf_counter()
    calibration = calibration_batches(corpus, bench.queries, cfg.index.calibration_users,
                                      cfg.history_len, cfg.seed)
    mean_scores = mean_item_scores(scorer, calibration, corpus_reprs, num_items)
    mean_s = time.perf_counter() - start
    print(f"monn mean scores over {cfg.index.calibration_users} calibration users (not queries) "
          f"in {mean_s:.1f}s", flush=True)
  del corpus_reprs
  start = time.perf_counter()
  embedding = monn_index_embedding(cfg.index.monn_embedding, params, item_stage.reprs, corpus,
                                   cfg.index.key_weight)
  embedding_s = time.perf_counter() - start
  for shape in cfg.index.monn_index_shapes:
    index, kmeans_s = build_index(embedding, shape, cfg.index.kmeans_iters, cfg.seed)
    sizes = np.bincount(np.asarray(index.item_path)[:, -1])
    print(f"monn index {'x'.join(map(str, shape))} on {cfg.index.monn_embedding}: nodes per level "
          f"{index.num_nodes}, items per leaf mean {sizes.mean():.0f} max {sizes.max()}, built in "
          f"{embedding_s + kmeans_s:.1f}s", flush=True)
    for rule, count in specs:
      start = time.perf_counter()
      levels = node_level_scorers(scorer, index, rule, count, mean_scores)
      build_s = embedding_s + kmeans_s + (mean_s if rule == "mean_score" else 0.0) + (
          time.perf_counter() - start)
      label = (f"idx={'x'.join(map(str, shape))} " if len(cfg.index.monn_index_shapes) > 1 else "")
      run_beam_sweep(bench, "monn", index, levels, item_stage, batches, cfg.monn_sweep, build_s,
                     label=f"{label}{rule}:{count} ", members_per_node=(count,) * index.num_levels)
  cheap = planted_scorer(corpus)
  flops = lambda r: cost.model_flops_per_query(r, [cheap], scorer)
  for k_prime in cfg.two_stage_k_primes:
    start = time.perf_counter()
    search = TwoStage(cheap, item_stage, num_items, k_prime, cfg.k, cfg.item_chunk)
    bench.run("two_stage", f"planted_dot top-{k_prime}", "monn", search, batches, num_items,
              time.perf_counter() - start, flops)


def matched_exactness(rows: List[Dict], k: int, targets: Sequence[float]) -> List[Dict]:
  """Per (scorer, method) and target: the lowest-p50 row with exactness@k >= target.

  Methods compared at the same exactness is the fair speed comparison (one fast setting of a
  peer that misses half the top-K says nothing). A method that never reaches a target gets a
  row with setting None and its best exactness, so the gap is visible.
  """
  exactness, out = f"exactness@{k}", []
  for scorer, method in sorted({(r["scorer"], r["method"]) for r in rows}):
    group = [r for r in rows if (r["scorer"], r["method"]) == (scorer, method)]
    for target in targets:
      reached = [r for r in group if r[exactness] >= target]
      best = min(reached, key=lambda r: r["p50_ms"]) if reached else None
      out.append({"scorer": scorer, "method": method, "target": target,
                  "setting": best["setting"] if best else None,
                  exactness: best[exactness] if best else max(r[exactness] for r in group),
                  "items_scored_frac": best["items_scored_frac"] if best else None,
                  "p50_ms": best["p50_ms"] if best else None,
                  "latency_ratio_vs_exhaustive":
                      best["latency_ratio_vs_exhaustive"] if best else None})
  return out


def format_matched(matched: List[Dict], k: int) -> str:
  lines = [f"At matched exactness@{k} (fastest setting reaching each target, this run):",
           f"{'scorer':12s} {'method':14s} {'target':>6s} {'setting':28s} {'exact':>6s} "
           f"{'scored%':>8s} {'p50ms':>9s} {'p50/exh':>8s}"]
  for m in matched:
    if m["setting"] is None:
      lines.append(f"{m['scorer']:12s} {m['method']:14s} {m['target']:6.2f} "
                   f"{'not reached (best ' + format(m[f'exactness@{k}'], '.4f') + ')':28s}")
      continue
    lines.append(f"{m['scorer']:12s} {m['method']:14s} {m['target']:6.2f} {m['setting']:28s} "
                 f"{m[f'exactness@{k}']:6.4f} {_percent(m['items_scored_frac']):>8s} "
                 f"{m['p50_ms']:9.1f} {m['latency_ratio_vs_exhaustive']:8.4f}")
  return "\n".join(lines)


def plot(rows: List[Dict], k: int, path: str) -> None:
  """Exactness against items scored (left) and against latency relative to exhaustive (right)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
  exactness = f"exactness@{k}"
  for key in sorted({(r["scorer"], r["method"]) for r in rows}):
    group = [r for r in rows if (r["scorer"], r["method"]) == key]
    for ax, x in zip(axes, ("items_scored_frac", "latency_ratio_vs_exhaustive")):
      pts = sorted((r[x], r[exactness]) for r in group if r[x] is not None)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} / {key[1]}")
  axes[0].set_xlabel("items scored by the item-level model per query / corpus size")
  axes[1].set_xlabel("p50 latency / the same scorer's exhaustive p50 (CPU)")
  axes[0].set_ylabel(f"exactness@{k} vs the same model's exhaustive top-{k}")
  for ax in axes:
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.suptitle(f"{rows[0]['corpus']}: peers (no item count) appear on the right only")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def check_config(cfg) -> None:
  """Refuses malformed sweep entries before any corpus is built."""
  beam_settings(cfg.dot_sweep)
  beam_settings(cfg.monn_sweep)
  node_scoring_specs(cfg.index.monn_node_scoring)
  shapes = cfg.index.monn_index_shapes
  if not shapes or any(len(s) < 1 or min(s) < 1 for s in shapes):
    raise ValueError(f"index.monn_index_shapes={shapes}: expected one or more tuples of positive "
                     f"nodes per level, e.g. ((64, 32, 8),)")
  if cfg.index.calibration_users < cfg.query_batch:
    raise ValueError(f"index.calibration_users={cfg.index.calibration_users} must be at least "
                     f"query_batch={cfg.query_batch}")
  unknown = set(cfg.suites) - {"dot", "monn"}
  if unknown:
    raise ValueError(f"suites: unknown {sorted(unknown)}; expected 'dot' and/or 'monn'")


def main(argv):
  del argv
  cfg = _CONFIG.value
  check_config(cfg)
  print(f"devices: {jax.devices()}  backend: {jax.default_backend()}  jax {jax.__version__}  "
        f"cpus: {os.cpu_count()}", flush=True)
  numerics = cost.numerics_platform()
  print(f"numerics platform (results repeat bit for bit where this matches): {numerics}")
  write_json_atomic(os.path.splitext(_OUT.value)[0] + ".platform.json", numerics)
  syn_cfg = synthetic.PRESETS[cfg.corpus]
  if cfg.corpus_overrides:
    syn_cfg = syn_cfg.__class__(**{**syn_cfg.__dict__, **dict(cfg.corpus_overrides)})
  start = time.perf_counter()
  corpus = synthetic.build(syn_cfg)
  print(f"corpus {syn_cfg.name}: {syn_cfg.num_items} items, {syn_cfg.num_users} users, "
        f"built in {time.perf_counter() - start:.1f}s", flush=True)
  queries = Queries(corpus, cfg.num_queries, cfg.query_batch, cfg.history_len, cfg.seed)
  bench = Bench(cfg, syn_cfg.name, queries, _OUT.value)
  print(f"{len(queries.users)} queries in batches of {cfg.query_batch}; K={cfg.k}\n{HEADER}")
  if "dot" in cfg.suites:
    dot_suite(bench, corpus, cfg)
  if "monn" in cfg.suites:
    monn_suite(bench, corpus, cfg)
  write_json_atomic(_OUT.value, bench.rows)  # also when no row was measured
  matched = matched_exactness(bench.rows, cfg.k, cfg.matched_exactness)
  print(format_matched(matched, cfg.k))
  stem = os.path.splitext(_OUT.value)[0]
  write_json_atomic(stem + ".matched.json", matched)
  plot(bench.rows, cfg.k, stem + ".png")
  print(f"wrote {_OUT.value}, {stem}.matched.json, {stem}.platform.json and {stem}.png")


if __name__ == "__main__":
  app.run(main)
