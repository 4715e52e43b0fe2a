"""Prepared-array cache: a parsed `RecDataset` as one `.npz` plus `meta.json` per dataset.

Training and evaluation read only this cache, so they run where tensorflow-datasets is not
installed (e.g. the GPU machine). Layout: `<cache_dir>/<name>/{arrays.npz, meta.json}`.
Writes go to a temporary sibling directory that is renamed into place, so an interrupted
`prepare` never leaves a half-written dataset behind.

Integrity: meta.json records the size and sha256 of arrays.npz and a sha256 of its own other
fields; `load` checks both. A missing file, damaged or truncated bytes, or a cache written by
another format version raise `CacheError` (a ValueError), one line that names the directory and
the command that rebuilds it. Format 2 added the checksums; format 1 caches must be re-prepared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import tempfile
import zipfile
from typing import Any, Mapping, Optional

import numpy as np

from hsnn_jax.data.types import CSR, RecDataset

FORMAT_VERSION = 2
_CSR_FIELDS = ("train", "valid", "test", "item_attrs")
_ARRAY_FIELDS = ("user_ids", "item_ids", "train_ratings", "user_features", "item_tree_paths")
_SCALAR_FIELDS = ("name", "protocol", "num_users", "num_items", "num_attrs")
_FILES = ("meta.json", "arrays.npz")


class CacheError(ValueError):
  """A prepared dataset is present but cannot be used as it is: rebuild it."""


def dataset_dir(cache_dir: str, name: str) -> str:
  return os.path.join(cache_dir, name)


def rebuild_command(cache_dir: str, name: str, options: Optional[Mapping[str, Any]] = None) -> str:
  """The `experiments.prepare` command that (re)writes dataset `name` under `cache_dir`."""
  flags = [f"--dataset={name}", f"--cache_dir={cache_dir}"]
  flags += [f"--{k}={v}" for k, v in sorted((options or {}).items()) if v is not None]
  return "python -m experiments.prepare " + " ".join(shlex.quote(f) for f in flags)


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as fh:
    for block in iter(lambda: fh.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def _meta_sha256(meta: Mapping[str, Any]) -> str:
  """sha256 of every field of meta.json but this one, in a canonical JSON form."""
  rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
  return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def save(ds: RecDataset, cache_dir: str, options: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `ds` atomically; returns its directory.

  options: the `experiments.prepare` flags it was made with beyond the dataset and cache
    directory (manual_dir, valid_fraction, synthetic sizes, ...); error messages repeat them.
  """
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
    arrays_path = os.path.join(tmp, "arrays.npz")
    np.savez(arrays_path, **arrays)
    meta = {f: getattr(ds, f) for f in _SCALAR_FIELDS}
    meta["user_feature_sizes"] = list(ds.user_feature_sizes)
    meta["format_version"] = FORMAT_VERSION
    meta["summary"] = ds.summary()
    meta["prepare_options"] = {k: v for k, v in (options or {}).items() if v is not None}
    meta["arrays_bytes"] = os.path.getsize(arrays_path)
    meta["arrays_sha256"] = file_sha256(arrays_path)
    meta["meta_sha256"] = _meta_sha256(meta)
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
  """Whether the dataset's directory is there, whole or not (`load` says which)."""
  return os.path.isdir(dataset_dir(cache_dir, name))


def _read_meta(d: str, fail) -> dict:
  try:
    with open(os.path.join(d, "meta.json")) as fh:
      meta = json.load(fh)
  except (ValueError, UnicodeDecodeError) as err:
    raise fail(f"meta.json is not valid JSON ({err})") from None
  if not isinstance(meta, dict):
    raise fail("meta.json does not hold a JSON object")
  return meta


def _verify(d: str, meta: dict, fail) -> None:
  """Raises fail(...) unless meta.json is of this format and both files are as written."""
  version = meta.get("format_version")
  if version != FORMAT_VERSION:
    age = "an older" if isinstance(version, int) and version < FORMAT_VERSION else "another"
    raise fail(f"it was written by {age} format (version {version}; this code reads version "
               f"{FORMAT_VERSION})")
  if meta.get("meta_sha256") != _meta_sha256(meta):
    raise fail("meta.json was changed or damaged (its checksum does not match)")
  path = os.path.join(d, "arrays.npz")
  size = os.path.getsize(path)
  if size != meta.get("arrays_bytes"):
    raise fail(f"arrays.npz is {size} bytes, {meta.get('arrays_bytes')} were written "
               f"(truncated or overwritten)")
  if file_sha256(path) != meta.get("arrays_sha256"):
    raise fail("arrays.npz is damaged (its sha256 does not match the one in meta.json)")


def load(cache_dir: str, name: str) -> RecDataset:
  """The dataset prepared under `cache_dir`; FileNotFoundError if absent, CacheError if not
  whole, of another format, or damaged."""
  d = dataset_dir(cache_dir, name)
  if not exists(cache_dir, name):
    raise FileNotFoundError(
        f"No prepared dataset '{name}' under {cache_dir!r}. Run: "
        f"python -m experiments.prepare --dataset={name} --cache_dir={cache_dir} [--manual_dir=DIR]")
  options = {}

  def fail(why: str) -> CacheError:
    return CacheError(f"prepared dataset cache {d} cannot be used: {why}. Rebuild it with: "
                      f"{rebuild_command(cache_dir, name, options)}")

  missing = [f for f in _FILES if not os.path.isfile(os.path.join(d, f))]
  meta = {} if "meta.json" in missing else _read_meta(d, fail)
  if isinstance(meta.get("prepare_options"), dict):
    options.update(meta["prepare_options"])
  if missing:
    raise fail(f"{' and '.join(missing)} missing")
  _verify(d, meta, fail)
  try:
    with np.load(os.path.join(d, "arrays.npz")) as z:
      arrays = {k: z[k] for k in z.files}
    return _dataset(meta, arrays)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
    raise fail(f"arrays.npz cannot be read ({type(err).__name__}: {err})") from None


def _dataset(meta: dict, arrays: dict) -> RecDataset:
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
