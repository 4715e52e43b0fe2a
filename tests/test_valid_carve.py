"""The validation slice carved from a given training split (Gowalla has none): disjoint from
test and from what stays in train, the union is the original train, and it is deterministic."""

import numpy as np

from hsnn_jax.data import splits
from hsnn_jax.data.types import CSR, RecDataset


def _csr(rows):
  indptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
  values = np.concatenate([np.asarray(r, np.int32) for r in rows]) if rows else np.zeros(0, np.int32)
  return CSR(indptr, values)


def _given_split_dataset(seed=0, users=60, items=40):
  rng = np.random.default_rng(seed)
  train, test = [], []
  for _ in range(users):
    chosen = rng.permutation(items)[:rng.integers(2, 20)]
    cut = max(1, int(0.8 * len(chosen)))
    train.append(np.sort(chosen[:cut]))
    test.append(np.sort(chosen[cut:]))
  return RecDataset(name="given", protocol="given_split", num_users=users, num_items=items,
                    train=_csr(train), valid=_csr([[]] * users), test=_csr(test),
                    user_ids=np.arange(users), item_ids=np.arange(items),
                    train_ratings=np.ones(sum(map(len, train)), np.float32))


def test_carved_validation_is_disjoint_from_test_and_train_and_deterministic():
  ds = _given_split_dataset()
  a = splits.carve_valid(ds, 0.2, seed=7)
  b = splits.carve_valid(ds, 0.2, seed=7)
  np.testing.assert_array_equal(a.valid.values, b.valid.values)
  np.testing.assert_array_equal(a.valid.indptr, b.valid.indptr)
  np.testing.assert_array_equal(a.train.values, b.train.values)
  assert a.valid.nnz > 0 and a.train_ratings.shape == (a.train.nnz,)
  for u in range(ds.num_users):
    kept, moved, test = set(a.train.row(u)), set(a.valid.row(u)), set(ds.test.row(u))
    assert not moved & test and not moved & kept
    assert kept | moved == set(ds.train.row(u))
    assert kept  # every user keeps at least one training item
  np.testing.assert_array_equal(a.test.values, ds.test.values)
  other = splits.carve_valid(ds, 0.2, seed=8)
  assert not np.array_equal(other.valid.values, a.valid.values)
