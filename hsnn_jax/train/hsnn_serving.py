"""Serving a trained HSNN: its published index, the exhaustive ensemble scorer, the hierarchy
that beam search walks, and the index report of results.json.

The index is published from the hard codes of every item (index/publish.py). Node l of item v
is scored by level l's MoNN on the node's representative item, the item level by the item-level
MoNN, and the ensemble weights are the learned ones (models/hsnn.py `ensemble_scorer`).
`eval_scorer='item'` evaluates the item-level MoNN alone.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import numpy as np

from hsnn_jax.data.types import RecDataset
from hsnn_jax.eval.hierarchical import Hierarchy
from hsnn_jax.index.health import index_health, nmi, purity
from hsnn_jax.index.lifecycle import IndexState
from hsnn_jax.index.publish import prefix_node_ids, publish_index
from hsnn_jax.index.published import PublishedIndex
from hsnn_jax.index.residual_quantizer import get_codebooks
from hsnn_jax.models import hsnn
from hsnn_jax.models.scorer import Scorer
from hsnn_jax.retrieval.beam_search import (encode_ids, item_level_scorer,
                                             representative_level_scorer)


class HSNNServing:
  """model: the HSNN with its current I2IF keys; codes [V, L] int32: every item's hard codes;
  embeddings: () -> [V, d] item embeddings (computed only when the index is published);
  with_base: the item level's Scorer -> itself plus a frozen base's, if the run has one."""

  def __init__(self, model: hsnn.HSNN, params: Any, codes, embeddings: Callable[[], np.ndarray],
               *, history_len: int, num_items: int, chunk: int, eval_scorer: str = "ensemble",
               with_base: Callable[[Scorer], Scorer] = lambda scorer: scorer):
    self.model, self.params, self.codes = model, params, np.asarray(codes)
    self.with_base = with_base
    self._embeddings = embeddings
    self.history_len, self.num_items, self.chunk = history_len, num_items, chunk
    self.eval_scorer = eval_scorer

  @functools.cached_property
  def index(self) -> PublishedIndex:
    return publish_index(self.codes, get_codebooks(self.params["quantizer"]), self._embeddings())

  @functools.cached_property
  def level_scorers(self) -> tuple:
    return tuple(hsnn.level_scorer(self.model, self.params, l, self.history_len)
                 for l in range(self.model.config.num_levels))

  @functools.cached_property
  def item_scorer(self) -> Scorer:
    return self.with_base(hsnn.item_scorer(self.model, self.params, self.history_len))

  def ensemble_weights(self):
    return None if self.eval_scorer == "item" else np.asarray(self.params["ensemble"])

  def scorer(self) -> Scorer:
    """What exhaustive evaluation ranks by: the ensemble (or the item level alone)."""
    if self.eval_scorer == "item":
      return self.item_scorer
    node_reprs = tuple(encode_ids(s, np.asarray(self.index.representative[l]), self.chunk)
                       for l, s in enumerate(self.level_scorers))
    return hsnn.ensemble_scorer(self.item_scorer, self.level_scorers, node_reprs,
                                np.asarray(self.index.item_path), self.ensemble_weights())

  def hierarchy(self) -> Hierarchy:
    """Beam search over the learned index: nodes scored by their level's MoNN on their
    representative items, ranked by the learned ensemble (the function `scorer` evaluates)."""
    stages = tuple(representative_level_scorer(s, self.index, l, self.chunk)
                   for l, s in enumerate(self.level_scorers))
    weights = self.ensemble_weights()
    return Hierarchy(index=self.index, level_stages=stages,
                     item_stage=item_level_scorer(self.item_scorer, self.num_items, self.chunk),
                     level_weights=None if weights is None else [float(w) for w in weights],
                     reference=self.scorer())

  def export(self, workdir: str) -> None:
    self.index.save(os.path.join(workdir, "index.npz"))


def report(params: Any, index: IndexState, nodes_per_level: Sequence[int],
           ds: RecDataset) -> dict:
  """results.json's index fields: health per level, the build step, the ensemble weights and,
  on planted data, how well each level recovers the planted tree (NMI, purity)."""
  codes = np.asarray(index.codes)
  health = index_health(codes, nodes_per_level)
  out = {"index_health": {f"level_{l}": h for l, h in enumerate(health)},
         "index_built_at_step": int(index.built_at),
         "ensemble_weights": [float(w) for w in np.asarray(params["ensemble"])]}
  if ds.item_tree_paths is not None:
    nodes, _, _ = prefix_node_ids(codes, nodes_per_level)
    depth = ds.item_tree_paths.shape[1]
    truth = lambda l: ds.item_tree_paths[:, min(l, depth - 1)]
    out["index_recovery"] = {
        f"level_{l}": {"nmi": nmi(truth(l), nodes[:, l]), "purity": purity(truth(l), nodes[:, l])}
        for l in range(len(nodes_per_level))}
  return out
