"""Expected-hash records for dataset files and their verification.

A file is pinned by its sha256 and/or its git blob id (`git hash-object FILE`, the id public
repositories list in their trees). Some upstream files are known only by a git blob id, or by a
sha256 read from a third party's Git-LFS pointer that nobody here could confirm; the verifier
accepts a file when every confirmed hash matches, and treats an unconfirmed sha256 as advisory
when a confirmed git blob id agrees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

from absl import logging

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class FileSpec:
  """One input file of a dataset.

  name: path relative to the dataset's directory (e.g. 'train.txt', 'partial-ratings/x.gz').
  sha256 / git_blob: expected hashes; None when unknown.
  sha256_confirmed: False when the sha256 comes from an unverified third-party record.
  url: the official download location (a file, or a zip archive holding it).
  archive_member: the file's path inside the zip at `url`, when `url` is an archive.
  """

  name: str
  sha256: Optional[str] = None
  git_blob: Optional[str] = None
  sha256_confirmed: bool = True
  url: Optional[str] = None
  archive_member: Optional[str] = None

  @property
  def known(self) -> bool:
    return self.sha256 is not None or self.git_blob is not None

  def describe_hash(self) -> str:
    parts = []
    if self.sha256 is not None:
      parts.append(f"sha256 {self.sha256}" + ("" if self.sha256_confirmed else " (unconfirmed)"))
    if self.git_blob is not None:
      parts.append(f"git blob {self.git_blob}")
    return ", ".join(parts) or "sha256 unknown"


class ChecksumError(ValueError):
  """A file's content differs from the pinned hash."""


def file_hashes(path) -> tuple[str, str]:
  """(sha256 hex, git blob sha1 hex) of the file's bytes, in one pass."""
  sha256 = hashlib.sha256()
  blob = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
  with open(path, "rb") as fh:
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
      sha256.update(chunk)
      blob.update(chunk)
  return sha256.hexdigest(), blob.hexdigest()


def verify(path, spec: FileSpec) -> None:
  """Raises ChecksumError naming the file, the expected and the actual hash on a mismatch."""
  if not spec.known:
    logging.warning("No checksum is known for %s; its content is NOT verified.", path)
    return
  sha256, blob = file_hashes(path)
  blob_ok = spec.git_blob is not None and blob == spec.git_blob
  if spec.git_blob is not None and not blob_ok:
    raise ChecksumError(_mismatch(path, "git blob id", spec.git_blob, blob))
  if spec.sha256 is not None and sha256 != spec.sha256:
    if blob_ok and not spec.sha256_confirmed:
      logging.warning("%s: git blob id matches but the unconfirmed sha256 %s does not (found %s).",
                      path, spec.sha256, sha256)
      return
    raise ChecksumError(_mismatch(path, "sha256", spec.sha256, sha256))


def _mismatch(path, kind: str, expected: str, actual: str) -> str:
  return (f"{os.fspath(path)}: {kind} mismatch: expected {expected}, found {actual}. If you "
          "changed this file on purpose, pass verify_checksums=False (--verify_checksums=false).")
