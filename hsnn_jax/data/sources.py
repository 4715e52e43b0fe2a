"""Dataset registry: name -> files (pinned hashes, official URLs), where to find them, parser.

`load(name)` finds the files (an explicit directory, else `../shared/data/<subdir>` next to the
repository, else the TFDS manual directory), checks that they exist and match their hashes,
and parses them into a `RecDataset`. `download(name, dest)` fetches them from the official
locations. Synthetic presets (`synthetic`, `synthetic_tiny`, ...) are generated instead.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import tempfile
import urllib.request
import zipfile
from typing import Callable, Mapping, Optional

from absl import logging

from hsnn_jax.data import checksums, splits, synthetic
from hsnn_jax.data.checksums import FileSpec
from hsnn_jax.data.parsers import lightgcn, movielens, s3rec
from hsnn_jax.data.types import RecDataset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TFDS_MANUAL_ROOT = pathlib.Path("~/tensorflow_datasets/downloads/manual").expanduser()

_LIGHTGCN_URL = "https://raw.githubusercontent.com/kuandeng/LightGCN/master/Data/{}/{}"
_S3REC_URL = "https://raw.githubusercontent.com/RUCAIBox/CIKM2020-S3Rec/master/data/{}"
_MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/{}.zip"


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  """How to obtain and parse one public dataset.

  files: every file the parser reads, by name relative to the dataset directory.
  optional: names in `files` that may be absent.
  shared_subdir: the folder under ../shared/data that holds the files in this workspace.
  tfds_builder / tfds_config: the TFDS builder (hsnn_jax.data.tfds_builders) and its config.
  parse: (paths by file name) -> RecDataset, given the dataset's name.
  """

  name: str
  files: tuple[FileSpec, ...]
  shared_subdir: str
  tfds_builder: str
  tfds_config: str
  parse: Callable[[Mapping[str, str], str], RecDataset]
  optional: tuple[str, ...] = ()

  def spec(self, file_name: str) -> FileSpec:
    return next(f for f in self.files if f.name == file_name)

  def candidate_dirs(self, manual_dir: Optional[str]) -> list[pathlib.Path]:
    """Directories searched, in order. An explicit dir may be the dataset folder or a parent."""
    tfds_dirs = [TFDS_MANUAL_ROOT / self.tfds_builder / self.tfds_config,
                 TFDS_MANUAL_ROOT / self.tfds_builder]
    if manual_dir is None:
      return [SHARED_DATA / self.shared_subdir] + tfds_dirs
    root = pathlib.Path(manual_dir).expanduser()
    return [root, root / self.shared_subdir, root / self.tfds_config,
            root / self.tfds_builder / self.tfds_config]

  def where_to_put(self) -> str:
    return (f"pass --manual_dir=DIR (or manual_dir=DIR) with the files in DIR, or put them in "
            f"{TFDS_MANUAL_ROOT / self.tfds_builder / self.tfds_config}/")


def _specs(names, url, sha256: Mapping[str, str], git_blob: Optional[Mapping[str, str]],
           release: Optional[str] = None) -> tuple[FileSpec, ...]:
  """FileSpecs of `names`. Where a git blob id is pinned it is the upstream tree's, and a
  sha256 beside it comes from a third party's Git-LFS pointer, so that sha256 is unconfirmed."""
  git_blob = git_blob or {}
  return tuple(
      FileSpec(f, sha256=sha256.get(f), git_blob=git_blob.get(f), sha256_confirmed=f not in git_blob,
               url=url(f), archive_member=f"{release}/{f}" if release else None)
      for f in names)


def _lightgcn(name: str, folder: str, sha256: Mapping[str, str],
              git_blob: Optional[Mapping[str, str]] = None) -> DatasetSource:
  files = _specs(("train.txt", "test.txt", "user_list.txt", "item_list.txt"),
                 lambda f: _LIGHTGCN_URL.format(folder, f), sha256, git_blob)
  return DatasetSource(name, files, f"lightgcn/{folder}", "hsnn_lightgcn", name, lightgcn.parse,
                       optional=("user_list.txt", "item_list.txt"))


def _s3rec(name: str, stem: str, sha256: Mapping[str, str]) -> DatasetSource:
  names = (f"{stem}.txt", f"{stem}_item2attributes.json")
  return DatasetSource(name, _specs(names, _S3REC_URL.format, sha256, None), "amazon-s3rec",
                       "hsnn_amazon_s3rec", name,
                       lambda paths, n: s3rec.parse(paths[names[0]], paths[names[1]], n))


def _movielens(name: str, release: str, folder: str, parse, file_names: tuple[str, ...],
               sha256: Mapping[str, str], git_blob: Optional[Mapping[str, str]] = None
               ) -> DatasetSource:
  url = _MOVIELENS_URL.format(release)
  files = _specs(file_names, lambda f: url, sha256, git_blob, release)
  return DatasetSource(name, files, folder, "hsnn_movielens", name[len("ml_"):], parse)


SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    _lightgcn("gowalla", "gowalla", {
        "train.txt": "7244696fdeb23911319cf7b689f2e15a3c4c92549c873a5677b44e3f13cc3e62",
        "test.txt": "099a2a73924e4b754dc6efd730d764f492321b53c38eb93298850c83acf57be3",
        "user_list.txt": "5344c4d0deef610e1f148f23ad216a0db03b36f88834cd39a06786a672c5f5a1",
        "item_list.txt": "6b186f92890cc3f0c15a6dae5d6285f125a302bb8c5ea0cd9a16cf9c16347139",
    }),
    _lightgcn("yelp2018", "yelp2018", {
        "train.txt": "1e9568725a9e833d0ac3bae01c94cd95367f73b3bb6104fd26b5f65ea5054093",
        "test.txt": "9cd9b37926cd1447a06625ffa7914527573fb097c10cb0bbdb1d1b8ded3742fe",
        "user_list.txt": "4931519d8b3c40d71a34cc386c3287b6d63c1be9a82edd7ee6bfad765e640778",
        "item_list.txt": "1091bc824b60561906df552f2f7cb3ec61767b1e46fd4386b44400ae49712007",
    }, git_blob={"train.txt": "cda12361055ba448ae4bd1070f6000c16dea8f22"}),
    _lightgcn("amazon_book", "amazon-book", {
        "train.txt": "529066026085919381acd4ce19f69e9eafa4af3fef1a10119ea5551cc2ef8530",
        "test.txt": "6250754994dd953b91b48dccdd77a73f318e0634b4757c2abfcc9d33a54ab0f5",
        "user_list.txt": "b59cc7e4a1826e1eb313c4f0557bdafbb70661346d9c93911b97fe0e9fbd7078",
        "item_list.txt": "8eee6caf6e666d95fc24ca8e0ec089ee90b1b2d1dc17933726359a6b3ecd62cb",
    }, git_blob={"train.txt": "6ef55159c5f1fd7f6d86eb9ff290d0cc2854ac99"}),
    _s3rec("beauty", "Beauty", {
        "Beauty.txt": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        "Beauty_item2attributes.json":
            "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
    }),
    _s3rec("sports", "Sports_and_Outdoors", {
        "Sports_and_Outdoors.txt": "2a095e0648872beb9982408958290f5d655db5be2911c3756b5446de9f0b8de2",
        "Sports_and_Outdoors_item2attributes.json":
            "7fb10733ac4f1811384a52144cdefa7fcc7536fa80a7232c5da9bd789155c34b",
    }),
    _s3rec("toys", "Toys_and_Games", {}),  # not in this workspace: hashes unknown
    _movielens("ml_100k", "ml-100k", "movielens-100k", movielens.parse_100k,
               ("u.data", "u.item", "u.user"), {
        "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
        "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
    }),
    _movielens("ml_latest_small", "ml-latest-small", "movielens-latest-small",
               movielens.parse_csv_release, ("ratings.csv", "movies.csv"), {
        "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
        "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
    }),
    # movies.dat first: the first file locates the folder, and ratings.dat may be missing.
    _movielens("ml_1m", "ml-1m", "movielens-1m", movielens.parse_1m,
               ("movies.dat", "users.dat", "ratings.dat"), {
        "movies.dat": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9",
        "users.dat": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3",
    }, git_blob={"ratings.dat": "77a7c4b150f588c23bb9e1f068aa996c0b413695"}),
    _movielens("ml_20m", "ml-20m", "movielens-20m", movielens.parse_csv_release,
               ("ratings.csv", "movies.csv"), {}),  # not in this workspace: hashes unknown
)}

# A genuine ~49 % prefix of ML-1M's ratings.dat, gzipped upstream. Development use only.
ML_1M_PARTIAL = FileSpec(
    "partial-ratings/ratings.dat.gz",
    sha256="2fedcf5405373a49df4041e3d3fe1e8db9eacf2c77c209ae1f686ea06b7a16d9")

NAMES = tuple(SOURCES) + tuple(synthetic.PRESETS)


def _missing(source: DatasetSource, spec: FileSpec, searched) -> FileNotFoundError:
  where = ", ".join(str(d) for d in searched)
  return FileNotFoundError(
      f"{source.name}: missing file {spec.name!r} (expected {spec.describe_hash()}); searched "
      f"{where}. To fix: {source.where_to_put()}. Official download: {spec.url}"
      + (f" (member {spec.archive_member})" if spec.archive_member else "")
      + f", or run experiments.prepare --dataset={source.name} --download.")


def find_dir(name: str, manual_dir: Optional[str] = None) -> pathlib.Path:
  """The first candidate directory that holds the dataset's first file, else FileNotFoundError."""
  source = SOURCES[name]
  searched = source.candidate_dirs(manual_dir)
  directory = next((d for d in searched if (d / source.files[0].name).is_file()), None)
  if directory is None:
    raise _missing(source, source.files[0], searched)
  return directory


def locate(name: str, manual_dir: Optional[str] = None, allow_partial: bool = False
           ) -> tuple[dict[str, str], dict[str, FileSpec], str]:
  """Finds the files of dataset `name`.

  Returns:
    (paths by file name, the FileSpec to verify each against, the RecDataset name). With
    `allow_partial`, ML-1M falls back to partial-ratings/ratings.dat.gz as 'ml_1m_partial'.
  """
  source = SOURCES[name]
  directory = find_dir(name, manual_dir)
  paths, specs, dataset_name = {}, {}, name
  for spec in source.files:
    key, path = spec.name, directory / spec.name
    if name == "ml_1m" and spec.name == "ratings.dat" and not path.is_file():
      partial = directory / ML_1M_PARTIAL.name
      if not (allow_partial and partial.is_file()):
        hint = (f" A partial copy exists at {partial}: pass allow_partial=True "
                "(--allow_partial) to use it for development only." if partial.is_file() else "")
        raise FileNotFoundError(str(_missing(source, spec, [directory])) + hint)
      logging.warning("=" * 70 + "\nML-1M ratings.dat is missing: using the PARTIAL copy %s "
                      "(first 487,650 of 1,000,209 ratings, users 1..2999). The dataset is named "
                      "'ml_1m_partial'. NEVER report results on it as ML-1M.\n" + "=" * 70, partial)
      path, spec, dataset_name = partial, ML_1M_PARTIAL, "ml_1m_partial"
    if not path.is_file():
      if spec.name in source.optional:
        continue
      raise _missing(source, spec, [directory])
    paths[key], specs[key] = str(path), spec
  return paths, specs, dataset_name


def load(name: str, manual_dir: Optional[str] = None, *, verify_checksums: bool = True,
         valid_fraction: float = 0.0, allow_partial: bool = False, seed: int = 0) -> RecDataset:
  """Parses dataset `name` (a key of SOURCES or a synthetic preset) into a RecDataset.

  Args:
    name: registry name, e.g. 'gowalla', 'beauty', 'ml_100k', 'synthetic_tiny'.
    manual_dir: where the files are (the dataset folder or a parent of it); default: the
      workspace's ../shared/data, then the TFDS manual directory.
    verify_checksums: check every file against its pinned hash (False for edited files).
    valid_fraction: for datasets without a validation split (LightGCN), move this fraction
      of each user's train items to valid (seeded by `seed`).
    allow_partial: ML-1M only: accept the partial ratings file (dataset 'ml_1m_partial').
    seed: seed of the validation carve-out and of synthetic generation.
  """
  if name in synthetic.PRESETS:
    return synthetic.generate(dataclasses.replace(synthetic.PRESETS[name], seed=seed))
  if name not in SOURCES:
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(NAMES)}")
  paths, specs, dataset_name = locate(name, manual_dir, allow_partial)
  for file_name, path in paths.items():
    if verify_checksums:
      checksums.verify(path, specs[file_name])
  if not verify_checksums:
    logging.warning("%s: checksums not verified (verify_checksums=False).", name)
  ds = SOURCES[name].parse(paths, dataset_name)
  return splits.carve_valid(ds, valid_fraction, seed)


def download(name: str, dest_dir: str) -> str:
  """Downloads dataset `name`'s files from their official URLs into `dest_dir`; returns it.

  Files are written under a temporary name and renamed when complete; zip archives are fetched
  once and only the needed members are extracted. Hashes are checked later, by `load`.
  """
  source = SOURCES[name]
  dest = pathlib.Path(dest_dir)
  dest.mkdir(parents=True, exist_ok=True)
  archives: dict[str, str] = {}
  with tempfile.TemporaryDirectory(dir=dest) as tmp:
    for spec in source.files:
      target = dest / spec.name
      if target.is_file():
        continue
      try:
        if spec.archive_member is None:
          _fetch(spec.url, target)
        else:
          if spec.url not in archives:
            archives[spec.url] = os.path.join(tmp, f"archive{len(archives)}.zip")
            _fetch(spec.url, pathlib.Path(archives[spec.url]))
          with zipfile.ZipFile(archives[spec.url]) as zf, zf.open(spec.archive_member) as src:
            _write_atomic(src, target)
      except Exception as e:  # pylint: disable=broad-except
        if spec.name in source.optional:
          logging.warning("Optional file %s not downloaded: %s", spec.url, e)
          continue
        raise
  return str(dest)


def _fetch(url: str, target: pathlib.Path) -> None:
  logging.info("Downloading %s", url)
  with urllib.request.urlopen(url, timeout=60) as response:
    _write_atomic(response, target)


def _write_atomic(stream, target: pathlib.Path) -> None:
  fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
  try:
    with os.fdopen(fd, "wb") as out:
      shutil.copyfileobj(stream, out)
    os.replace(tmp, target)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
