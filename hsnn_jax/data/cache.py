"""Prepared-array cache: a parsed `RecDataset` as one `.npz` plus `meta.json` per dataset.

Training and evaluation read only this cache, so they run where tensorflow-datasets is not
installed (e.g. the GPU machine). Layout: `<cache_dir>/<name>/{arrays.npz, meta.json}`.
Writes go to a temporary sibling directory that is renamed into place, so an interrupted
`prepare` never leaves a half-written dataset behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from hsnn_jax.data.types import CSR, RecDataset

FORMAT_VERSION = 1
_CSR_FIELDS = ("train", "valid", "test", "item_attrs")
_ARRAY_FIELDS = ("user_ids", "item_ids", "train_ratings", "user_features", "item_tree_paths")
_SCALAR_FIELDS = ("name", "protocol", "num_users", "num_items", "num_attrs")


def dataset_dir(cache_dir: str, name: str) -> str:
  return os.path.join(cache_dir, name)


def save(ds: RecDataset, cache_dir: str) -> str:
  """Writes `ds` atomically; returns its directory."""
  final = dataset_dir(cache_dir, ds.name)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{ds.name}.tmp-", dir=cache_dir)
  try:
    arrays = {}
    for f in _CSR_FIELDS:
      csr = getattr(ds, f)
      if csr is not None:
        arrays[f"{f}.indptr"], arrays[f"{f}.values"] = csr.indptr, csr.values
    for f in _ARRAY_FIELDS:
      if getattr(ds, f) is not None:
        arrays[f] = getattr(ds, f)
    np.savez(os.path.join(tmp, "arrays.npz"), **arrays)
    meta = {f: getattr(ds, f) for f in _SCALAR_FIELDS}
    meta["user_feature_sizes"] = list(ds.user_feature_sizes)
    meta["format_version"] = FORMAT_VERSION
    meta["summary"] = ds.summary()
    with open(os.path.join(tmp, "meta.json"), "w") as fh:
      json.dump(meta, fh, indent=1)
    if os.path.exists(final):
      shutil.rmtree(final)
    os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final


def exists(cache_dir: str, name: str) -> bool:
  d = dataset_dir(cache_dir, name)
  return os.path.isfile(os.path.join(d, "meta.json")) and os.path.isfile(os.path.join(d, "arrays.npz"))


def load(cache_dir: str, name: str) -> RecDataset:
  d = dataset_dir(cache_dir, name)
  if not exists(cache_dir, name):
    raise FileNotFoundError(
        f"No prepared dataset '{name}' under {cache_dir!r}. Run: "
        f"python -m experiments.prepare --dataset={name} --cache_dir={cache_dir} [--manual_dir=DIR]")
  with open(os.path.join(d, "meta.json")) as fh:
    meta = json.load(fh)
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{d}: cache format {meta.get('format_version')}, expected {FORMAT_VERSION}; "
                     "re-run experiments.prepare")
  with np.load(os.path.join(d, "arrays.npz")) as z:
    arrays = {k: z[k] for k in z.files}
  kwargs = {f: meta[f] for f in _SCALAR_FIELDS}
  kwargs["user_feature_sizes"] = tuple(meta.get("user_feature_sizes", ()))
  for f in _CSR_FIELDS:
    if f"{f}.indptr" in arrays:
      kwargs[f] = CSR(arrays[f"{f}.indptr"], arrays[f"{f}.values"])
  for f in _ARRAY_FIELDS:
    if f in arrays:
      kwargs[f] = arrays[f]
  return RecDataset(**kwargs)


def replace(ds: RecDataset, **changes) -> RecDataset:
  return dataclasses.replace(ds, **changes)
