"""The one device mesh every parallel computation runs on: axes ('data', 'model').

'data' splits the batch (data parallelism); 'model' splits large embedding tables and, at
retrieval, the item corpus. Both axes are `AxisType.Auto`: the Flax modules and optax are not
annotated with sharding-in-types, so the shardings are given at jit boundaries (and a few
constraints inside) and XLA's partitioner propagates them; where the collectives must be exact
and visible (per-shard top-K merged into a global top-K) the code uses `jax.shard_map`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import ml_collections
from jax.sharding import AxisType, Mesh

DATA = "data"
MODEL = "model"


def mesh_shape(data: int, model: int, num_devices: int) -> tuple[int, int]:
  """(data, model) sizes; data <= 0 means every device not used by 'model'."""
  model = max(int(model), 1)
  data = num_devices // model if data <= 0 else int(data)
  return data, model


def make_mesh(data: int = 0, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh over the first data * model devices (all processes' devices).

  Args:
    data: size of the data axis; <= 0: all devices divided by `model`.
    model: size of the model axis.
    devices: the devices to lay out (default `jax.devices()`, every process's).
  """
  devices = list(jax.devices() if devices is None else devices)
  data, model = mesh_shape(data, model, len(devices))
  if data < 1 or data * model > len(devices):
    raise ValueError(f"a mesh of data={data} x model={model} needs {data * model} devices; "
                     f"{len(devices)} are available")
  return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2,
                       devices=devices[:data * model])


def check_config(cfg: ml_collections.ConfigDict, num_devices: int, num_processes: int) -> None:
  """Raises ValueError (naming each bad field) if cfg.mesh cannot run the config's training.

  Called before any data is read, like `config_check.validate`.
  """
  m, t = cfg.mesh, cfg.train
  data, model = mesh_shape(m.data, m.model, num_devices)
  errors = []
  if model < 1 or data < 1 or data * model > num_devices:
    errors.append(f"mesh.data={m.data!r}, mesh.model={m.model!r}: a "
                  f"{data} x {model} mesh does not fit the {num_devices} devices")
  elif num_processes > 1 and data * model != num_devices:
    errors.append(f"mesh.data={data} x mesh.model={model}: with {num_processes} processes the "
                  f"mesh must use all {num_devices} devices")
  if data >= 1 and t.batch_size % data:
    errors.append(f"train.batch_size={t.batch_size}: must be divisible by mesh.data={data}")
  sampling = t.sampling
  if sampling not in ("global", "per_shard"):
    errors.append(f"train.sampling={sampling!r}: expected 'global' or 'per_shard'")
  elif sampling == "per_shard" and data >= 1 and t.num_negatives % data:
    errors.append(f"train.num_negatives={t.num_negatives}: per-shard sampling needs a multiple "
                  f"of mesh.data={data}")
  if errors:
    raise ValueError("Invalid config:\n  " + "\n  ".join(errors))


def mesh_from_config(cfg: ml_collections.ConfigDict) -> Mesh:
  return make_mesh(cfg.mesh.data, cfg.mesh.model)
