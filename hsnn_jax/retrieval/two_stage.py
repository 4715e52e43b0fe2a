"""The two-stage baseline for learned scorers: cheap exhaustive top-k', then rescore top-K.

Stage 1 scans the whole corpus with a cheap scorer (a dot product of embeddings) and keeps each
user's top k' items (exact, by `exhaustive.top_k_over_corpus`, excluded items removed there).
Stage 2 scores those k' candidates with the learned model and returns its top K. This is what
RAILS does for mixture-of-logits; its exactness against the model's own exhaustive top-K depends
on how well the cheap scorer's top k' covers it.

Counts: `items_scored` = candidates the model scored (k', fewer when the corpus is smaller);
`stage_scored` [B, 1] = items the cheap scorer scored (the whole corpus).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from hsnn_jax.models.scorer import PyTree, Scorer, UserBatch
from hsnn_jax.retrieval.beam_search import (LevelScorer, RetrievalResult, as_exclusions,
                                             resolve_users_per_step, score_candidates)
from hsnn_jax.retrieval.exhaustive import EncodedCorpus, encode_corpus, top_k_over_corpus
from hsnn_jax.retrieval.topk import fast_top_k


@dataclasses.dataclass(frozen=True)
class _Spec:
  cheap_encode: object
  cheap_score: object
  model_encode: object
  model_score: object
  k_prime: int
  k: int
  users_per_step: Optional[int]


@functools.partial(jax.jit, static_argnums=0)
def _two_stage(spec: _Spec, corpus: EncodedCorpus, model_reprs: PyTree, users: UserBatch,
               exclude: jax.Array) -> RetrievalResult:
  _, cand = top_k_over_corpus(spec.cheap_score, spec.cheap_encode(users), corpus, spec.k_prime,
                              exclude)
  valid = cand >= 0
  scores = score_candidates(spec.model_score, spec.model_encode(users), model_reprs, cand,
                            spec.users_per_step)
  top, pos = fast_top_k(jnp.where(valid, scores, -jnp.inf), spec.k)
  ids = jnp.where(jnp.isneginf(top), -1, jnp.take_along_axis(cand, pos, axis=1))
  scanned = jnp.sum(corpus.valid, dtype=jnp.int32)
  return RetrievalResult(scores=top, ids=ids, items_scored=jnp.sum(valid, axis=1, dtype=jnp.int32),
                         stage_scored=jnp.full((cand.shape[0], 1), scanned, jnp.int32))


class TwoStage:
  """Cheap top-k' then model rescoring; call with users (B) and optional exclude [B, E].

  Args:
    cheap: the prefilter Scorer (e.g. a two-tower dot product).
    model: the item stage, `beam_search.item_level_scorer(model_scorer, num_items)`.
    num_items: corpus size V.
    k_prime: candidates kept by the prefilter (k <= k_prime <= V).
    k: results per query.
    item_chunk: items per scan step of the prefilter.
    users_per_step: how the rescoring batches users (`beam_search.score_candidates`).
  """

  def __init__(self, cheap: Scorer, model: LevelScorer, num_items: int, k_prime: int, k: int,
               item_chunk: int = 8192, users_per_step="auto"):
    if not 1 <= k <= k_prime <= num_items:
      raise ValueError(f"need 1 <= k <= k_prime <= num_items, got {k}, {k_prime}, {num_items}")
    self.corpus = encode_corpus(cheap, num_items, item_chunk)
    self.model_reprs = model.reprs
    self.scorers = (cheap, model.scorer)
    self.spec = _Spec(cheap.encode_users, cheap.score, model.scorer.encode_users,
                      model.scorer.score, int(k_prime), int(k),
                      resolve_users_per_step(users_per_step))

  def __call__(self, users: UserBatch, exclude: Optional[jax.Array] = None) -> RetrievalResult:
    return _two_stage(self.spec, self.corpus, self.model_reprs, users,
                      as_exclusions(exclude, users.user.shape[0]))
