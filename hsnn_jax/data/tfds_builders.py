"""tensorflow-datasets builders for the public datasets (no TensorFlow needed).

Imported only by `experiments/prepare.py`: `import hsnn_jax` never imports tensorflow_datasets.
Each builder parses the manually placed files with `hsnn_jax.data.sources.load` and writes one
example per user (dense user index, original id, train/valid/test item lists, train ratings,
user features) as array_record, read back with random access by `tfds.data_source`. Item-level
side information (original item ids, item attributes) and the dataset's scalars go to the
builder's metadata (metadata.json next to the records).

  builder                   configs
  hsnn_lightgcn             gowalla, yelp2018, amazon_book
  hsnn_amazon_s3rec         beauty, sports, toys
  hsnn_movielens            100k, latest_small, 1m, 1m_partial, 20m
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from hsnn_jax.data import sources
from hsnn_jax.data.types import CSR, RecDataset

_SPLIT = "users"
_READ_BATCH = 4096


def _family(builder: str, descriptions: dict[str, str], partial: tuple[str, ...] = ()):
  """(BUILDER_CONFIGS, REGISTRY, MANUAL_DOWNLOAD_INSTRUCTIONS) of a builder.

  `descriptions` maps registry names to config descriptions; configs are the registry sources'
  `tfds_config` names. Each config in `partial` is the partial ML-1M variant.
  """
  configs, registry = [], {}
  lines = [f"Place the files of each config in ~/tensorflow_datasets/downloads/manual/{builder}/"
           "<config>/ (or pass --manual_dir=DIR to experiments.prepare). Official sources:"]
  for name, description in descriptions.items():
    source = sources.SOURCES[name]
    configs.append(tfds.core.BuilderConfig(name=source.tfds_config, description=description))
    registry[source.tfds_config] = (name, False)
    for spec in source.files:
      member = f" (member {spec.archive_member})" if spec.archive_member else ""
      lines.append(f"  {source.tfds_config}/{spec.name}: {spec.url}{member}")
  for config in partial:
    configs.append(tfds.core.BuilderConfig(name=config, description=(
        "The first ~49% of MovieLens 1M's ratings (partial-ratings/ratings.dat.gz): for "
        "development only, never to be reported as ML-1M")))
    registry[config] = ("ml_1m", True)
  return configs, registry, "\n".join(lines)


class _RecBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per user of a parsed RecDataset; see the module docstring."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # config name -> (registry name, allow_partial)
  REGISTRY: dict[str, tuple[str, bool]] = {}

  def __init__(self, *, verify_checksums: bool = True, **kwargs):
    self._verify_checksums = verify_checksums
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "user": np.int64,
            "user_id": np.int64,
            "train": tfds.features.Sequence(np.int32),
            "valid": tfds.features.Sequence(np.int32),
            "test": tfds.features.Sequence(np.int32),
            "train_ratings": tfds.features.Sequence(np.float32),
            "user_features": tfds.features.Sequence(np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir: Optional[str] = str(dl_manager.manual_dir)
    except AssertionError:  # tfds: the manual dir is missing or empty; search the defaults
      manual_dir = None
    registry_name, allow_partial = self.REGISTRY[self.builder_config.name]
    ds = sources.load(registry_name, manual_dir, verify_checksums=self._verify_checksums,
                      allow_partial=allow_partial)
    self.info.metadata.update(_metadata(ds))
    return {_SPLIT: self._generate_examples(ds)}

  def _generate_examples(self, ds: RecDataset):
    empty_f = np.zeros(0, np.int32)
    ratings_ptr = ds.train.indptr
    for u in range(ds.num_users):
      yield u, {
          "user": u,
          "user_id": int(ds.user_ids[u]),
          "train": ds.train.row(u),
          "valid": ds.valid.row(u),
          "test": ds.test.row(u),
          "train_ratings": (ds.train_ratings[ratings_ptr[u]:ratings_ptr[u + 1]]
                            if ds.train_ratings is not None else np.zeros(0, np.float32)),
          "user_features": ds.user_features[u] if ds.user_features is not None else empty_f,
      }


def _metadata(ds: RecDataset) -> dict:
  return {
      "name": ds.name, "protocol": ds.protocol, "num_users": ds.num_users,
      "num_items": ds.num_items, "num_attrs": ds.num_attrs,
      "user_feature_sizes": [int(s) for s in ds.user_feature_sizes],
      "has_train_ratings": ds.train_ratings is not None,
      "has_user_features": ds.user_features is not None,
      "item_ids": ds.item_ids.tolist(),
      "item_attrs_indptr": ds.item_attrs.indptr.tolist() if ds.item_attrs is not None else None,
      "item_attrs_values": ds.item_attrs.values.tolist() if ds.item_attrs is not None else None,
  }


class HsnnLightgcn(_RecBuilder):
  """NGCF/LightGCN collaborative-filtering splits (given train/test split)."""

  name = "hsnn_lightgcn"
  BUILDER_CONFIGS, REGISTRY, MANUAL_DOWNLOAD_INSTRUCTIONS = _family(name, {
      "gowalla": "LightGCN split of Gowalla", "yelp2018": "LightGCN split of Yelp2018",
      "amazon_book": "LightGCN split of Amazon-Book"})


class HsnnAmazonS3rec(_RecBuilder):
  """Amazon 5-core sequences (S3-Rec preprocessing), leave-one-out, category/brand attributes."""

  name = "hsnn_amazon_s3rec"
  BUILDER_CONFIGS, REGISTRY, MANUAL_DOWNLOAD_INSTRUCTIONS = _family(name, {
      "beauty": "Amazon Beauty 5-core (S3-Rec)", "sports": "Amazon Sports_and_Outdoors 5-core "
      "(S3-Rec)", "toys": "Amazon Toys_and_Games 5-core (S3-Rec)"})


class HsnnMovielens(_RecBuilder):
  """MovieLens ratings as implicit feedback, time-ordered leave-one-out, genres, demographics."""

  name = "hsnn_movielens"
  BUILDER_CONFIGS, REGISTRY, MANUAL_DOWNLOAD_INSTRUCTIONS = _family(name, {
      "ml_100k": "MovieLens 100K", "ml_latest_small": "MovieLens latest-small",
      "ml_1m": "MovieLens 1M", "ml_20m": "MovieLens 20M"}, partial=("1m_partial",))


BUILDERS = {b.name: b for b in (HsnnLightgcn, HsnnAmazonS3rec, HsnnMovielens)}


def builder_for(registry_name: str, allow_partial: bool = False) -> tuple[type, str]:
  """(builder class, config name) that produces registry dataset `registry_name`."""
  for cls in BUILDERS.values():
    for config, (name, partial) in cls.REGISTRY.items():
      if name == registry_name and partial == allow_partial:
        return cls, config
  raise KeyError(f"no TFDS builder for {registry_name!r}")


def prepare(registry_name: str, data_dir: str, manual_dir: Optional[str] = None, *,
            verify_checksums: bool = True, allow_partial: bool = False) -> RecDataset:
  """Builds (if needed) the TFDS dataset for `registry_name`, then reads it back."""
  cls, config = builder_for(registry_name, allow_partial)
  builder = cls(data_dir=data_dir, config=config, file_format="array_record",
                verify_checksums=verify_checksums)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return read(cls, config, data_dir)


def read(cls: type, config: str, data_dir: str) -> RecDataset:
  """Reassembles the RecDataset of a prepared builder with `tfds.data_source` (no TensorFlow)."""
  builder = cls(data_dir=data_dir, config=config)
  meta = builder.info.metadata
  source = tfds.data_source(f"{cls.name}/{config}", data_dir=data_dir)[_SPLIT]
  n = meta["num_users"]
  examples = [None] * n
  for start in range(0, n, _READ_BATCH):
    for ex in source.__getitems__(range(start, min(n, start + _READ_BATCH))):
      examples[int(ex["user"])] = ex

  def csr(key, dtype) -> CSR:
    rows = [np.asarray(ex[key], dtype) for ex in examples]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    return CSR(indptr, np.concatenate(rows) if rows else np.zeros(0, dtype))

  attrs = None
  if meta["item_attrs_indptr"] is not None:
    attrs = CSR(np.asarray(meta["item_attrs_indptr"], np.int64),
                np.asarray(meta["item_attrs_values"], np.int32))
  return RecDataset(
      name=meta["name"], protocol=meta["protocol"], num_users=n, num_items=meta["num_items"],
      train=csr("train", np.int32), valid=csr("valid", np.int32), test=csr("test", np.int32),
      user_ids=np.array([ex["user_id"] for ex in examples], np.int64),
      item_ids=np.asarray(meta["item_ids"], np.int64),
      train_ratings=csr("train_ratings", np.float32).values if meta["has_train_ratings"] else None,
      item_attrs=attrs, num_attrs=meta["num_attrs"],
      user_features=(np.stack([np.asarray(ex["user_features"], np.int32) for ex in examples])
                     if meta["has_user_features"] else None),
      user_feature_sizes=tuple(meta["user_feature_sizes"]))
