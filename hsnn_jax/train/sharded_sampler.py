"""Training batches drawn inside the jitted step, split over the mesh's 'data' axis.

Two modes (config `train.sampling`):
  'global'    `sample_batch` draws the whole batch from the key, constrained to be split over
              'data'. JAX's counter-based PRNG (`jax_threefry_partitionable`, on by default)
              derives each element's bits from (key, element index), so each data shard computes
              only its own examples, and the batch, hence the training trajectory, is the same
              on every mesh (including one device).
  'per_shard' a `shard_map`: data shard i draws B / D examples and S / D negatives from
              fold_in(key, i); the global batch is their concatenation. Deterministic, but a
              different batch for each mesh.data.
Either way the loss sees the global batch, so in-batch negatives span all data shards (the
partitioner gathers the candidates' embeddings across 'data').
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hsnn_jax.parallel.collectives import fold_in_shard
from hsnn_jax.parallel.mesh import DATA
from hsnn_jax.train.sampler import Batch, DeviceInteractions, sample_batch

SAMPLING_MODES = ("global", "per_shard")


def batch_shardings(batch: Batch, mesh: Mesh) -> Batch:
  """Users and positives split over 'data'; negatives (shared by every row) replicated."""
  split = NamedSharding(mesh, P(DATA))
  return Batch(users=jax.tree.map(lambda _: split, batch.users), positives=split,
               negatives=NamedSharding(mesh, P()))


def make_sampler(mesh: Mesh, *, mode: str, batch_size: int, num_negatives: int, history: str
                 ) -> Callable[[jax.Array, DeviceInteractions], Batch]:
  """Returns sample(key, data) -> Batch of B = batch_size examples; jit-safe (see module doc).

  `data` must be replicated over the mesh.
  """
  shards = mesh.shape[DATA]
  if mode == "global":
    def sample(key, data):
      batch = sample_batch(key, data, batch_size, num_negatives, history)
      return jax.lax.with_sharding_constraint(batch, batch_shardings(batch, mesh))
    return sample
  if mode != "per_shard":
    raise ValueError(f"sampling mode {mode!r}: expected one of {SAMPLING_MODES}")
  if batch_size % shards or num_negatives % shards:
    raise ValueError(f"per-shard sampling needs batch_size={batch_size} and num_negatives="
                     f"{num_negatives} divisible by the {shards} data shards")

  def local(key, data):
    return sample_batch(fold_in_shard(key, DATA), data, batch_size // shards,
                        num_negatives // shards, history)

  # Every output, negatives included, is the concatenation of the shards' draws.
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P(DATA))
