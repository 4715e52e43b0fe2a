"""Retrieval losses over a batch of B positives and a shared candidate set.

Candidates are the batch's own positives (in-batch negatives) followed by S uniform negatives:
logits [B, B + S], where column b is row b's positive. Candidates equal to a row's positive
(accidental hits) are masked out of that row's negatives.

logQ correction (Yi et al., 2019): sampled softmax is biased towards popular items when
negatives are drawn in proportion to popularity; subtracting log of each candidate's sampling
probability removes that bias. In-batch candidates were drawn with probability q_j (the item's
share of training pairs) B times; uniform ones with probability 1/I, S times.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax", "bpr", "bce")
_NEG = -1e9


def candidate_mask(positives, candidates):
  """[B, C] bool: True where a candidate may act as a negative for the row (diagonal kept)."""
  b = positives.shape[0]
  hit = positives[:, None] == candidates[None, :]
  diag = jnp.zeros_like(hit).at[jnp.arange(b), jnp.arange(b)].set(True)
  return ~hit | diag


def logq_offsets(positives, negatives, item_logq, num_items):
  """[B + S] log(expected count of each candidate in the sample): subtract from logits."""
  b, s = positives.shape[0], negatives.shape[0]
  in_batch = item_logq[positives] + jnp.log(float(b))
  uniform = jnp.full((s,), jnp.log(float(s) / num_items))
  return jnp.concatenate([in_batch, uniform])


def retrieval_loss(logits, positives, candidates, *, kind: str, logq=None):
  """Mean loss over the batch. logits [B, C] with C = B + S; positives [B]; candidates [C]."""
  chex.assert_rank(logits, 2)
  b = logits.shape[0]
  valid = candidate_mask(positives, candidates)
  pos = logits[jnp.arange(b), jnp.arange(b)]
  neg_mask = valid.at[jnp.arange(b), jnp.arange(b)].set(False)
  if kind == "softmax":
    z = logits - logq[None, :] if logq is not None else logits
    z = jnp.where(valid, z, _NEG)
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - z[jnp.arange(b), jnp.arange(b)])
  if kind == "bpr":
    per = -jax.nn.log_sigmoid(pos[:, None] - logits)
    return jnp.sum(per * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0)
  if kind == "bce":
    neg = optax.sigmoid_binary_cross_entropy(logits, jnp.zeros_like(logits))
    pos_loss = optax.sigmoid_binary_cross_entropy(pos, jnp.ones_like(pos))
    return jnp.mean(pos_loss) + jnp.sum(neg * neg_mask) / jnp.maximum(jnp.sum(neg_mask), 1.0)
  raise ValueError(f"loss kind {kind!r}: expected one of {LOSSES}")


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
