"""Retrieval losses over a batch of B positives and a shared candidate set.

Candidates are the batch's own positives (in-batch negatives) followed by S uniform negatives:
logits [B, B + S], where column b is row b's positive. Candidates equal to a row's positive
(accidental hits) are masked out of that row's negatives.

logQ correction (Yi et al., 2019): sampled softmax is biased towards popular items when
negatives are drawn in proportion to popularity; subtracting log of each candidate's sampling
probability removes that bias. In-batch candidates were drawn with probability q_j (the item's
share of training pairs) B times; uniform ones with probability 1/I, S times.

Full softmax ('full_softmax') scores every item of the corpus instead of a sample, which is
cheap at 10^4-10^5 items: each row's user is scored against all I items, and every one of the
user's training items is a positive against all the items the user never engaged with,
  loss(u) = mean over positives i of -log(exp(s_ui) / (exp(s_ui) + sum_{j not in P_u} exp(s_uj))),
so one row trains on all of its user's n_u pairs at the price of one [I] logit row. Sequential
towers use the plain cross-entropy over all items at every window position (`next_item_full_loss`).

Cosine contrastive loss (CCL, SimpleX, Mao et al., 2021) works on cosines rather than logits:
(1 - cos(u, i+)) + w * mean over negatives of max(0, cos(u, j) - m); only negatives closer than
the margin m count, so w and m set how hard the model pushes the nearest wrong items away.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax", "bpr", "bce", "ccl", "full_softmax")
CCL_NEGATIVES = ("uniform", "all")  # ccl: the S uniform negatives only, or in-batch ones too
_NEG = -1e9


def known_candidates(known_items, candidates):
  """[B, C] bool: True where candidate c is one of row b's known items.

  known_items [B, H] int32 (-1 padded), e.g. each row's user's training items; candidates [C].
  Sorts the C candidates once and binary-searches the B*H known items among them, so the cost
  is O((B*H + C) log C + B*C), never a [B, C, H] comparison.
  """
  order = jnp.argsort(candidates)
  ranked = candidates[order]
  group = jnp.searchsorted(ranked, candidates, side="left")  # [C] first slot of each value
  slot = jnp.clip(jnp.searchsorted(ranked, known_items, side="left"), 0, ranked.shape[0] - 1)
  found = (ranked[slot] == known_items) & (known_items >= 0)  # [B, H]
  rows = jnp.broadcast_to(jnp.arange(known_items.shape[0])[:, None], known_items.shape)
  hit = jnp.zeros((known_items.shape[0], ranked.shape[0]), bool).at[rows, slot].max(found)
  return hit[:, group]


def candidate_mask(positives, candidates, known=None):
  """[B, C] bool: True where a candidate may act as a negative for the row (diagonal kept).
  known [B, C] bool or None: candidates also excluded (e.g. the user's other training items)."""
  b = positives.shape[0]
  hit = positives[:, None] == candidates[None, :]
  if known is not None:
    hit = hit | known
  diag = jnp.zeros_like(hit).at[jnp.arange(b), jnp.arange(b)].set(True)
  return ~hit | diag


def logq_offsets(positives, negatives, item_logq, num_items):
  """[B + S] log(expected count of each candidate in the sample): subtract from logits."""
  b, s = positives.shape[0], negatives.shape[0]
  in_batch = item_logq[positives] + jnp.log(float(b))
  uniform = jnp.full((s,), jnp.log(float(s) / num_items))
  return jnp.concatenate([in_batch, uniform])


def _row_mean(per_row, weights):
  """Mean of per_row [B], weighted by weights [B] (None: unweighted)."""
  if weights is None:
    return jnp.mean(per_row)
  return jnp.sum(per_row * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def retrieval_loss(logits, positives, candidates, *, kind: str, logq=None, weights=None,
                   known=None):
  """Mean loss over the batch. logits [B, C] with C = B + S; positives [B]; candidates [C];
  weights [B] or None: per-row weights of the softmax mean (e.g. `user_weights`);
  known [B, C] bool or None: candidates never used as the row's negatives."""
  chex.assert_rank(logits, 2)
  b = logits.shape[0]
  valid = candidate_mask(positives, candidates, known)
  pos = logits[jnp.arange(b), jnp.arange(b)]
  neg_mask = valid.at[jnp.arange(b), jnp.arange(b)].set(False)
  if kind == "softmax":
    z = logits - logq[None, :] if logq is not None else logits
    z = jnp.where(valid, z, _NEG)
    return _row_mean(jax.nn.logsumexp(z, axis=1) - z[jnp.arange(b), jnp.arange(b)], weights)
  if kind == "bpr":
    per = -jax.nn.log_sigmoid(pos[:, None] - logits)
    return jnp.sum(per * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0)
  if kind == "bce":
    neg = optax.sigmoid_binary_cross_entropy(logits, jnp.zeros_like(logits))
    pos_loss = optax.sigmoid_binary_cross_entropy(pos, jnp.ones_like(pos))
    return jnp.mean(pos_loss) + jnp.sum(neg * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0)
  if kind == "ccl":
    raise ValueError("loss kind 'ccl' takes cosines, not logits: call cosine_contrastive_loss")
  raise ValueError(f"loss kind {kind!r}: expected one of {LOSSES}")


def cosine_contrastive_loss(cosines, positives, candidates, *, margin: float,
                            negative_weight: float, negatives: str = "uniform", weights=None,
                            known=None):
  """SimpleX's CCL, mean over the batch. cosines [B, C] in [-1, 1] with C = B + S (column b is
  row b's positive); positives [B]; candidates [C]. negatives: 'uniform' uses the last S columns
  only, 'all' the in-batch ones too; accidental hits are never negatives. weights [B] or None;
  known [B, C] bool or None as in `retrieval_loss`."""
  chex.assert_rank(cosines, 2)
  b = cosines.shape[0]
  neg_mask = candidate_mask(positives, candidates, known).at[jnp.arange(b), jnp.arange(b)].set(False)
  if negatives == "uniform":
    neg_mask = neg_mask.at[:, :b].set(False)
  elif negatives != "all":
    raise ValueError(f"ccl negatives {negatives!r}: expected one of {CCL_NEGATIVES}")
  pos = cosines[jnp.arange(b), jnp.arange(b)]
  hinge = jnp.sum(jax.nn.relu(cosines - margin) * neg_mask, 1) / jnp.maximum(jnp.sum(neg_mask, 1), 1.0)
  return _row_mean(1.0 - pos + negative_weight * hinge, weights)


def user_weights(users, pair_users, power: float):
  """[B] weights n_u^-power (normalised to mean 1 over the batch), n_u = the user's training
  pairs: power 1 turns pair-uniform batches into user-uniform ones in expectation.
  users [B]; pair_users [nnz] the user of every training pair, sorted (CSR order)."""
  counts = (jnp.searchsorted(pair_users, users, side="right")
            - jnp.searchsorted(pair_users, users, side="left"))
  w = jnp.maximum(counts, 1).astype(jnp.float32) ** (-power)
  return w / jnp.mean(w)


def next_item_loss(position_reprs, item_reprs_fn, history, positives, negatives, *,
                   num_items: int, temperature: float):
  """SASRec-style sampled softmax at every position of a right-aligned window.

  position_reprs [B, H, D]: the user tower after each history item; position i predicts the
  next item (history[:, i + 1], or the batch positive after the last slot). negatives [S] are
  shared uniform samples, corrected by log(S / num_items) (logQ for uniform sampling).
  item_reprs_fn(ids) -> [..., D]. Returns the mean over positions holding a real item.
  """
  targets = jnp.concatenate([history[:, 1:], positives[:, None]], axis=1)  # [B, H]
  valid = (history >= 0) & (targets >= 0)
  pos = jnp.sum(position_reprs * item_reprs_fn(jnp.maximum(targets, 0)), -1) / temperature
  neg = jnp.einsum("bhd,sd->bhs", position_reprs, item_reprs_fn(negatives)) / temperature
  neg = neg - jnp.log(negatives.shape[0] / num_items)
  neg = jnp.where(negatives[None, None, :] == targets[..., None], _NEG, neg)  # accidental hits
  per_position = jax.nn.logsumexp(jnp.concatenate([pos[..., None], neg], -1), -1) - pos
  return jnp.sum(per_position * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def full_softmax_loss(logits, positive_mask, weights=None):
  """Mean over rows of the mean over the row's positives of -log p(positive | positive and
  all of the row's non-positives). logits [B, I] over the whole corpus; positive_mask [B, I]
  bool (rows without a positive count zero); weights [B] or None as in `retrieval_loss`."""
  chex.assert_equal_shape([logits, positive_mask])
  neg_lse = jax.nn.logsumexp(jnp.where(positive_mask, _NEG, logits), axis=1, keepdims=True)
  per_pair = jax.nn.softplus(neg_lse - logits)  # = -log(e^s / (e^s + sum_neg e^s'))
  count = jnp.sum(positive_mask, 1)
  per_row = jnp.sum(jnp.where(positive_mask, per_pair, 0.0), 1) / jnp.maximum(count, 1)
  if weights is None:
    weights = jnp.ones_like(per_row)
  return _row_mean(per_row, weights * (count > 0))


def items_mask(item_lists, num_items: int):
  """[B, I] bool: True at each row's items. item_lists [B, L] int32, -1 padded."""
  rows = jnp.broadcast_to(jnp.arange(item_lists.shape[0])[:, None], item_lists.shape)
  mask = jnp.zeros((item_lists.shape[0], num_items), bool)
  return mask.at[rows, jnp.maximum(item_lists, 0)].max(item_lists >= 0)


def next_item_full_loss(position_reprs, item_table, history, positives, *, temperature: float,
                        max_targets: int = 0):
  """Cross-entropy over the whole corpus at every position of a right-aligned window.

  position_reprs [B, H, D] as in `next_item_loss`; item_table [I, D] every item's repr.
  max_targets > 0: only the first max_targets real positions (row-major) are scored, as a static
  [max_targets, I] logit block instead of [B, H, I]: windows are mostly padding when sequences
  are shorter than H, and the logits are the step's cost. Positions past it are dropped (the
  loss is then the mean over the kept ones); size it above the batch's usual count.
  Returns the mean over the scored positions holding a real item.
  """
  targets = jnp.concatenate([history[:, 1:], positives[:, None]], axis=1)  # [B, H]
  valid = (history >= 0) & (targets >= 0)
  reprs, targets, valid = (position_reprs.reshape(-1, position_reprs.shape[-1]),
                           targets.reshape(-1), valid.reshape(-1))
  if 0 < max_targets < valid.shape[0]:
    keep = jnp.argsort(~valid, stable=True)[:max_targets]  # real positions first
    reprs, targets, valid = reprs[keep], targets[keep], valid[keep]
  logits = reprs @ item_table.T / temperature  # [T, I]
  target_logit = jnp.take_along_axis(logits, jnp.maximum(targets, 0)[:, None], -1)[:, 0]
  per_position = jax.nn.logsumexp(logits, -1) - target_logit
  return jnp.sum(per_position * valid) / jnp.maximum(jnp.sum(valid), 1.0)
