"""Host loops over fixed-size chunks, so a jitted function compiles once for any row count.

`padded_chunks(n, chunk)` yields the row indices of each chunk, the last one padded by repeating
its final row; `map_in_chunks(fn, n, chunk)` applies fn to each and keeps the real rows.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Tuple

import jax
import numpy as np


def padded_chunks(n: int, chunk: int) -> Iterator[Tuple[int, np.ndarray, int]]:
  """(start, rows [C] int64 in [0, n), real rows r) for each chunk of C = min(chunk, n) rows;
  rows[r:] repeat the last real row."""
  size = max(1, min(int(chunk), n))
  for start in range(0, n, size):
    yield start, np.minimum(np.arange(start, start + size), n - 1), min(size, n - start)


def map_in_chunks(fn: Callable[[np.ndarray], Any], n: int, chunk: int) -> Any:
  """fn(rows [C]) -> pytree of [C, ...] arrays, over every chunk of range(n); returns the
  pytree of NumPy [n, ...] arrays (padding rows dropped). n must be positive."""
  if n <= 0:
    raise ValueError(f"map_in_chunks needs at least one row, got n={n}")
  parts = [jax.tree.map(lambda x, r=real: np.asarray(x)[:r], fn(rows))
           for _, rows, real in padded_chunks(n, chunk)]
  return jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
