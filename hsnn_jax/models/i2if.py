"""I2IF: inverted-index interaction features for (user, item) pairs, jit-able with fixed shapes.

Item attributes (category, brand, genre, or learned index node ids) are the keys of an inverted
index; the keys of the user's engaged items are the query. Instead of joining users with items,
each user gets a dense key profile once:

  profile[b, k] = share of user b's (non-padded) history items that carry key k      [B, K]

built by a scatter-add of the history's keys. A candidate's pair features are then a gather of
the profile at the candidate's keys [N, A] -> [B, N, A], pooled over the keys: O(B N A), no
O(user x item) join. The pooled-history feature compares keys directly (O(B N H A^2)
comparisons) and averages the history item embeddings that share a key with the candidate.

Key tables are [num_items, A] int32 padded with -1. A key repeated within one item counts once.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

# max, mean and sum over the item's keys of the user's key share, and whether any key matches.
NUM_PAIR_FEATURES = 4


def first_occurrence(keys: jax.Array) -> jax.Array:
  """[..., A] int keys -> [..., A] bool: valid (>= 0) and not equal to an earlier slot."""
  num_slots = keys.shape[-1]
  same = keys[..., :, None] == keys[..., None, :]  # [..., A, A]
  earlier = jnp.tril(jnp.ones((num_slots, num_slots), bool), k=-1)
  return (keys >= 0) & ~jnp.any(same & earlier, axis=-1)


def history_keys(history: jax.Array, item_keys: jax.Array) -> jax.Array:
  """[B, H] item ids (-1 padded), [V, A] keys -> [B, H, A] keys of each history item, -1 padded."""
  chex.assert_rank([history, item_keys], 2)
  keys = jnp.take(item_keys, jnp.maximum(history, 0), axis=0)
  return jnp.where((history >= 0)[..., None], keys, -1)


def user_key_profile(history: jax.Array, item_keys: jax.Array, num_keys: int) -> jax.Array:
  """Share of each user's history carrying each key: [B, H], [V, A] -> [B, num_keys] float32.

  Users with an empty history get an all-zero profile.
  """
  keys = history_keys(history, item_keys)  # [B, H, A]
  valid = first_occurrence(keys)
  rows = jnp.broadcast_to(jnp.arange(keys.shape[0])[:, None, None], keys.shape)
  counts = jnp.zeros((keys.shape[0], num_keys), jnp.float32).at[
      rows, jnp.where(valid, keys, 0)].add(valid.astype(jnp.float32))
  lengths = jnp.maximum(jnp.sum(history >= 0, axis=1), 1).astype(jnp.float32)
  return counts / lengths[:, None]


def candidate_shares(profile: jax.Array, cand_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The user's share at each candidate key: [B, K], [N, A] -> shares [B, N, A], valid [N, A].

  Shares are 0 at padded or repeated key slots.
  """
  chex.assert_rank([profile, cand_keys], 2)
  valid = first_occurrence(cand_keys)
  shares = jnp.take(profile, jnp.where(valid, cand_keys, 0), axis=1, mode="clip")  # [B, N, A]
  return jnp.where(valid, shares, 0.0), valid


def pool_shares(shares: jax.Array, valid: jax.Array) -> jax.Array:
  """[B, N, A] shares, [N, A] valid slots (from `candidate_shares`) -> [B, N, NUM_PAIR_FEATURES]."""
  num_valid = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(jnp.float32)  # [N]
  total = jnp.sum(shares, axis=-1)
  return jnp.stack([
      jnp.max(shares, axis=-1),
      total / num_valid,
      total,
      jnp.any(shares > 0, axis=-1).astype(jnp.float32),
  ], axis=-1)


def pair_features(profile: jax.Array, cand_keys: jax.Array) -> jax.Array:
  """Dense I2IF features: [B, K] profile, [N, A] keys -> [B, N, NUM_PAIR_FEATURES] float32.

  Per pair: max, mean and sum of the user's key shares over the item's keys, and 1 if any of
  the item's keys occurs in the user's history. Items without keys get zeros.
  """
  return pool_shares(*candidate_shares(profile, cand_keys))


def history_match_mask(hist_keys: jax.Array, cand_keys: jax.Array) -> jax.Array:
  """[B, H, A] history keys, [N, A] candidate keys -> [B, N, H] bool: history item h shares a key.

  Padded history slots (all keys -1) and padded candidate keys never match.
  """
  chex.assert_rank([hist_keys, cand_keys], [3, 2])
  equal = hist_keys[:, None, :, :, None] == cand_keys[None, :, None, None, :]  # [B, N, H, A, A]
  valid = (hist_keys >= 0)[:, None, :, :, None]
  return jnp.any(equal & valid, axis=(-2, -1))


def restricted_history_pool(match: jax.Array, hist_emb: jax.Array) -> jax.Array:
  """Mean history embedding over the matched history items: [B, N, H], [B, H, d] -> [B, N, d].

  Zeros where nothing matches.
  """
  weights = match.astype(hist_emb.dtype)
  weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1.0)
  return jnp.einsum("bnh,bhd->bnd", weights, hist_emb)
