"""Test-time training (METHOD.md §5): fine-tune a trained retriever on (user, index node) examples.

The nodes of a hierarchical index label "a small set of high-quality data": for a user and an
item the user is known to like, the item's ancestors become (user, node) positives. After
fine-tuning on them the model is evaluated again, full corpus, exactly as the trainer does.

Sampling rule [ours], on the host, once. Known items: the user's train items, plus the valid
ones when the target split is 'test' (the history the evaluation itself feeds the model). Levels
0..D-1 with D = min(depth, index levels), counted from the coarsest. For every known (user, item
v) and level l < D, the pair (user, item_path[v, l]) is drawn with probability rate[l] (one
Bernoulli per pair and level from `seed`), then duplicates of (user, level, node) are dropped.
So a node holding k of a user's items survives with probability 1 - (1 - rate)^k: the rate thins
out the weakly supported ancestors first, and at coarse levels (large k) it matters little.

Examples, padded so the step has static shapes (E = the largest level's count, at least 1):
  users [D, E] int32, nodes [D, E] int32 (-1 padding), counts [D] int32 valid entries per level.

Loss per step (B = batch_size; all levels are scored with full softmax, they are small):
  sum_l  mean_b CE(softmax over the N_l nodes of level l, positive = the example's node)
  + anchor_weight * sampled softmax of B training pairs against themselves and S uniform
    negatives (the model's original item-level objective, logQ-corrected; keeps it from drifting)
A node is scored by the model's own retrieval scorer (`node_repr`, see node_inputs):
  'representative': on the node's representative item (index.representative[l]); any model;
  'embedding': on the node's embedding as a fixed item repr; a two-tower on its own index;
  'auto' (default): 'embedding' where it applies, else 'representative'.
On the tiny two-tower (notebooks/test_time_training.ipynb) 'representative' lowered recall: one
item's score carries that item's popularity, not the node's. For 'hsnn' runs the scorer is the
item-level MoNN: the run's ensemble scorer publishes its index on the host, so it cannot be
differentiated. Evaluation always uses the run's own scorer (run_evaluation).

Trainable parameters (`params`): 'all', or 'user' (the default): only the leaves that the user
side alone reads, as the run's task says (`RetrievalTask.is_user_param`, from each model's
USER_SIDE_PARAMS: the two-tower user id / history projection / sequence tower, the MoNN user
embeddings and user tower, the OverArch's user-side projections, HSNN's user head). Shared item tables (histories are pooled from the item table) stay frozen, so
the corpus's item representations, and any index built on them, are unchanged. Adam with a
constant learning rate; all steps run in one jitted scan.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from hsnn_jax.data.types import CSR, RecDataset, concat_rows
from hsnn_jax.index.kmeans import kmeans_index
from hsnn_jax.index.published import PublishedIndex
from hsnn_jax.models.scorer import Scorer, UserBatch
from hsnn_jax.retrieval.beam_search import encode_ids
from hsnn_jax.train import losses
from hsnn_jax.train.sampler import DeviceInteractions, sample_batch, user_batch_for_eval
from hsnn_jax.train.trainer import Trained, run_evaluation

PARAM_SETS = ("user", "all")
NODE_REPRS = ("auto", "representative", "embedding")


def default_ttt_config(**fields) -> ml_collections.ConfigDict:
  """The test-time-training knobs, with `fields` set over the defaults. Not type-locked, so
  `rate` may become a tuple; validate_config checks every value."""
  c = ml_collections.ConfigDict(type_safe=False)
  c.depth = 2  # φ_DEP: index levels 0..depth-1 (coarsest first) give examples; 2 reported best
  c.rate = 0.6  # φ_IR in (0, 1]: one float, or a tuple with one rate per level (0.4-0.8 reported)
  c.steps = 100
  c.learning_rate = 1e-3
  c.batch_size = 256  # examples per level per step, and anchor pairs per step
  c.num_negatives = 256  # uniform negatives of the anchor loss
  c.params = "user"  # 'user': only user-side parameters move; 'all'
  c.anchor_weight = 1.0  # weight of the original item-level loss; 0 = node examples only
  c.node_repr = "auto"  # how a node is scored: 'representative' | 'embedding' | 'auto'
  c.seed = 0
  c.update(fields)
  return c


def _is_int(x) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def validate_config(cfg: ml_collections.ConfigDict, num_levels: int | None = None) -> None:
  """Raises ValueError naming every out-of-range field. With `num_levels` (the index's), also
  checks that a per-level rate tuple covers every level used."""
  errors = []
  if not _is_int(cfg.depth) or cfg.depth < 1:
    errors.append(f"depth={cfg.depth!r}: must be an int >= 1")
  rates = cfg.rate if isinstance(cfg.rate, (tuple, list)) else (cfg.rate,)
  if not rates or not all(isinstance(r, (int, float)) and not isinstance(r, bool)
                          and 0 < r <= 1 for r in rates):
    errors.append(f"rate={cfg.rate!r}: must be a float in (0, 1] or a tuple of them")
  elif (isinstance(cfg.rate, (tuple, list)) and num_levels is not None and _is_int(cfg.depth)
        and len(rates) < min(cfg.depth, num_levels)):
    errors.append(f"rate={cfg.rate!r}: one rate per level needs {min(cfg.depth, num_levels)} "
                  f"entries (depth {cfg.depth}, {num_levels} index levels)")
  for name, low in (("steps", 1), ("batch_size", 1), ("num_negatives", 0)):
    if not _is_int(cfg[name]) or cfg[name] < low:
      errors.append(f"{name}={cfg[name]!r}: must be an int >= {low}")
  if not (isinstance(cfg.learning_rate, (int, float)) and math.isfinite(cfg.learning_rate)
          and cfg.learning_rate > 0):
    errors.append(f"learning_rate={cfg.learning_rate!r}: must be a finite number > 0")
  if cfg.params not in PARAM_SETS:
    errors.append(f"params={cfg.params!r}: expected one of {PARAM_SETS}")
  if not (isinstance(cfg.anchor_weight, (int, float)) and math.isfinite(cfg.anchor_weight)
          and cfg.anchor_weight >= 0):
    errors.append(f"anchor_weight={cfg.anchor_weight!r}: must be a finite number >= 0")
  if cfg.node_repr not in NODE_REPRS:
    errors.append(f"node_repr={cfg.node_repr!r}: expected one of {NODE_REPRS}")
  if not _is_int(cfg.seed) or cfg.seed < 0:
    errors.append(f"seed={cfg.seed!r}: must be an int >= 0")
  if errors:
    raise ValueError("Invalid test-time-training config:\n  " + "\n  ".join(errors))


def level_rates(cfg: ml_collections.ConfigDict, num_levels: int) -> tuple[float, ...]:
  """The rate of each level used: min(depth, num_levels) floats."""
  used = min(cfg.depth, num_levels)
  rates = tuple(cfg.rate) if isinstance(cfg.rate, (tuple, list)) else (cfg.rate,) * used
  return tuple(float(r) for r in rates[:used])


@flax.struct.dataclass
class NodeExamples:
  """(user, node) positives of D levels, padded to E: users, nodes [D, E] int32 (-1 padding);
  counts [D] int32, the valid entries of each level (they come first)."""

  users: jax.Array
  nodes: jax.Array
  counts: jax.Array

  @property
  def mask(self) -> jax.Array:
    return self.users >= 0


def sample_examples(known: CSR, item_path: np.ndarray, rates: Sequence[float],
                    seed: int) -> NodeExamples:
  """The sampling rule of the module docstring, on the host (NumPy, vectorised).

  Args:
    known: [users] rows of known item ids per user.
    item_path: [V, L] int node id of every item at every level (PublishedIndex.item_path).
    rates: one keep probability per level used; D = len(rates) <= L.
    seed: level l draws from np.random.default_rng([seed, l]).

  Returns:
    NodeExamples of NumPy arrays, each level's pairs sorted by (user, node).
  """
  item_path = np.asarray(item_path)
  chex.assert_rank(item_path, 2)
  if len(rates) > item_path.shape[1]:
    raise ValueError(f"{len(rates)} rates for an index of {item_path.shape[1]} levels")
  users, items = known.row_ids().astype(np.int64), known.values
  per_level = []
  for l, rate in enumerate(rates):
    keep = np.random.default_rng([seed, l]).random(users.shape[0]) < rate
    num_nodes = int(item_path[:, l].max()) + 1
    pairs = np.unique(users[keep] * num_nodes + item_path[items[keep], l])
    per_level.append((pairs // num_nodes, pairs % num_nodes))
  counts = np.array([u.shape[0] for u, _ in per_level], np.int32)
  width = max(int(counts.max(initial=0)), 1)
  out_users = np.full((len(rates), width), -1, np.int32)
  out_nodes = np.full((len(rates), width), -1, np.int32)
  for l, (u, n) in enumerate(per_level):
    out_users[l, :u.shape[0]], out_nodes[l, :n.shape[0]] = u, n
  return NodeExamples(users=out_users, nodes=out_nodes, counts=counts)


def known_items(ds: RecDataset, split: str) -> CSR:
  """Every user's known items when ranking `split`: train, and valid too for 'test'."""
  if split not in ("test", "valid"):
    raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
  if split == "test" and ds.valid.nnz:
    return concat_rows([ds.train, ds.valid], np.arange(ds.num_users))
  return ds.train


def trainable_mask(params: Any, which: str, is_user_param: Callable[[Any], bool]) -> Any:
  """A pytree of Python bools like `params`: True where `which` ('user' | 'all') trains;
  is_user_param: the run's task's (RetrievalTask.is_user_param)."""
  if which not in PARAM_SETS:
    raise ValueError(f"params={which!r}: expected one of {PARAM_SETS}")
  return jax.tree_util.tree_map_with_path(lambda p, _: which == "all" or is_user_param(p),
                                          params)


def ttt_scorer_fn(trained: Trained) -> Callable[[Any], Scorer]:
  """params -> Scorer, differentiable in params: what the run's task fine-tunes (its own
  scorer, or for an 'hsnn' run its item-level MoNN)."""
  return trained.task.scorer_of_params(trained.aux)


def _gather_users(users: UserBatch, ids: jax.Array) -> UserBatch:
  return jax.tree.map(lambda x: jnp.take(x, ids, axis=0), users)


def node_logits(scorer: Scorer, users: UserBatch, nodes: jax.Array) -> jax.Array:
  """[B, N] logits of B users against N nodes given as representative item ids [N] int32 or
  as item reprs [N, d] float ('embedding')."""
  item_repr = scorer.encode_items(nodes) if jnp.issubdtype(nodes.dtype, jnp.integer) else nodes
  return scorer.score(scorer.encode_users(users), item_repr)


def node_inputs(scorer: Scorer, index: PublishedIndex, num_levels: int,
                node_repr: str) -> tuple[tuple, str]:
  """What stands in for the nodes of levels 0..num_levels-1, and the resolved `node_repr`.

  'representative': index.representative[l] [N_l] int32, encoded by the scorer in every step.
  'embedding': index.node_embedding[l] [N_l, d] as item reprs, each rescaled to the level's
    mean norm of the representatives' reprs (unit norm for a cosine two-tower). Constants: with
    params='all' they do not follow the item tower. Only for scorers whose item repr is a vector
    [N, d] in the index's space (a two-tower model on an index of its own item embeddings).
  'auto': 'embedding' when the scorer's item repr is a vector of the index's width, else
    'representative'.
  """
  reps = tuple(np.asarray(index.representative[l], np.int32) for l in range(num_levels))
  item_repr = jax.eval_shape(scorer.encode_items, jnp.zeros((1,), jnp.int32))
  width = np.asarray(index.node_embedding[0]).shape[1]
  vector_like = isinstance(item_repr, jax.ShapeDtypeStruct) and item_repr.shape == (1, width)
  if node_repr == "auto":
    node_repr = "embedding" if vector_like else "representative"
  if node_repr == "representative":
    return tuple(jnp.asarray(r) for r in reps), node_repr
  if not vector_like:
    raise ValueError(f"node_repr='embedding' needs item reprs [N, {width}] (the index's "
                     f"embedding width); scorer {scorer.name!r} gives {item_repr}")
  out = []
  for l, ids in enumerate(reps):
    emb = np.asarray(index.node_embedding[l], np.float32)
    scale = float(np.mean(np.linalg.norm(np.asarray(encode_ids(scorer, ids)), axis=1)))
    out.append(jnp.asarray(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                           * scale))
  return tuple(out), node_repr


def node_cross_entropy(logits: jax.Array, nodes: jax.Array) -> jax.Array:
  """[B] full-softmax cross-entropy of logits [B, N] with positive nodes [B] (any value if
  padding: the caller masks those rows)."""
  chex.assert_rank([logits, nodes], [2, 1])
  picked = jnp.take_along_axis(logits, jnp.maximum(nodes, 0)[:, None], axis=1)[:, 0]
  return jax.nn.logsumexp(logits, axis=1) - picked


@flax.struct.dataclass
class TTTSetup:
  """What fine-tuning needs (a pytree: jitted functions take it as an argument). D levels,
  U = all users of the dataset.

  examples: NodeExamples [D, E]; nodes: per level, what stands in for its N_l nodes (see
  node_inputs: [N_l] int32 item ids or [N_l, d] item reprs); users: UserBatch [U]
  holding each user's evaluation history; anchor: the training pairs (None if anchor_weight is
  0). Static: history (the sampler's mode), scorer_fn (params -> Scorer), trainable (one bool
  per leaf of params, in tree order).
  """

  examples: NodeExamples
  nodes: tuple
  users: UserBatch
  anchor: DeviceInteractions | None
  history: str = flax.struct.field(pytree_node=False)
  scorer_fn: Callable[[Any], Scorer] = flax.struct.field(pytree_node=False)
  trainable: tuple = flax.struct.field(pytree_node=False)
  node_repr: str = flax.struct.field(pytree_node=False)


def prepare(trained: Trained, index: PublishedIndex, cfg: ml_collections.ConfigDict,
            split: str = "test") -> TTTSetup:
  """Validates cfg against the index and builds the examples and device arrays (host side)."""
  validate_config(cfg, index.num_levels)
  ds = trained.ds
  if index.num_items != ds.num_items:
    raise ValueError(f"the index covers {index.num_items} items, the dataset {ds.num_items}")
  rates = level_rates(cfg, index.num_levels)
  examples = sample_examples(known_items(ds, split), np.asarray(index.item_path), rates, cfg.seed)
  history_len = trained.task.history_len
  scorer_fn = ttt_scorer_fn(trained)
  nodes, node_repr = node_inputs(scorer_fn(trained.params), index, len(rates), cfg.node_repr)
  return TTTSetup(
      examples=jax.tree.map(jnp.asarray, examples), nodes=nodes,
      users=user_batch_for_eval(ds, history_len, include_valid=(split == "test"))(
          np.arange(ds.num_users)),
      anchor=DeviceInteractions.from_dataset(ds, history_len) if cfg.anchor_weight > 0 else None,
      history=trained.task.history, scorer_fn=scorer_fn,
      trainable=tuple(jax.tree.leaves(trainable_mask(trained.params, cfg.params, trained.task.is_user_param))),
      node_repr=node_repr)


def _partition(params, trainable: tuple):
  """(trainable leaves, frozen leaves, merge(trainable, frozen) -> params)."""
  leaves, treedef = jax.tree.flatten(params)
  chex.assert_equal(len(leaves), len(trainable))

  def merge(train, frozen):
    train, frozen = iter(train), iter(frozen)
    return jax.tree.unflatten(treedef, [next(train) if f else next(frozen) for f in trainable])

  return ([x for x, f in zip(leaves, trainable) if f],
          [x for x, f in zip(leaves, trainable) if not f], merge)


def ttt_loss(params, setup: TTTSetup, cfg: ml_collections.ConfigDict, key: jax.Array):
  """One step's loss (module docstring) -> (scalar, {'level_l': CE, 'anchor': ...}). Jit-safe.

  Each level draws batch_size of its examples uniformly (with replacement); an empty level
  contributes 0.
  """
  scorer = setup.scorer_fn(params)
  ex = setup.examples
  chex.assert_rank(ex.users, 2)
  chex.assert_equal_shape([ex.users, ex.nodes])
  num_levels = ex.users.shape[0]
  keys = jax.random.split(key, num_levels + 1)
  total, parts = 0.0, {}
  for l in range(num_levels):  # a handful of levels, each with its own node count
    count = ex.counts[l]
    pick = jnp.floor(jax.random.uniform(keys[l], (cfg.batch_size,))
                     * jnp.maximum(count, 1)).astype(jnp.int32)
    users, nodes = ex.users[l, pick], ex.nodes[l, pick]
    valid = (users >= 0).astype(jnp.float32)
    logits = node_logits(scorer, _gather_users(setup.users, jnp.maximum(users, 0)),
                         setup.nodes[l])
    level = jnp.sum(node_cross_entropy(logits, nodes) * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    parts[f"level_{l}"] = level
    total = total + level
  if setup.anchor is not None:
    batch = sample_batch(keys[-1], setup.anchor, cfg.batch_size, cfg.num_negatives, setup.history)
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    logq = losses.logq_offsets(batch.positives, batch.negatives, setup.anchor.item_logq,
                               setup.anchor.num_items)
    logits = scorer.score(scorer.encode_users(batch.users), scorer.encode_items(candidates))
    anchor = losses.retrieval_loss(logits, batch.positives, candidates, kind="softmax", logq=logq)
    parts["anchor"] = anchor
    total = total + cfg.anchor_weight * anchor
  parts["total"] = total
  return total, parts


def fine_tune(params, setup: TTTSetup, cfg: ml_collections.ConfigDict):
  """cfg.steps Adam steps on the trainable leaves, in one jitted scan; gradients are taken
  only with respect to those leaves.

  Returns (new params, in which the frozen leaves are the very arrays passed in; the loss
  parts of every step {name: [steps] float32}).
  """
  train, frozen, merge = _partition(params, setup.trainable)
  tx = optax.adam(cfg.learning_rate)

  @jax.jit
  def run(train, frozen, setup, key):
    def step(carry, key):
      train, opt_state = carry
      (_, parts), grads = jax.value_and_grad(
          lambda t: ttt_loss(merge(t, frozen), setup, cfg, key), has_aux=True)(train)
      updates, opt_state = tx.update(grads, opt_state, train)
      return (optax.apply_updates(train, updates), opt_state), parts

    (train, _), parts = jax.lax.scan(step, (train, tx.init(train)),
                                     jax.random.split(key, cfg.steps))
    return train, parts

  new_train, parts = run(train, frozen, setup, jax.random.PRNGKey(cfg.seed))
  return merge(new_train, frozen), parts


def node_loss(params, setup: TTTSetup, chunk: int = 4096) -> np.ndarray:
  """[D] mean full-softmax CE over every example of each level (deterministic; nan for a level
  without examples), `chunk` examples at a time."""

  @jax.jit
  def chunk_sum(params, all_users, users, positives, nodes):
    scorer = setup.scorer_fn(params)
    logits = node_logits(scorer, _gather_users(all_users, jnp.maximum(users, 0)), nodes)
    return jnp.sum(jnp.where(users >= 0, node_cross_entropy(logits, positives), 0.0))

  ex = jax.tree.map(np.asarray, setup.examples)
  out = []
  for l in range(ex.users.shape[0]):
    count = int(ex.counts[l])
    chunk_l = max(1, min(chunk, count))
    total = 0.0
    for begin in range(0, count, chunk_l):
      n = min(chunk_l, count - begin)
      users = np.full(chunk_l, -1, np.int32)
      positives = np.zeros(chunk_l, np.int32)
      users[:n], positives[:n] = ex.users[l, begin:begin + n], ex.nodes[l, begin:begin + n]
      total += float(chunk_sum(params, setup.users, users, positives, setup.nodes[l]))
    out.append(total / count if count else float("nan"))
  return np.asarray(out)


def test_time_train(trained: Trained, index: PublishedIndex, cfg: ml_collections.ConfigDict,
                    split: str = "test"):
  """Fine-tuned parameters of `trained` (same structure; aux is unchanged). `split` sets which
  items count as known (see known_items)."""
  setup = prepare(trained, index, cfg, split)
  params, _ = fine_tune(trained.params, setup, cfg)
  return params


def evaluate_ttt(trained: Trained, index: PublishedIndex, cfg: ml_collections.ConfigDict,
                 run_cfg: ml_collections.ConfigDict, split: str = "test",
                 before: dict | None = None) -> dict:
  """Full-corpus metrics before and after test-time training, as in results.json.

  run_cfg: the run's training config (its `eval` section sets ks, exclusions and chunks).
  before: the trained run's metrics on `split` where the caller has them already (a grid over
    TTT settings evaluates the untouched run once); computed here otherwise.
  Returns {'before': metrics, 'after': metrics, 'examples': [count per level],
  'node_loss_before' / 'node_loss_after': [D] mean CE on the examples, 'loss': {part: first
  and last step}, 'node_repr' as resolved, 'seconds': fine-tuning wall time, 'config'}.
  """
  setup = prepare(trained, index, cfg, split)
  task, ds = trained.task, trained.ds
  if before is None:
    before = run_evaluation(task, trained.params, trained.aux, ds, run_cfg, split).metrics
  loss_before = node_loss(trained.params, setup)
  start = time.time()
  params, parts = fine_tune(trained.params, setup, cfg)
  jax.block_until_ready(params)
  seconds = time.time() - start
  after = run_evaluation(task, params, trained.aux, ds, run_cfg, split).metrics
  return {"before": before, "after": after,
          "examples": [int(c) for c in np.asarray(setup.examples.counts)],
          "node_loss_before": loss_before.tolist(),
          "node_loss_after": node_loss(params, setup).tolist(),
          "loss": {k: [float(v[0]), float(v[-1])] for k, v in parts.items()},
          "node_repr": setup.node_repr, "seconds": seconds, "config": cfg.to_dict()}


def item_vectors(scorer: Scorer, num_items: int) -> np.ndarray:
  """[V, d] float32 item embeddings to cluster: the item repr itself, or the flattened item
  tower output of a MoNN-style repr."""
  reprs = encode_ids(scorer, np.arange(num_items))
  vectors = reprs if isinstance(reprs, jax.Array) else getattr(reprs, "tower", None)
  if vectors is None:
    raise ValueError(f"cannot cluster item representations of scorer {scorer.name!r}")
  return np.asarray(vectors, np.float32).reshape(num_items, -1)


def index_for_run(trained: Trained, nodes_per_level: Sequence[int], seed: int = 0,
                  workdir: str | None = None) -> PublishedIndex:
  """The index to take nodes from: an 'hsnn' run's own (<workdir>/index.npz), otherwise a SIL
  index: residual k-means over the trained item embeddings, published."""
  path = os.path.join(workdir, "index.npz") if workdir else None
  if path and os.path.exists(path):
    return PublishedIndex.load(path)
  if trained.task.has_own_index:
    raise ValueError(f"an 'hsnn' run's index is <workdir>/index.npz; not found (workdir "
                     f"{workdir!r})")
  return kmeans_index(jax.random.PRNGKey(seed), item_vectors(trained.scorer(), trained.ds.num_items),
                      nodes_per_level)
