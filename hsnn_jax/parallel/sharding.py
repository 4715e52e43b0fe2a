"""Which array lives where on the ('data', 'model') mesh, and putting host values there.

Rules:
  * batches: the leading (example) dimension split over 'data';
  * large tables (Flax `nn.Embed` 'embedding' and index 'codebook' parameters, rows >= a
    threshold and divisible by the 'model' size): rows split over 'model', in the parameters
    and in every optimizer-state leaf of the same path (Adam's moments);
  * everything else replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hsnn_jax.parallel.mesh import DATA, MODEL

TABLE_PARAM_NAMES = ("embedding", "codebook")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading dimension over 'data', the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def _last_key(path) -> str:
  last = path[-1] if path else None
  return str(getattr(last, "key", getattr(last, "name", "")))


def table_spec(path, leaf, model_size: int, min_rows: int) -> P:
  """P('model', None) for a large table leaf, P() otherwise."""
  shape = np.shape(leaf)
  if (len(shape) == 2 and _last_key(path) in TABLE_PARAM_NAMES and shape[0] >= min_rows
      and shape[0] % model_size == 0 and model_size > 1):
    return P(MODEL, None)
  return P()


def state_shardings(tree: Any, mesh: Mesh, min_rows: int = 1024) -> Any:
  """A NamedSharding per leaf of `tree` (parameters, optimizer state, a whole TrainState)."""
  model_size = mesh.shape[MODEL]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(mesh, table_spec(path, leaf, model_size, min_rows)), tree)


def put(tree: Any, shardings: Any) -> Any:
  """Places values as global arrays with the given shardings.

  Host (and single-device) values must be the same on every process (same seed, same data);
  each process builds only its own devices' shards, so this works on one host and on a pod
  slice alike. Arrays that already span several processes are resharded by `jax.device_put`.
  """

  def one(x, sharding):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

  return jax.tree.map(one, tree, shardings)


def local_view(tree: Any) -> Any:
  """The tree for single-device work (evaluation): fully replicated arrays as their copy on one
  device, so the computation does not run redundantly on every device of the mesh; a tree with a
  sharded leaf is returned unchanged (it then runs partitioned). Multi-process: `to_host`."""
  if jax.process_count() > 1:
    return to_host(tree)
  leaves = jax.tree.leaves(tree)
  if all(isinstance(x, jax.Array) and x.is_fully_replicated for x in leaves):
    return jax.tree.map(lambda x: x.addressable_shards[0].data, tree)
  return tree


def to_host(tree: Any) -> Any:
  """numpy copies of (possibly sharded, possibly multi-process) global arrays, on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
