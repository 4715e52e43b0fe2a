"""Hierarchical beam search over a `PublishedIndex` (METHOD.md §4, HSNN Alg. 2).

For a batch of B users, inside one jit with static shapes:

  level 0:      score every level-0 node, keep the top b_0;
  level l > 0:  expand the kept nodes' children into a fixed-width candidate list (W_l slots,
                -1 padded), score them, combine with the ancestors' scores, keep the top b_l;
  item level:   gather the items under the kept leaves (W_items slots), drop padding and each
                user's excluded items, score them with the item-level scorer, return the top K.

Scoring: every stage has a `LevelScorer`, a `Scorer` plus the cached reprs of what it scores.
Index levels score a node through its representative item's repr (HSNN: the node's features are
the representative item's), as the max over several member items (`members_level_scorer`), or,
for dot-product models, through the node embedding; the item level scores the corpus items. Candidate sets differ per user, so non-root stages vmap over
users: score(user_repr[i:i+1], take_reprs(cache, cand_ids[i])). Each distinct `encode_users` runs
once per batch, however many stages share it.

Item layout: the item stage's reprs are stored leaf-major (`leaf_major_items`): the items of
each leaf are consecutive rows, so the items under the kept leaves are a few contiguous runs and
the per-query gather reads whole runs instead of scattered rows (faster on a CPU for the same
items). Positions map back to item ids through the layout's `order` for exclusion and results.

Candidate lists are compacted: the children (or items) of the kept nodes are laid out back to
back, best-scored node first, in W slots. W defaults to b_{l-1} * (widest node), so nothing is
ever dropped; a smaller `max_candidates` bounds the work per query and drops the trailing
(lowest-scored) nodes' children when they do not fit.

Ensemble: the score that ranks a candidate at stage l is sum_j w[l][j] * s_j, over the scores s_j
of the candidate's ancestors (j < l) and its own (j = l). `level_weights=None` uses only the
current stage's score (w[l] = one-hot at l), so the item ranking is the item scorer's own, and
beam search can be compared with exhaustive scoring of that scorer; "sum" adds all levels; a flat
list of L + 1 weights is HSNN's linear ensemble (row l = its first l + 1 weights, clipped at 0
for the index stages: `_index_stage_row`); or give one row of l + 1 weights per stage (L index
levels, then the item level).

Counts for cost accounting: `stage_scored` [B, L] non-padding nodes scored per level and
`items_scored` [B] non-padding items scored (excluded items included: they are scored, then
masked). Padding slots are computed too (static shapes) but not counted; `BeamSearch.widths`
gives the padded work.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Tuple, Union

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.chunking import padded_chunks
from hsnn_jax.index.published import PublishedIndex
from hsnn_jax.models.scorer import PyTree, Scorer, UserBatch, take_reprs
from hsnn_jax.retrieval.topk import fast_top_k, hit_matrix

Weights = Union[None, str, Sequence[float], Sequence[Sequence[float]]]


@chex.dataclass(frozen=True)
class RetrievalResult:
  """What any retrieval method returns for B queries.

  scores:       [B, K] float32 descending; -inf where fewer than K items were eligible.
  ids:          [B, K] int32 item ids, -1 where the score is -inf.
  items_scored: [B] int32 (user, item) pairs scored by the item-level model.
  stage_scored: [B, S] int32 pairs scored by each earlier stage (S index levels for beam search,
                the cheap prefilter for two-stage retrieval, none for exhaustive).
  """

  scores: chex.Array
  ids: chex.Array
  items_scored: chex.Array
  stage_scored: chex.Array


@dataclasses.dataclass(frozen=True)
class LevelScorer:
  """One stage's scorer and the cached reprs of everything it may score.

  scorer: `encode_users` gives this stage's user repr; `score(u [B], reprs [N]) -> [B, N]`.
  reprs: pytree, every leaf [num_candidates, ...]: node reprs of an index level (indexed by
    node id), or item reprs of the whole corpus (indexed by item id).
  """

  scorer: Scorer
  reprs: PyTree


@dataclasses.dataclass(frozen=True)
class LeafMajorItems:
  """The item stage laid out leaf by leaf (what `BeamSearch` scores items from).

  stage: the item LevelScorer with reprs permuted: row j is item order[j].
  order: [V] int32, the items leaf after leaf, each leaf's in `node_items` order.
  starts: [n_leaves] int32, row of each leaf's first item; counts: [n_leaves] int32 its items.
  """

  stage: LevelScorer
  order: np.ndarray
  starts: np.ndarray
  counts: np.ndarray


def leaf_major_order(index: PublishedIndex) -> np.ndarray:
  """[V] int32: the item ids of node_items leaf after leaf (row-major, padding dropped)."""
  node_items = np.asarray(index.node_items)
  return node_items[node_items >= 0].astype(np.int32)


def leaf_major_items(index: PublishedIndex, item_stage: LevelScorer) -> LeafMajorItems:
  """Permutes item_stage's reprs (leaves [V, ...], by item id) leaf-major for `index`.

  Build it once and pass it to every BeamSearch over the same index and item scorer: each
  LevelScorer passed instead gets its own permuted copy of the reprs.
  """
  order = leaf_major_order(index)
  if order.shape[0] != index.num_items or not np.array_equal(np.sort(order),
                                                             np.arange(index.num_items)):
    raise ValueError("index.node_items must hold every item exactly once")
  counts = (np.asarray(index.node_items) >= 0).sum(axis=1).astype(np.int32)
  starts = (np.cumsum(counts) - counts).astype(np.int32)
  return LeafMajorItems(LevelScorer(item_stage.scorer, take_reprs(item_stage.reprs,
                                                                  jnp.asarray(order))),
                        order, starts, counts)


def encode_ids(scorer: Scorer, ids: np.ndarray, chunk: int = 65536) -> PyTree:
  """scorer.encode_items over ids [N] in fixed-size chunks (one compilation) -> leaves [N, ...]."""
  ids = np.asarray(ids, np.int32)
  encode = jax.jit(scorer.encode_items)
  parts = [jax.tree.map(lambda x, r=real: x[:r], encode(jnp.asarray(ids[rows])))
           for _, rows, real in padded_chunks(ids.shape[0], chunk)]
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)


def item_level_scorer(scorer: Scorer, num_items: int, chunk: int = 65536) -> LevelScorer:
  """The item stage: every corpus item encoded once."""
  return LevelScorer(scorer, encode_ids(scorer, np.arange(num_items), chunk))


def representative_level_scorer(scorer: Scorer, index: PublishedIndex, level: int,
                                chunk: int = 65536) -> LevelScorer:
  """Scores a level's nodes as their representative items (HSNN serving)."""
  return LevelScorer(scorer, encode_ids(scorer, np.asarray(index.representative[level]), chunk))


def members_level_scorer(scorer: Scorer, members: np.ndarray, chunk: int = 65536) -> LevelScorer:
  """Scores node n as the max of the scorer over its R member items members[n] ([n, R] ids).

  Whether a top-K item survives the beam depends on its node ranking high, so a node's score
  should track its best item's; the max over R well-chosen members (`index.publish.top_members`
  by the model's mean score) tracks it far better than one item near the centroid, for R times
  the node-scoring work (`flops_per_pair` says so). R = 1 is a single representative.
  """
  members = np.asarray(members, np.int32)
  num_nodes, r = members.shape
  reprs = jax.tree.map(lambda x: x.reshape((num_nodes, r) + x.shape[1:]),
                       encode_ids(scorer, members.reshape(-1), chunk))

  def score(user, node_reprs):
    """user [B], node_reprs leaves [N, R, ...] -> [B, N]: max over each node's R members."""
    n = jax.tree.leaves(node_reprs)[0].shape[0]
    flat = jax.tree.map(lambda x: x.reshape((n * r,) + x.shape[2:]), node_reprs)
    scores = scorer.score(user, flat)
    return jnp.max(scores.reshape(scores.shape[0], n, r), axis=-1)

  return LevelScorer(dataclasses.replace(scorer, score=score, flops_per_pair=r * scorer.flops_per_pair,
                                         name=f"{scorer.name}_max_of_{r}"), reprs)


def node_embedding_level_scorer(scorer: Scorer, index: PublishedIndex, level: int) -> LevelScorer:
  """Scores a level's nodes by their embeddings [num_nodes, d]. Only meaningful for a scorer
  whose item repr is a [N, d] vector in the space the index was built from (a dot product)."""
  return LevelScorer(scorer, jnp.asarray(index.node_embedding[level], jnp.float32))


def normalize_weights(level_weights: Weights, num_stages: int) -> Tuple[Tuple[float, ...], ...]:
  """The ensemble as one row of weights per stage (see the module docstring).

  None: current stage only; 'sum': all ones; a flat sequence w of num_stages floats (HSNN's
  ensemble, index levels first, item level last): row l = w[:l + 1], so the item stage ranks by
  sum_l w[l] s_l, the score `hsnn.ensemble_scorer` computes; else explicit rows.
  """
  if level_weights is None:
    return tuple(tuple(float(j == l) for j in range(l + 1)) for l in range(num_stages))
  if isinstance(level_weights, str):
    if level_weights != "sum":
      raise ValueError(f"level_weights must be None, 'sum' or rows of floats, got {level_weights!r}")
    return tuple((1.0,) * (l + 1) for l in range(num_stages))
  if all(np.ndim(w) == 0 for w in level_weights):
    flat = tuple(float(w) for w in level_weights)
    if len(flat) != num_stages:
      raise ValueError(f"level_weights needs {num_stages} ensemble weights, got {len(flat)}")
    return tuple(_index_stage_row(flat[:l + 1]) for l in range(num_stages - 1)) + (flat,)
  rows = tuple(tuple(float(w) for w in row) for row in level_weights)
  if len(rows) != num_stages or any(len(row) != l + 1 for l, row in enumerate(rows)):
    raise ValueError(f"level_weights needs {num_stages} rows of lengths 1..{num_stages}, "
                     f"got lengths {[len(r) for r in rows]}")
  return rows


def _index_stage_row(weights: Tuple[float, ...]) -> Tuple[float, ...]:
  """How an index stage ranks its nodes under a flat ensemble: its weights clipped at 0, or its
  own score alone when its own weight is not positive. A negative weight (the ensemble learnt
  to discount a level, e.g. beside a strong frozen base) would rank the nodes worst first; the
  item stage keeps the weights as learnt, so the final ranking is the ensemble's."""
  if weights[-1] <= 0:
    return tuple(float(j == len(weights) - 1) for j in range(len(weights)))
  return tuple(max(w, 0.0) for w in weights)


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Everything static about one search: hashable, a jit static argument."""

  encoders: Tuple  # distinct encode_users callables
  encoder_of: Tuple[int, ...]  # per stage (L levels + items): index into encoders
  scores: Tuple  # per stage: score callable
  beams: Tuple[int, ...]  # per level: nodes kept (clipped to what exists)
  widths: Tuple[int, ...]  # per stage: candidate slots (level 0: num_nodes[0])
  k: int
  weights: Tuple[Tuple[float, ...], ...]
  users_per_step: Optional[int]  # see score_candidates


@flax.struct.dataclass
class _Arrays:
  """children[l] [n_l, C_l] and child_counts[l] [n_l] per non-leaf level; of the leaves,
  item_starts [n] and item_counts [n] (rows of the leaf-major item reprs) and item_order [V]
  (item id of each row); reprs per stage (L levels, then the leaf-major items)."""

  children: Tuple[jax.Array, ...]
  child_counts: Tuple[jax.Array, ...]
  item_starts: jax.Array
  item_counts: jax.Array
  item_order: jax.Array
  reprs: Tuple[PyTree, ...]


def _slots(beam: jax.Array, counts: jax.Array, width: int):
  """For `width` slots holding the kept nodes' members back to back: the member's node [B, W]
  (0 where unused), its rank within the node [B, W], the node's position in `beam` [B, W] int32,
  and whether the slot is used [B, W] bool."""
  sizes = jnp.where(beam >= 0, counts[jnp.maximum(beam, 0)], 0)
  ends = jnp.cumsum(sizes, axis=1)
  pos = jnp.arange(width, dtype=ends.dtype)
  slot = jax.vmap(lambda e: jnp.searchsorted(e, pos, side="right"))(ends)
  slot = jnp.minimum(slot, beam.shape[1] - 1).astype(jnp.int32)
  within = pos - (jnp.take_along_axis(ends, slot, axis=1)
                  - jnp.take_along_axis(sizes, slot, axis=1))
  valid = pos[None, :] < ends[:, -1:]
  node = jnp.maximum(jnp.take_along_axis(beam, slot, axis=1), 0)
  return node, within, slot, valid


def expand(beam: jax.Array, table: jax.Array, counts: jax.Array, width: int
           ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Children of the kept nodes, back to back in `width` slots.

  Args:
    beam: [B, b] node ids, -1 = no node.
    table: [n, C] children of each node, left-packed, -1 padded.
    counts: [n] number of children of each node.
    width: static number of slots W.

  Returns:
    cand [B, W] child ids (-1 in unused slots), slot [B, W] int32 position in `beam` of each
    candidate's parent, valid [B, W] bool.
  """
  node, within, slot, valid = _slots(beam, counts, width)
  cand = table[node, jnp.clip(within, 0, table.shape[1] - 1)]
  return jnp.where(valid, cand, -1), slot, valid


def expand_runs(beam: jax.Array, starts: jax.Array, counts: jax.Array, width: int
                ) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """As `expand`, for nodes whose members are the consecutive rows starts[n] .. + counts[n]:
  cand [B, W] holds row numbers (-1 in unused slots)."""
  node, within, slot, valid = _slots(beam, counts, width)
  return jnp.where(valid, starts[node] + within, -1), slot, valid


def as_exclusions(exclude: Optional[jax.Array], batch: int) -> jax.Array:
  """[B, E] int32 item ids to exclude (-1 padded); None -> [B, 1] of -1."""
  if exclude is None:
    return jnp.full((batch, 1), -1, jnp.int32)
  chex.assert_shape(exclude, (batch, None))
  return jnp.asarray(exclude, jnp.int32)


def score_candidates(score, user_repr: PyTree, reprs: PyTree, cand: jax.Array,
                     users_per_step: Optional[int] = None) -> jax.Array:
  """Per-user candidate scores: user_repr leaves [B, ...], cand [B, W] -> [B, W] float32.

  Row i is score(user_repr[i:i+1], reprs[cand[i]]); -1 candidates score reprs[0] (mask them).
  users_per_step: None vmaps over all B users at once; n scores n users at a time (vmapped) in a
  `lax.map` over the batch. Same result. On a CPU, one user at a time keeps its [W, ...] gather
  in cache and is much faster for dot products (batched gathers and batched matvecs are slow
  there); accelerators want the full vmap.
  """
  def one(user, ids):
    return score(jax.tree.map(lambda x: x[None], user), take_reprs(reprs, ids))[0]

  if users_per_step is None or users_per_step >= cand.shape[0]:
    return jax.vmap(one)(user_repr, cand).astype(jnp.float32)
  return jax.lax.map(lambda args: one(*args), (user_repr, cand),
                     batch_size=None if users_per_step == 1 else users_per_step
                     ).astype(jnp.float32)


def resolve_users_per_step(value: Union[None, int, str]) -> Optional[int]:
  """`score_candidates`' users_per_step from a setting: 'auto' is 1 on a CPU backend, else None."""
  if value == "auto":
    return 1 if jax.default_backend() == "cpu" else None
  if value is not None and (not isinstance(value, int) or value < 1):
    raise ValueError(f"users_per_step must be None, 'auto' or an int >= 1, got {value!r}")
  return value


def _keep(combined: jax.Array, ids: jax.Array, path: jax.Array, width: int):
  """Top `width` of combined [B, W] -> (ids [B, width] with -1 for -inf, path rows)."""
  top, pos = fast_top_k(combined, width)
  kept = jnp.where(jnp.isneginf(top), -1, jnp.take_along_axis(ids, pos, axis=1))
  return top, kept, jnp.take_along_axis(path, pos[..., None], axis=1)


def _stage(spec: _Spec, stage: int, user_reprs, reprs, cand, valid, parent_path, slot):
  """Scores one stage's candidates; returns (combined [B, W], path [B, W, stage + 1])."""
  user = user_reprs[spec.encoder_of[stage]]
  s = jnp.where(valid, score_candidates(spec.scores[stage], user, reprs, cand,
                                        spec.users_per_step), -jnp.inf)
  path = jnp.concatenate([jnp.take_along_axis(parent_path, slot[..., None], axis=1),
                          s[..., None]], axis=2)
  combined = jnp.einsum("bwl,l->bw", path, jnp.asarray(spec.weights[stage], jnp.float32))
  return jnp.where(valid, combined, -jnp.inf), path


@functools.partial(jax.jit, static_argnums=0)
def _search(spec: _Spec, arrays: _Arrays, users: UserBatch, exclude: jax.Array
            ) -> RetrievalResult:
  num_levels = len(spec.beams)
  batch = users.user.shape[0]
  user_reprs = [encode(users) for encode in spec.encoders]

  root = spec.scores[0](user_reprs[spec.encoder_of[0]], arrays.reprs[0]).astype(jnp.float32)
  chex.assert_shape(root, (batch, spec.widths[0]))
  path = root[..., None]
  combined = jnp.einsum("bwl,l->bw", path, jnp.asarray(spec.weights[0], jnp.float32))
  ids = jnp.broadcast_to(jnp.arange(spec.widths[0], dtype=jnp.int32), root.shape)
  _, beam, path = _keep(combined, ids, path, spec.beams[0])
  counted = [jnp.full((batch,), spec.widths[0], jnp.int32)]

  for level in range(1, num_levels):
    cand, slot, valid = expand(beam, arrays.children[level - 1], arrays.child_counts[level - 1],
                               spec.widths[level])
    combined, path = _stage(spec, level, user_reprs, arrays.reprs[level], cand, valid, path, slot)
    counted.append(jnp.sum(valid, axis=1, dtype=jnp.int32))
    _, beam, path = _keep(combined, cand, path, spec.beams[level])

  rows, slot, valid = expand_runs(beam, arrays.item_starts, arrays.item_counts, spec.widths[-1])
  items_scored = jnp.sum(valid, axis=1, dtype=jnp.int32)
  item_ids = jnp.where(valid, arrays.item_order[jnp.maximum(rows, 0)], -1)
  valid &= ~hit_matrix(item_ids, exclude)
  combined, _ = _stage(spec, num_levels, user_reprs, arrays.reprs[-1], rows, valid, path, slot)
  k = min(spec.k, spec.widths[-1])
  scores, pos = fast_top_k(combined, k)
  ids = jnp.where(jnp.isneginf(scores), -1, jnp.take_along_axis(item_ids, pos, axis=1))
  if k < spec.k:
    scores = jnp.pad(scores, ((0, 0), (0, spec.k - k)), constant_values=-jnp.inf)
    ids = jnp.pad(ids, ((0, 0), (0, spec.k - k)), constant_values=-1)
  return RetrievalResult(scores=scores, ids=ids, items_scored=items_scored,
                         stage_scored=jnp.stack(counted, axis=1))


class BeamSearch:
  """A compiled hierarchical beam search over one index with fixed scorers and beam widths.

  Args:
    index: the published index (L levels).
    level_scorers: L LevelScorers, coarsest first; reprs of level l have num_nodes[l] rows.
    item_scorer: the item stage: `leaf_major_items(index, stage)`, shared by every search over
      this index, or the LevelScorer itself (reprs with num_items rows, by item id), laid out
      leaf-major here (a copy of its reprs per BeamSearch).
    beam_widths: L ints, nodes kept per level (b_{L-1} leaves are expanded into items).
    k: results per query.
    level_weights: the ensemble (module docstring): None, 'sum', L + 1 weights, or L + 1 rows.
    max_candidates: optional L ints, candidate slots per query for levels 1..L-1 and the item
      level; None (or an entry <= 0) means every child of every kept node fits.
    users_per_step: how many users' candidates are scored together (`score_candidates`): None
      vmaps the whole batch; 'auto' is 1 on a CPU backend and None elsewhere.

  Call with users (B) and optional exclude [B, E] int32 (-1 padded). The jit cache is keyed on
  this object's scorers, so reuse the object: same shapes never retrace.
  """

  def __init__(self, index: PublishedIndex, level_scorers: Sequence[LevelScorer],
               item_scorer: Union[LevelScorer, LeafMajorItems], beam_widths: Sequence[int], k: int,
               level_weights: Weights = None,
               max_candidates: Optional[Sequence[int]] = None,
               users_per_step: Union[None, int, str] = "auto"):
    num_levels = index.num_levels
    users_per_step = resolve_users_per_step(users_per_step)
    if len(level_scorers) != num_levels or len(beam_widths) != num_levels:
      raise ValueError(f"need {num_levels} level scorers and beam widths, got "
                       f"{len(level_scorers)} and {len(beam_widths)}")
    if min(beam_widths) < 1 or k < 1:
      raise ValueError(f"beam widths and k must be >= 1, got {tuple(beam_widths)}, k={k}")
    if max_candidates is not None and len(max_candidates) != num_levels:
      raise ValueError(f"max_candidates needs {num_levels} entries, got {len(max_candidates)}")
    if isinstance(item_scorer, LevelScorer):
      item_scorer = leaf_major_items(index, item_scorer)
    elif not (np.array_equal(item_scorer.order, leaf_major_order(index))):
      raise ValueError("item_scorer was laid out leaf-major for another index")
    items = item_scorer
    stages = list(level_scorers) + [items.stage]
    rows = [index.num_nodes[l] for l in range(num_levels)] + [index.num_items]
    for l, (stage, n) in enumerate(zip(stages, rows)):
      leading = {int(x.shape[0]) for x in jax.tree.leaves(stage.reprs)}
      if leading != {n}:
        raise ValueError(f"stage {l} reprs have leading dims {leading}, expected {n}")
    tables = [np.asarray(c) for c in index.children] + [np.asarray(index.node_items)]
    beams, widths = [min(int(beam_widths[0]), rows[0])], [rows[0]]
    for l, table in enumerate(tables):
      width = beams[-1] * table.shape[1]
      if max_candidates is not None and max_candidates[l] > 0:
        width = min(width, int(max_candidates[l]))
      widths.append(width)
      if l + 1 < num_levels:
        beams.append(min(int(beam_widths[l + 1]), width))
    encoders = []
    for s in stages:
      if not any(s.scorer.encode_users is e for e in encoders):
        encoders.append(s.scorer.encode_users)
    self.spec = _Spec(
        encoders=tuple(encoders),
        encoder_of=tuple(next(i for i, e in enumerate(encoders) if s.scorer.encode_users is e)
                         for s in stages),
        scores=tuple(s.scorer.score for s in stages), beams=tuple(beams), widths=tuple(widths),
        k=int(k), weights=normalize_weights(level_weights, num_levels + 1),
        users_per_step=users_per_step)
    self.arrays = _Arrays(
        children=tuple(jnp.asarray(t) for t in tables[:-1]),
        child_counts=tuple(jnp.asarray((t >= 0).sum(1).astype(np.int32)) for t in tables[:-1]),
        item_starts=jnp.asarray(items.starts), item_counts=jnp.asarray(items.counts),
        item_order=jnp.asarray(items.order), reprs=tuple(s.reprs for s in stages))
    self.scorers = tuple(s.scorer for s in stages)

  @property
  def widths(self) -> Tuple[int, ...]:
    """Candidate slots computed per query at each stage (L levels, then items), padding included."""
    return self.spec.widths

  def __call__(self, users: UserBatch, exclude: Optional[jax.Array] = None) -> RetrievalResult:
    return _search(self.spec, self.arrays, users, as_exclusions(exclude, users.user.shape[0]))
