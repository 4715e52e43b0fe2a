"""The published (serving) form of a learned hierarchical index: static, padded int arrays.

An index of L levels over V items. Level 0 is the coarsest; item membership at level l is the
code prefix (m_0, ..., m_l), so the levels form a tree. Nodes of level l have dense ids
0..num_nodes[l]-1 (only non-empty prefixes get an id). Every array is padded with -1, so
retrieval can run under jit with fixed shapes and masks.

  item_path[v, l]       node id of item v at level l                          [V, L]
  codes[v, l]           raw codebook index m_l of item v at level l            [V, L]
  children[l][n, j]     j-th child node (level l+1) of node n at level l        [num_nodes[l], max_children[l]]
                        (defined for l < L-1)
  node_items[n, j]      j-th item under leaf node n (level L-1)                 [num_nodes[L-1], max_items]
  parent[l][n]          parent node (level l-1) of node n at level l, -1 for l=0 [num_nodes[l]]
  representative[l][n]  the corpus item nearest to node n's embedding; its features stand in
                        for the node's at serving time                          [num_nodes[l]]
  node_embedding[l][n]  the node's embedding (sum of codewords along its prefix)  [num_nodes[l], d]
"""

from __future__ import annotations

import zipfile
from typing import Tuple

import flax.struct
import jax
import numpy as np

from hsnn_jax import atomic_write


class IndexFileError(ValueError):
  """A published index file is damaged, truncated or not an index."""


@flax.struct.dataclass
class PublishedIndex:
  item_path: jax.Array
  codes: jax.Array
  children: Tuple[jax.Array, ...]
  node_items: jax.Array
  parent: Tuple[jax.Array, ...]
  representative: Tuple[jax.Array, ...]
  node_embedding: Tuple[jax.Array, ...]

  @property
  def num_levels(self) -> int:
    return int(self.item_path.shape[1])

  @property
  def num_items(self) -> int:
    return int(self.item_path.shape[0])

  @property
  def num_nodes(self) -> Tuple[int, ...]:
    return tuple(int(r.shape[0]) for r in self.representative)

  def save(self, path: str) -> None:
    """Writes every array to the npz `path`, atomically (see writer.atomic_path)."""
    arrays = {"item_path": self.item_path, "codes": self.codes, "node_items": self.node_items}
    for name in ("children", "parent", "representative", "node_embedding"):
      for l, a in enumerate(getattr(self, name)):
        arrays[f"{name}.{l}"] = a
    with atomic_write.atomic_path(path) as tmp:
      np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})

  @classmethod
  def load(cls, path: str) -> "PublishedIndex":
    """Reads `save`'s file; IndexFileError (a ValueError) if it is damaged or not an index."""
    try:
      with np.load(path) as z:
        a = {k: z[k] for k in z.files}
      levels = a["item_path"].shape[1]
      seq = lambda name, n: tuple(a[f"{name}.{l}"] for l in range(n))
      return cls(item_path=a["item_path"], codes=a["codes"], node_items=a["node_items"],
                 children=seq("children", levels - 1), parent=seq("parent", levels),
                 representative=seq("representative", levels),
                 node_embedding=seq("node_embedding", levels))
    except FileNotFoundError:
      raise
    except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as err:
      what = f"missing array {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
      raise IndexFileError(
          f"published index {path} cannot be read ({what}). It is written at the end of an "
          f"'hsnn' run: run the same `python -m experiments.train` command on its workdir again "
          f"(it restores the final checkpoint and rewrites index.npz)") from None
