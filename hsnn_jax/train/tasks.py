"""The registry of model kinds: `config.model.kind` -> its ModelKind (task.py).

Adding a kind is one module (its builder, `default_model_config` and `config_errors`, see
task_monn.py for a small one) and one line here.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from hsnn_jax.data.types import RecDataset
from hsnn_jax.train import task_hsnn, task_monn, task_two_tower
from hsnn_jax.train.task import FrozenBase, ModelKind, RetrievalTask

KINDS = {kind.name: kind for kind in (task_two_tower.KIND, task_monn.KIND, task_hsnn.KIND)}
MODEL_KINDS = tuple(KINDS)


def model_kind(name: str) -> ModelKind:
  if name not in KINDS:
    raise ValueError(f"model.kind={name!r}: expected one of {MODEL_KINDS}")
  return KINDS[name]


def build_task(cfg: ml_collections.ConfigDict, ds: RecDataset,
               base: Optional[FrozenBase] = None) -> RetrievalTask:
  """The kind's task; `base` (kinds with a `model.base_workdir` field only) is the frozen run
  the model learns a residual over."""
  kind = model_kind(cfg.model.kind)
  return kind.build(cfg, ds) if base is None else kind.build(cfg, ds, base)
