"""Full-corpus ranking metrics and normalized entropy. Vectorised jnp, jit-able.

Inputs: `topk` [U, K] int32 retrieved item ids, best first, -1 = padding (no item); `truth`
[U, T] int32 relevant item ids, -1 = padding. Duplicate ids in a truth row count once; retrieved
lists are assumed free of repeats (retrieval never repeats an item).

Conventions (per user; `|truth|` = number of distinct relevant items):
  recall@K     hits in the top K / |truth|  (LightGCN's convention, not / min(|truth|, K); under
               leave-one-out, |truth| = 1 and it equals hr@K, which is how TIGER reports "Recall")
  precision@K  hits in the top K / K
  ndcg@K       binary relevance: sum over hit ranks r (1-based) of 1 / log2(r + 1), divided by the
               ideal DCG of min(|truth|, K) hits at ranks 1..min(|truth|, K)
  hr@K         1 if any hit in the top K else 0
  mrr@K        1 / rank of the first hit within the top K, 0 if none (truncated MRR); `mrr`
               without a suffix is mrr@K for the largest K evaluated (the whole retrieved list)
Means are over users with non-empty truth; users with empty truth get 0 per-user values and are
left out of every mean.
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence

import chex
import jax
import jax.numpy as jnp

from hsnn_jax.retrieval.topk import hit_matrix

RANKING_METRICS = ("recall", "precision", "ndcg", "hr", "mrr")


def num_relevant(truth: jax.Array) -> jax.Array:
  """[U] int32: distinct non-padding ids per truth row."""
  s = jnp.sort(truth, axis=1)
  first = jnp.concatenate([jnp.ones_like(s[:, :1], bool), s[:, 1:] != s[:, :-1]], axis=1)
  return jnp.sum(first & (s >= 0), axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="k")
def per_user_metrics(topk: jax.Array, truth: jax.Array, k: int) -> Dict[str, jax.Array]:
  """Per-user [U] float32 metrics at cutoff k (uses topk[:, :k]); keys are RANKING_METRICS."""
  topk = topk[:, :k]
  hits = hit_matrix(topk, truth).astype(jnp.float32)  # [U, k']
  width = hits.shape[1]
  n_rel = num_relevant(truth)
  has_truth = n_rel > 0
  discount = 1.0 / jnp.log2(jnp.arange(2, width + 2, dtype=jnp.float32))  # [k']
  ideal = jnp.cumsum(discount)[jnp.clip(jnp.minimum(n_rel, width) - 1, 0)]
  n_hits = hits.sum(axis=1)
  first_rank = jnp.argmax(hits, axis=1) + 1
  safe = lambda num, den: jnp.where(has_truth, num / jnp.maximum(den, 1), 0.0)
  return {
      "recall": safe(n_hits, n_rel),
      "precision": safe(n_hits, jnp.float32(k)),
      "ndcg": jnp.where(has_truth, (hits * discount).sum(axis=1) / ideal, 0.0),
      "hr": jnp.where(has_truth, (n_hits > 0).astype(jnp.float32), 0.0),
      "mrr": jnp.where(has_truth & (n_hits > 0), 1.0 / first_rank, 0.0),
  }


@functools.partial(jax.jit, static_argnames="ks")
def ranking_metrics(topk: jax.Array, truth: jax.Array, ks: Sequence[int]) -> Dict[str, jax.Array]:
  """Means over users with non-empty truth: {'recall@10': scalar, ..., 'mrr': scalar}.

  Args:
    topk: [U, K] retrieved ids, K >= max(ks) (shorter lists count missing slots as misses).
    truth: [U, T] relevant ids, -1 padded.
    ks: cutoffs (static: pass a tuple).
  """
  weight = (num_relevant(truth) > 0).astype(jnp.float32)
  denom = jnp.maximum(weight.sum(), 1.0)
  out = {}
  for k in sorted(set(ks)):
    for name, values in per_user_metrics(topk, truth, k).items():
      out[f"{name}@{k}"] = (values * weight).sum() / denom
  out["mrr"] = out[f"mrr@{max(ks)}"]
  return out


@jax.jit
def normalized_entropy(labels: jax.Array, logits: jax.Array) -> jax.Array:
  """NE: mean binary log loss of sigmoid(logits) / entropy of the base rate p = mean(labels).

  labels [N] in [0, 1], logits [N]. Below 1 beats always predicting p. Undefined (nan or inf)
  when every label is 0 or every label is 1.
  """
  chex.assert_equal_shape([labels, logits])
  labels = labels.astype(jnp.float32)
  logits = logits.astype(jnp.float32)
  log_loss = -jnp.mean(labels * jax.nn.log_sigmoid(logits)
                       + (1.0 - labels) * jax.nn.log_sigmoid(-logits))
  p = jnp.mean(labels)
  base = -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))
  return log_loss / base
