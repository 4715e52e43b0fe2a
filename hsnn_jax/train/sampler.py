"""Training batches drawn inside the jitted step from device-resident interactions.

`DeviceInteractions` holds the training split on the accelerator once; `sample_batch` draws a
batch of (user, positive item, history) examples and a shared set of uniform negatives from a
PRNG key, so there is no host input pipeline to wait on and a resumed run that restores the key
replays the same batches.

Histories (right-aligned, -1 padded, see `UserBatch`):
  'causal': the items before the positive in the user's sequence (sequential protocols);
  'full':   the user's training items (up to H, the most recent), the positive masked out so the
            label does not leak into the input (collaborative filtering).
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.data.types import CSR, RecDataset, concat_rows
from hsnn_jax.models.scorer import UserBatch

HISTORY_MODES = ("causal", "full", "none")
# 'pair': B training pairs uniformly (a user weighs by its pair count); 'user': B users uniformly,
# each at its last training pair, so a causal window of H + 1 items covers the whole sequence
# once (SASRec's epoch: every next-item target once, no overlapping windows).
SAMPLE_UNITS = ("pair", "user")


def right_aligned(csr: CSR, max_len: int) -> np.ndarray:
  """[rows, max_len] int32: each row's last `max_len` values at the end, -1 in front."""
  lengths = csr.lengths()
  take = np.minimum(lengths, max_len)
  out = np.full((csr.num_rows, max_len), -1, np.int32)
  rows = np.repeat(np.arange(csr.num_rows), take)
  offs = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
  src = np.repeat(csr.indptr[1:] - take, take) + offs
  out[rows, max_len - np.repeat(take, take) + offs] = csr.values[src]
  return out


@flax.struct.dataclass
class DeviceInteractions:
  """Training interactions on device. nnz = training pairs, U users, I items.

  users, items: [nnz] int32 pairs; positions: [nnz] int32 index of the pair in its user's row.
  sequences:    [U, H + L] int32: each user's training row left-aligned after H slots of -1, so
                the H items before position t are sequences[u, t : t + H].
  recent:       [U, H] int32 right-aligned most recent training items.
  item_logq:    [I] float32 log of each item's share of training pairs (in-batch sampling prob).
  user_features:[U, F] int32.
  last_pairs:   [U'] int32 index of each user's last training pair (users with any pair).
  sample_unit:  'pair' | 'user', see SAMPLE_UNITS.
  """

  users: jax.Array
  items: jax.Array
  positions: jax.Array
  sequences: jax.Array
  recent: jax.Array
  item_logq: jax.Array
  user_features: jax.Array
  last_pairs: jax.Array
  num_items: int = flax.struct.field(pytree_node=False)
  history_len: int = flax.struct.field(pytree_node=False)
  sample_unit: str = flax.struct.field(pytree_node=False, default="pair")

  @classmethod
  def from_dataset(cls, ds: RecDataset, history_len: int, max_sequence: int = 0,
                   sample_unit: str = "pair") -> "DeviceInteractions":
    if sample_unit not in SAMPLE_UNITS:
      raise ValueError(f"sample_unit={sample_unit!r}: expected one of {SAMPLE_UNITS}")
    train = ds.train
    lengths = train.lengths()
    seq_len = int(lengths.max()) if max_sequence <= 0 else min(int(lengths.max()), max_sequence)
    # Sequences longer than max_sequence keep their latest items; pairs before the cut are dropped.
    kept = np.minimum(lengths, seq_len)
    first_kept = train.indptr[:-1] + lengths - kept
    keep = np.arange(train.nnz) >= np.repeat(first_kept, lengths)
    users = train.row_ids()[keep]
    positions = (np.arange(train.nnz) - np.repeat(first_kept, lengths))[keep]
    items = train.values[keep]
    sequences = np.full((ds.num_users, history_len + seq_len), -1, np.int32)
    sequences[users, history_len + positions] = items
    counts = np.bincount(items, minlength=ds.num_items).astype(np.float64)
    item_logq = np.log(np.maximum(counts, 1.0) / max(len(items), 1)).astype(np.float32)
    feats = (ds.user_features if ds.user_features is not None
             else np.zeros((ds.num_users, 0), np.int32))
    last_pairs = np.flatnonzero(np.append(users[1:] != users[:-1], True)) if len(users) else users
    return cls(users=jnp.asarray(users, jnp.int32), items=jnp.asarray(items, jnp.int32),
               positions=jnp.asarray(positions, jnp.int32), sequences=jnp.asarray(sequences),
               recent=jnp.asarray(right_aligned(train, history_len)), item_logq=jnp.asarray(item_logq),
               user_features=jnp.asarray(feats, jnp.int32),
               last_pairs=jnp.asarray(last_pairs, jnp.int32), num_items=ds.num_items,
               history_len=history_len, sample_unit=sample_unit)

  @property
  def num_pairs(self) -> int:
    return int(self.users.shape[0])


@chex.dataclass(frozen=True)
class Batch:
  """users: UserBatch (B); positives: [B] int32; negatives: [S] int32 uniform over items."""

  users: UserBatch
  positives: jax.Array
  negatives: jax.Array


def sample_batch(key: jax.Array, data: DeviceInteractions, batch_size: int, num_negatives: int,
                 history: str) -> Batch:
  """Draws B training examples (pairs or users, `data.sample_unit`) uniformly with replacement
  and S uniform negatives. Jit-safe."""
  k_pair, k_neg = jax.random.split(key)
  if data.sample_unit == "user":
    idx = data.last_pairs[jax.random.randint(k_pair, (batch_size,), 0, data.last_pairs.shape[0])]
  else:
    idx = jax.random.randint(k_pair, (batch_size,), 0, data.num_pairs)
  users, items, pos = data.users[idx], data.items[idx], data.positions[idx]
  if history == "causal":
    hist = jax.vmap(lambda row, t: jax.lax.dynamic_slice(row, (t,), (data.history_len,)))(
        data.sequences[users], pos)
  elif history == "full":
    hist = data.recent[users]
    hist = jnp.where(hist == items[:, None], -1, hist)
  else:
    hist = jnp.full((batch_size, 1), -1, jnp.int32)
  negatives = jax.random.randint(k_neg, (num_negatives,), 0, data.num_items)
  return Batch(users=UserBatch(user=users, history=hist, features=data.user_features[users]),
               positives=items, negatives=negatives)


def user_batch_for_eval(ds: RecDataset, history_len: int, include_valid: bool) -> "callable":
  """Returns make(user_ids np[B]) -> UserBatch with each user's full known history.

  For test-time ranking in leave-one-out protocols the validation item is part of the history
  (it happened before the test item); `include_valid` says whether to append it.
  """
  known = ds.train
  if include_valid and ds.valid.nnz:
    known = concat_rows([ds.train, ds.valid], np.arange(ds.num_users))
  hist = right_aligned(known, history_len)
  feats = ds.user_features if ds.user_features is not None else np.zeros((ds.num_users, 0), np.int32)

  def make(user_ids: np.ndarray) -> UserBatch:
    user_ids = np.asarray(user_ids, np.int32)
    return UserBatch(user=jnp.asarray(user_ids), history=jnp.asarray(hist[user_ids]),
                     features=jnp.asarray(feats[user_ids], jnp.int32))

  return make
