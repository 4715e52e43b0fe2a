"""The 'monn' task: one MoNN trained with the sampled retrieval losses of the two-tower baseline.

Logits [B, B + S] are task 0 of the MoNN's score over the batch's candidates (in-batch positives
then S uniform negatives); the task is "interacted". I2IF keys are the dataset's item attributes
when it has them and `model.item_attrs` is on; otherwise every item is keyless (an empty key
set), so on attribute-free data such as Gowalla the interaction tower sees all-zero I2IF
features and the MoNN reduces to its user/item towers and OverArch. (HSNN uses its learned
index's nodes as keys there instead, see task_hsnn.py.)

With `model.base_workdir` (warm start), the logits are a residual over a frozen trained
two-tower's (task.py FrozenBase), the MoNN's output layer zeroed at init.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import ml_collections

from hsnn_jax.data.types import RecDataset
from hsnn_jax.models import monn
from hsnn_jax.train.sampler import Batch, DeviceInteractions
from hsnn_jax.train.task import (Checks, FrozenBase, ModelKind, RetrievalTask, add_base_fields,
                                 base_config_errors, sampled_loss, user_side_params)

HISTORY_MODES = ("full", "causal")


def default_model_config(**fields) -> ml_collections.ConfigDict:
  """The `config.model` section of a 'monn' run, with `fields` set over the defaults."""
  m = ml_collections.ConfigDict()
  m.kind = "monn"
  m.preset = "monn_small"  # one of monn.PRESET_NAMES (HSNN Table 5 sizes)
  m.overrides = ml_collections.ConfigDict()  # MoNNConfig fields over the preset, e.g. user_mlp
  m.history = "full"  # 'full': the user's training items (CF); 'causal': items before the label
  m.history_len = 50
  m.item_attrs = True  # dataset item attributes as I2IF keys, when the dataset has them
  m.max_item_keys = 0  # > 0: keep each item's first max_item_keys attributes
  add_base_fields(m)
  m.update(fields)
  return m


def _as_fields(overrides: Any) -> dict:
  """ConfigDict overrides -> MoNNConfig keyword arguments (lists become tuples)."""
  items = overrides.to_dict().items() if hasattr(overrides, "to_dict") else dict(overrides).items()
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items}


def monn_config(preset: str, overrides: Any = None, **fields: Any) -> monn.MoNNConfig:
  """monn.monn_preset(preset) with the config's overrides and then `fields` applied."""
  return monn.monn_preset(preset, **{**_as_fields(overrides or {}), **fields})


def build(cfg: ml_collections.ConfigDict, ds: RecDataset,
          base: Optional[FrozenBase] = None) -> RetrievalTask:
  """The MoNN task; with `base`, its logits are a residual over the frozen base's (the aux
  holds the base's parameters, `()` without one)."""
  m, t = cfg.model, cfg.train
  config = monn_config(m.preset, m.overrides, num_tasks=1)
  keyed = bool(m.item_attrs) and ds.item_attrs is not None
  module = monn.MoNN.for_dataset(config, ds if keyed else _without_attrs(ds),
                                 max_keys=m.max_item_keys or None)
  if base is not None:
    base.check_compatible(m.history, m.history_len, m.base_workdir)

  def init(key, batch: Batch):
    params = module.init(key, batch.users, batch.positives)["params"]
    if base is None:
      return params, ()
    return monn.zero_output(params), base.params

  def loss(params, aux, batch: Batch, key, data: DeviceInteractions, step):
    del key, step
    candidates = jnp.concatenate([batch.positives, batch.negatives])
    logits = module.apply({"params": params}, batch.users, candidates)[..., 0]
    if base is not None:
      logits = logits + base.pair_logits(aux, batch.users, candidates)
    value = sampled_loss(logits, batch, data, t)
    return value, ({"loss": value}, aux)

  def scorer(params, aux):
    own = monn.make_scorer(module, params, history_len=m.history_len)
    return own if base is None else base.add_to(own, aux)

  return RetrievalTask(
      init=init, loss=loss, history=m.history, history_len=m.history_len, scorer=scorer,
      is_user_param=user_side_params(monn.USER_SIDE_PARAMS))


def _without_attrs(ds: RecDataset) -> RecDataset:
  return dataclasses.replace(ds, item_attrs=None, num_attrs=0)


def override_errors(overrides: Any, presets: Sequence[str]) -> list:
  """Errors of model.overrides over each preset it applies to: unknown fields; then, if a
  preset rejects the combination, every field it rejects alone (or the combination itself)."""
  known = {f.name for f in dataclasses.fields(monn.MoNNConfig)}
  values = _as_fields(overrides)
  errors = [f"model.overrides.{k}={v!r}: not a MoNNConfig field" for k, v in values.items()
            if k not in known]
  if errors:
    return errors
  for preset in sorted(set(p for p in presets if p in monn.PRESET_NAMES)):
    try:
      monn.monn_preset(preset, **values)
      continue
    except (ValueError, TypeError) as err:
      combined = f"model.overrides with preset {preset!r}: {err}"
    alone = []
    for k, v in values.items():
      try:
        monn.monn_preset(preset, **{k: v})
      except (ValueError, TypeError) as err:
        alone.append(f"model.overrides.{k}={v!r} (preset {preset!r}): {err}")
    errors += alone or [combined]
  return errors


def config_errors(cfg: ml_collections.ConfigDict) -> list:
  m, check = cfg.model, Checks()
  check.need(m.history in HISTORY_MODES, "model.history", m.history, f"one of {HISTORY_MODES}")
  check.need(isinstance(m.history_len, int) and m.history_len > 0, "model.history_len",
             m.history_len, "a positive int")
  check.need(m.preset in monn.PRESET_NAMES, "model.preset", m.preset,
             f"one of {monn.PRESET_NAMES}")
  return check.errors + override_errors(m.overrides, [m.preset]) + base_config_errors(m)


KIND = ModelKind("monn", build, default_model_config, config_errors)
