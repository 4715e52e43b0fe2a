"""Optional peers for dot-product retrieval on the same embeddings: FAISS and ScaNN.

Both libraries are imported lazily (`pip install -e .[bench]` brings faiss-cpu; ScaNN is
`pip install scann`, Linux only); `available()` says which are importable, and callers skip the
rest with a note. Every peer answers `search(users [B, d], k, exclude [B, E], setting)` with
(scores [B, k], ids [B, k]) in NumPy, -1 / -inf padded, after asking for k + E neighbours and
dropping each user's excluded items. `setting` is the peer's search-time knob (IVF nprobe, HNSW
efSearch, ScaNN leaves searched); `build_s` is the index build time.

Peers:
  faiss_flat:  IndexFlatIP, exact;
  faiss_ivf:   IndexIVFFlat (inner product) over `nlist` k-means lists;
  faiss_hnsw:  IndexHNSWFlat, M neighbours per node, over the MIPS-to-L2 transform (items get
               a coordinate sqrt(max|x|^2 - |x|^2), queries a 0, so the nearest item in L2 is the
               best by inner product; HNSW's graph needs a metric, and searched with inner
               product directly it misses most of the top-K); scores are the inner products;
  faiss_ivf_rcq: IndexIVFFlat whose coarse quantizer is a 2-level residual quantizer
               ("IVF<nlist>(RCQ2x<nlist bits / 2>),Flat"), the closest FAISS analogue of a
               residual-quantization tree; nlist must be a power of 4;
  scann:       a partitioning tree + asymmetric hashing + exact reordering, ScaNN's default recipe;
               10x the neighbours asked for are reordered exactly (ScaNN's own ratio; with
               fewer, AH quantisation error caps exactness@100 near 0.9 however many leaves).
"""

from __future__ import annotations

import importlib
import time
from typing import Dict, Optional, Tuple

import numpy as np

PEERS = ("faiss_flat", "faiss_ivf", "faiss_ivf_rcq", "faiss_hnsw", "scann")


def _importable(module: str) -> bool:
  try:
    importlib.import_module(module)
    return True
  except ImportError:
    return False


def available() -> Dict[str, bool]:
  """{peer name: importable} for every name in PEERS."""
  has_faiss, has_scann = _importable("faiss"), _importable("scann")
  return {p: has_scann if p == "scann" else has_faiss for p in PEERS}


def drop_excluded(scores: np.ndarray, ids: np.ndarray, exclude: Optional[np.ndarray], k: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """First k neighbours of each row that are real (id >= 0) and not excluded.

  scores, ids: [B, k'] best first; exclude: [B, E] -1 padded or None. Returns [B, k] each.
  """
  keep = ids >= 0
  if exclude is not None:
    keep &= ~(ids[:, :, None] == np.where(exclude >= 0, exclude, -2)[:, None, :]).any(axis=2)
  order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, in rank order
  kept = np.take_along_axis(keep, order, axis=1)
  return (np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32),
          np.where(kept, np.take_along_axis(ids, order, axis=1), -1).astype(np.int32))


def mips_to_l2(items: np.ndarray) -> np.ndarray:
  """[V, d] -> [V, d + 1]: appends sqrt(max |x|^2 - |x|^2), so that for a query q padded with a 0,
  |q - x'|^2 = |q|^2 + max |x|^2 - 2 q.x: L2 order is inner-product order (Bachrach et al. 2014)."""
  norms = np.sum(items.astype(np.float64) ** 2, axis=1)
  extra = np.sqrt(np.maximum(norms.max() - norms, 0.0))
  return np.ascontiguousarray(np.concatenate([items, extra[:, None]], axis=1), np.float32)


class Peer:
  """A built ANN index over item vectors [V, d] (float32, inner product)."""

  def __init__(self, name: str, items: np.ndarray, *, nlist: int = 1024, hnsw_m: int = 32,
               scann_leaves: int = 1000, seed: int = 0):
    if name not in PEERS:
      raise ValueError(f"unknown peer {name!r}; known: {PEERS}")
    self.name = name
    items = np.ascontiguousarray(items, np.float32)
    start = time.perf_counter()
    if name == "scann":
      import scann  # pylint: disable=g-import-not-at-top
      self._index = (scann.scann_ops_pybind.builder(items, 10, "dot_product")
                     .tree(num_leaves=scann_leaves, num_leaves_to_search=scann_leaves // 10,
                           training_sample_size=min(items.shape[0], 250_000))
                     .score_ah(2, anisotropic_quantization_threshold=0.2)
                     .reorder(200).build())
    else:
      import faiss  # pylint: disable=g-import-not-at-top
      dim = items.shape[1]
      if name == "faiss_flat":
        self._index = faiss.IndexFlatIP(dim)
      elif name == "faiss_ivf":
        self._index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist,
                                         faiss.METRIC_INNER_PRODUCT)
        self._index.cp.seed = seed
        self._index.train(items)
      elif name == "faiss_ivf_rcq":
        bits = int(round(np.log2(nlist)))
        if 2 ** bits != nlist or bits % 2:
          raise ValueError(f"faiss_ivf_rcq needs nlist a power of 4 (two equal residual levels), got {nlist}")
        self._index = faiss.index_factory(dim, f"IVF{nlist}(RCQ2x{bits // 2}),Flat",
                                          faiss.METRIC_INNER_PRODUCT)
        self._index.train(items)
      else:
        self._items = items
        items = mips_to_l2(items)
        self._index = faiss.IndexHNSWFlat(dim + 1, hnsw_m)
      self._index.add(items)
    self.build_s = time.perf_counter() - start

  def search(self, users: np.ndarray, k: int, exclude: Optional[np.ndarray] = None,
             setting: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    users = np.ascontiguousarray(users, np.float32)
    wanted = k + (0 if exclude is None else exclude.shape[1])
    if self.name == "scann":
      ids, scores = self._index.search_batched(users, leaves_to_search=setting,
                                               final_num_neighbors=wanted,
                                               pre_reorder_num_neighbors=10 * wanted)
      ids = np.asarray(ids, np.int64)
    else:
      if self.name in ("faiss_ivf", "faiss_ivf_rcq") and setting:
        self._index.nprobe = int(setting)
      if self.name == "faiss_hnsw" and setting:
        self._index.hnsw.efSearch = int(setting)
      if self.name == "faiss_hnsw":
        _, ids = self._index.search(np.pad(users, ((0, 0), (0, 1))), wanted)
        scores = np.where(ids >= 0, np.einsum("bd,bkd->bk", users, self._items[np.maximum(ids, 0)]),
                          -np.inf)
      else:
        scores, ids = self._index.search(users, wanted)
    return drop_excluded(np.asarray(scores), ids, exclude, k)
