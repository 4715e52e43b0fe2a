"""Evaluation through the index: beam search on a dataset split, beside exhaustive scoring.

What a researcher needs to put a hierarchical-retrieval row in a table (HILL's public Gowalla
numbers, HSNN Table 1's latency column): the ranking metrics of what beam search returns, its
exactness@K against exhaustive scoring of the same model, what it scored, and its latency
relative to exhaustive scoring, measured side by side on the same query batches.

A `Hierarchy` is an index with one scorer per stage:
  'hsnn' runs bring their own (`RetrievalTask.hierarchy`): the published learned index, level l
    scored by its MoNN on each node's representative item, the item level by the item MoNN,
    ranked by the learned linear ensemble (the same function exhaustive evaluation scores);
  any dot-product model gets a separately learned index (SIL, `sil_hierarchy`): residual
    k-means over its item vectors, nodes scored by their embeddings, items by the model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.chunking import padded_chunks
from hsnn_jax.data.types import RecDataset, concat_rows
from hsnn_jax.eval import cost
from hsnn_jax.eval import metrics as metrics_lib
from hsnn_jax.index.kmeans import kmeans_index
from hsnn_jax.index.published import PublishedIndex
from hsnn_jax.models.scorer import Scorer
from hsnn_jax.retrieval import beam_search as bs
from hsnn_jax.retrieval.exhaustive import encode_corpus, exhaustive_top_k, exhaustive_top_k_for_users


@dataclasses.dataclass(frozen=True)
class Hierarchy:
  """index: L levels over V items; level_stages: L LevelScorers (reprs [num_nodes[l], ...]);
  item_stage: the item LevelScorer (reprs [V, ...]); level_weights: the beam search ensemble
  (see beam_search.normalize_weights); reference: the Scorer whose exhaustive top-K defines
  exactness (the item scorer, or the ensemble it approximates)."""

  index: PublishedIndex
  level_stages: Tuple[bs.LevelScorer, ...]
  item_stage: bs.LevelScorer
  level_weights: bs.Weights
  reference: Scorer

  @functools.cached_property
  def leaf_major_items(self) -> bs.LeafMajorItems:
    """The item stage laid out leaf-major, once, for every search over this hierarchy."""
    return bs.leaf_major_items(self.index, self.item_stage)

  def search(self, beam_widths: Sequence[int], k: int,
             max_items: int = 0) -> bs.BeamSearch:
    levels = self.index.num_levels
    return bs.BeamSearch(self.index, self.level_stages, self.leaf_major_items, beam_widths, k,
                         level_weights=self.level_weights,
                         max_candidates=(0,) * (levels - 1) + (max_items,))

  def flops_per_query(self, result: bs.RetrievalResult) -> float:
    return cost.model_flops_per_query(result, [s.scorer for s in self.level_stages],
                                      self.item_stage.scorer)


def sil_hierarchy(scorer: Scorer, num_items: int, nodes_per_level: Sequence[int],
                  key: jax.Array, kmeans_iters: int = 20) -> Hierarchy:
  """A separately learned index for a dot-product scorer (item reprs [V, d] vectors)."""
  item_stage = bs.item_level_scorer(scorer, num_items)
  vectors = item_stage.reprs
  if not isinstance(vectors, jax.Array) or vectors.ndim != 2:
    raise ValueError(f"sil_hierarchy needs [V, d] item vectors; scorer {scorer.name!r} gives "
                     f"{jax.tree.map(jnp.shape, vectors)}")
  index = kmeans_index(key, vectors, nodes_per_level, kmeans_iters)
  levels = tuple(bs.node_embedding_level_scorer(scorer, index, l) for l in range(len(nodes_per_level)))
  return Hierarchy(index=index, level_stages=levels, item_stage=item_stage, level_weights=None,
                   reference=scorer)


def _known_items(ds: RecDataset, split: str, users: np.ndarray) -> np.ndarray:
  """[U, E] int32 items each user is known to have (excluded from the ranking), -1 padded."""
  known = [ds.train] + ([ds.valid] if split == "test" and ds.valid.nnz else [])
  return concat_rows(known, users).to_padded()[0]


def _batched(users: np.ndarray, exclude: np.ndarray, batch: int):
  """Fixed-size (user ids, exclude) batches, the last padded by repeating its first row;
  yields (rows kept, ids [batch], exclude [batch, E])."""
  for _, rows, real in padded_chunks(users.shape[0], batch):
    yield real, users[rows], exclude[rows]


def evaluate_hierarchical(hierarchy: Hierarchy, ds: RecDataset, make_user_batch, *,
                          beam_widths: Sequence[int], ks: Sequence[int] = (20,), split: str = "test",
                          max_items: int = 0, batch_size: int = 256, timing_batches: int = 4,
                          item_chunk: int = 8192, exact: np.ndarray | None = None
                          ) -> Dict[str, float]:
  """Beam search for every user with truth in `split`, against exhaustive scoring.

  Args:
    hierarchy: the index and its stage scorers.
    ds: the dataset; known (train, and valid for 'test') items are excluded from both rankings.
    make_user_batch: user ids np[B] -> UserBatch (trainer's user_batch_for_eval).
    beam_widths: L nodes kept per level; max_items: item-stage budget (0 = every item under the
      kept leaves).
    ks: cutoffs; exactness is reported at each.
    batch_size: queries per beam-search call (fixed: one compilation).
    timing_batches: how many of those batches time beam search and exhaustive scoring side by
      side (after a warm-up call each).
    exact: [U, >= max(ks)] exhaustive top items of the same users (the order of
      `evaluate`: users with truth in `split`, ascending), when already computed; else computed.

  Returns:
    {'recall@K', 'ndcg@K', ... of the beam results, 'exactness@K', 'items_scored_frac',
     'flops_per_query', 'exhaustive_flops_per_query', 'beam_p50_ms', 'exhaustive_p50_ms',
     'latency_ratio_vs_exhaustive', 'num_users'} as floats.
  """
  truth_csr = getattr(ds, split)
  users = np.flatnonzero(truth_csr.lengths() > 0).astype(np.int32)
  exclude = _known_items(ds, split, users)
  k = max(ks)
  search = hierarchy.search(beam_widths, k, max_items)
  ids, scored, flops = [], [], []
  for keep, batch_users, batch_exclude in _batched(users, exclude, batch_size):
    out = search(make_user_batch(batch_users), jnp.asarray(batch_exclude))
    ids.append(np.asarray(out.ids)[:keep])
    scored.append(np.asarray(out.items_scored)[:keep])
    flops.append(hierarchy.flops_per_query(out) * keep)
  ids = np.concatenate(ids)
  reference = hierarchy.reference
  corpus = encode_corpus(reference, ds.num_items, item_chunk)
  if exact is None:
    _, exact = exhaustive_top_k_for_users(reference, make_user_batch, users, k,
                                          num_items=ds.num_items, user_chunk=batch_size,
                                          exclude=exclude, corpus=corpus)
  elif exact.shape[0] != users.shape[0] or exact.shape[1] < k:
    raise ValueError(f"exact must be [{users.shape[0]}, >= {k}], got {exact.shape}")
  truth = concat_rows([truth_csr], users).to_padded()[0]
  out = {name: float(v) for name, v in metrics_lib.ranking_metrics(
      jnp.asarray(ids), jnp.asarray(truth), tuple(ks)).items()}
  for kk in ks:
    out[f"exactness@{kk}"] = cost.exactness_at_k(ids[:, :kk], exact[:, :kk])
  out["items_scored_frac"] = float(np.concatenate(scored).mean()) / ds.num_items
  out["flops_per_query"] = float(np.sum(flops)) / users.shape[0]
  out["exhaustive_flops_per_query"] = float(
      reference.flops_per_query + ds.num_items * reference.flops_per_pair)
  out["num_users"] = float(users.shape[0])

  calls = [(make_user_batch(u), jnp.asarray(e)) for _, u, e in
           list(_batched(users, exclude, batch_size))[:max(1, timing_batches)]]
  beam = cost.measure_latency(search, calls, batch_size)
  exhaustive = cost.measure_latency(
      lambda u, e: exhaustive_top_k(reference, u, k, exclude=e, corpus=corpus), calls, batch_size)
  out["beam_p50_ms"], out["exhaustive_p50_ms"] = beam.p50_ms, exhaustive.p50_ms
  out["latency_ratio_vs_exhaustive"] = beam.p50_ms / exhaustive.p50_ms
  return out


def retrieval_latency(scorer: Scorer, make_user_batch, users: np.ndarray, num_items: int, k: int,
                      batch_size: int = 256, timing_batches: int = 4,
                      item_chunk: int = 8192) -> cost.Latency:
  """Exhaustive top-k latency of `scorer` on fixed query batches (after one warm-up call)."""
  corpus = encode_corpus(scorer, num_items, item_chunk)
  batches = [(make_user_batch(u),) for _, u, _ in
             list(_batched(users, np.zeros((users.shape[0], 1), np.int32), batch_size))
             [:max(1, timing_batches)]]
  return cost.measure_latency(lambda u: exhaustive_top_k(scorer, u, k, corpus=corpus), batches,
                              batch_size)


def run_hierarchy(task, params, aux, num_items: int, nodes_per_level: Sequence[int],
                  seed: int = 0) -> Hierarchy:
  """The run's own learned index when its task has one ('hsnn'), else a SIL index over the
  model's item vectors with `nodes_per_level`."""
  if task.hierarchy is not None:
    return task.hierarchy(params, aux)
  return sil_hierarchy(task.scorer(params, aux), num_items, nodes_per_level,
                       jax.random.PRNGKey(seed))
