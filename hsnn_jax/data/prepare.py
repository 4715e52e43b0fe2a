"""Parse a dataset (public files or a synthetic preset) and write it to the prepared-array cache.

The library side of `experiments/prepare.py`; the trainer calls `prepare_dataset` when the cache
lacks a dataset. tensorflow-datasets is imported only when `use_tfds=True`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from absl import logging

from hsnn_jax.data import cache, sources, splits, synthetic
from hsnn_jax.data.types import RecDataset

# prepare_dataset arguments that are also `experiments.prepare` flags: the cache records them, so
# its error messages can give the command that rebuilds it.
PREPARE_FLAGS = ("manual_dir", "data_dir", "use_tfds", "verify_checksums", "valid_fraction",
                 "allow_partial", "download", "seed", "num_items", "num_users", "depth",
                 "branching", "dim")


def synthetic_config(name: str, seed: int = 0, depth: Optional[int] = None,
                     branching: Optional[int] = None, **overrides) -> synthetic.SyntheticConfig:
  """The preset `name` with overrides; `depth` / `branching` give a uniform tree."""
  cfg = synthetic.PRESETS[name]
  if depth or branching:
    overrides["branching"] = (branching or cfg.branching[0],) * (depth or cfg.depth)
  return dataclasses.replace(cfg, seed=seed, **overrides)


def parse_dataset(name: str, manual_dir: Optional[str] = None, *, use_tfds: bool = False,
                  data_dir: Optional[str] = None, verify_checksums: bool = True,
                  valid_fraction: float = 0.0, allow_partial: bool = False,
                  download: bool = False, seed: int = 0, **synthetic_overrides
                  ) -> tuple[RecDataset, str]:
  """(RecDataset, how it was produced). See `prepare_dataset` for the arguments."""
  if name in synthetic.PRESETS:
    return synthetic.generate(synthetic_config(name, seed, **synthetic_overrides)), "synthetic"
  if synthetic_overrides:
    raise ValueError(f"{name} is not synthetic; unexpected {sorted(synthetic_overrides)}")
  if download:
    try:
      manual_dir = str(sources.find_dir(name, manual_dir))
    except FileNotFoundError:
      source = sources.SOURCES[name]
      manual_dir = sources.download(name, manual_dir or str(
          sources.TFDS_MANUAL_ROOT / source.tfds_builder / source.tfds_config))
  if use_tfds:
    from hsnn_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
    # Locate (and report missing files) here, so tfds gets the folder that holds them.
    folder = str(sources.find_dir(name, manual_dir))
    ds = tfds_builders.prepare(name, data_dir, folder, verify_checksums=verify_checksums,
                               allow_partial=allow_partial)
    how = "TFDS builder (array_record, read back with tfds.data_source)"
  else:
    ds = sources.load(name, manual_dir, verify_checksums=verify_checksums,
                      allow_partial=allow_partial)
    how = "parser"
  return splits.carve_valid(ds, valid_fraction, seed), how


def prepare_dataset(name: str, cache_dir: str = "./cache", manual_dir: Optional[str] = None,
                    **kwargs) -> RecDataset:
  """Parses dataset `name` and writes it (atomically) to `cache_dir`/<dataset name>.

  Args:
    name: a key of `sources.SOURCES` or of `synthetic.PRESETS`.
    cache_dir: the prepared-array cache.
    manual_dir: folder holding the files (or a parent of it); default ../shared/data/<subdir>,
      then ~/tensorflow_datasets/downloads/manual/<builder>/<config>/.
    **kwargs: use_tfds, data_dir (TFDS), verify_checksums, valid_fraction, allow_partial,
      download, seed; for synthetic presets also any SyntheticConfig field plus depth and
      branching (a uniform tree).

  Returns:
    The dataset as written. A parse error raises before anything is written.
  """
  ds, how = parse_dataset(name, manual_dir, **kwargs)
  options = {k: v for k, v in {"manual_dir": manual_dir, **kwargs}.items() if k in PREPARE_FLAGS}
  path = cache.save(ds, cache_dir, options)
  logging.info("%s (parsed by %s) written to %s", ds.summary(), how, path)
  return ds
