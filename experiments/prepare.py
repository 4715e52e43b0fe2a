"""Parses a dataset into the prepared-array cache that training and evaluation read.

  python -m experiments.prepare --dataset=gowalla [--manual_dir=DIR] [--data_dir=TFDS_DIR]
      [--cache_dir=./cache] [--use_tfds=true] [--valid_fraction=0.1]
  python -m experiments.prepare --dataset=synthetic --num_items=1000000 --num_users=100000 \
      --depth=2 --branching=32 --seed=0

Public datasets go through their TFDS builder (hsnn_jax.data.tfds_builders, array_record,
no TensorFlow) when tensorflow-datasets is importable and --use_tfds, else straight through the
parser. Files are looked up in --manual_dir, else ../shared/data/<subdir> next to the repository,
else ~/tensorflow_datasets/downloads/manual/<builder>/<config>/. A malformed or missing file
ends the run with one line on stderr and a non-zero exit; the cache is written atomically, so a
failed run leaves no dataset directory behind.
"""

from __future__ import annotations

import importlib.util
import sys

from absl import app
from absl import flags

from hsnn_jax.data import cache
from hsnn_jax.data import prepare
from hsnn_jax.data import sources
from hsnn_jax.data.checksums import ChecksumError
from hsnn_jax.data.text_io import DataFormatError

_DATASET = flags.DEFINE_enum("dataset", None, list(sources.NAMES), "Dataset to prepare.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Folder with the dataset's files (or a parent of it). Default: "
    "../shared/data/<subdir>, then ~/tensorflow_datasets/downloads/manual/<builder>/<config>/.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: tfds' own default).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "./cache", "Prepared-array cache directory.")
_USE_TFDS = flags.DEFINE_bool("use_tfds", True, "Build through the TFDS builder when possible.")
_VERIFY = flags.DEFINE_bool("verify_checksums", True, "Check input files against pinned hashes.")
_VALID_FRACTION = flags.DEFINE_float(
    "valid_fraction", 0.0, "For datasets without a validation split (LightGCN): the fraction "
    "of each user's train items moved to valid.")
_ALLOW_PARTIAL = flags.DEFINE_bool(
    "allow_partial", False, "ML-1M: use the partial ratings file (dataset 'ml_1m_partial').")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Fetch missing files from the official URLs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the valid carve-out and of synthetic data.")
# Synthetic corpora: unset flags keep the preset's value.
_NUM_ITEMS = flags.DEFINE_integer("num_items", None, "Synthetic: number of items.")
_NUM_USERS = flags.DEFINE_integer("num_users", None, "Synthetic: number of users.")
_DEPTH = flags.DEFINE_integer("depth", None, "Synthetic: levels of the planted tree.")
_BRANCHING = flags.DEFINE_integer("branching", None, "Synthetic: children per node.")
_DIM = flags.DEFINE_integer("dim", None, "Synthetic: dimension of the planted vectors.")


def main(argv):
  del argv
  synthetic_flags = {"num_items": _NUM_ITEMS, "num_users": _NUM_USERS, "depth": _DEPTH,
                     "branching": _BRANCHING, "dim": _DIM}
  overrides = {k: f.value for k, f in synthetic_flags.items() if f.value is not None}
  use_tfds = _USE_TFDS.value and importlib.util.find_spec("tensorflow_datasets") is not None
  if use_tfds:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()
  try:
    ds, how = prepare.parse_dataset(
        _DATASET.value, _MANUAL_DIR.value, use_tfds=use_tfds, data_dir=_DATA_DIR.value,
        verify_checksums=_VERIFY.value, valid_fraction=_VALID_FRACTION.value,
        allow_partial=_ALLOW_PARTIAL.value, download=_DOWNLOAD.value, seed=_SEED.value,
        **overrides)
  except (DataFormatError, ChecksumError, FileNotFoundError) as e:
    print(f"prepare: error: {e}", file=sys.stderr)
    sys.exit(1)
  given = {name: flags.FLAGS[name].value for name in prepare.PREPARE_FLAGS
           if flags.FLAGS[name].present}
  path = cache.save(ds, _CACHE_DIR.value, given)
  print(f"{ds.summary()}\nparsed by: {how}\nwritten to: {path}")


if __name__ == "__main__":
  flags.mark_flag_as_required("dataset")
  app.run(main)
