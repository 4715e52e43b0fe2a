"""The learned index's life cycle during training: the one place where the modes differ.

  'joim' the index is built at `start_step` (residual k-means on the current item embeddings
         sets the codebooks, unless codebook_init='normal'), then trained jointly with the
         model through the soft assignment; every item's hard codes (what index health, node
         keys and serving read) are recomputed on the steps that are multiples of
         `refresh_every`.
  'sil'  at `start_step` (> 0) residual k-means on the trained item embeddings fixes every
         item's codes and the codebooks; they never change again.
  'em'   as 'sil', and every `em_every` steps the codes and codebooks are recomputed by
         residual k-means on the current item embeddings (the E step).

Events happen on exact steps: `next_event(step, state)` tells the trainer where to end its
chunk, so the logging or checkpoint cadence never moves an index event. Building (or
re-clustering) also resets the balance windows.

I2IF keys on attribute-free data (`node_key_limit` set): each item's code prefix at every level
with at most that many possible nodes, offset per level, refreshed whenever the codes change;
-1 (no key) before the index exists.

The embedding pass and the codebook parameters belong to the model; the caller passes
`embed_and_code(params, state) -> ([V, d] embeddings, [V, L] codes)` and reads and writes the
quantizer's parameters, so this module knows nothing of the model.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hsnn_jax.index import balance as balance_lib
from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.kmeans import residual_kmeans
from hsnn_jax.index.residual_quantizer import prefix_ids, set_codebooks

EmbedAndCode = Callable[[Any, "IndexState"], Tuple[np.ndarray, np.ndarray]]


@flax.struct.dataclass
class IndexState:
  """Non-trainable index state. windows: one BalanceWindow per level; codes [V, L] int32: every
  item's hard codes; item_keys [V, A] int32 I2IF keys; built_at / last_cluster: int32 scalars,
  the steps the index was built / last (re)clustered (-1 before)."""

  windows: Tuple[balance_lib.BalanceWindow, ...]
  codes: jax.Array
  item_keys: jax.Array
  built_at: jax.Array
  last_cluster: jax.Array

  @property
  def built(self) -> jax.Array:
    return self.built_at >= 0


def node_key_levels(nodes_per_level: Sequence[int], limit: int) -> Tuple[int, ...]:
  """Possible node counts prod(K_0..K_l) of the levels that serve as I2IF keys (<= limit)."""
  counts = np.cumprod(np.asarray(nodes_per_level, np.int64))
  return tuple(int(c) for c in counts[counts <= limit])


def node_keys(codes: np.ndarray, nodes_per_level: Sequence[int], limit: int) -> np.ndarray:
  """[V, A] int32 keys: the flat code prefix of each item at each key level, offset per level
  (one column of -1, no key, when no level fits under the limit)."""
  counts = node_key_levels(nodes_per_level, limit)
  if not counts:
    return np.full((codes.shape[0], 1), -1, np.int32)
  prefixes = np.asarray(prefix_ids(jnp.asarray(codes, jnp.int32), nodes_per_level))
  offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
  return (prefixes[:, :len(counts)] + offsets).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class IndexLifecycle:
  """config: the index; balance_widths: columns of each level's balance window; seed: of the
  k-means key; node_key_limit: None when the item keys are attributes (never touched), else
  the I2IF node-key limit."""

  config: IndexConfig
  balance_widths: Tuple[int, ...]
  seed: int
  node_key_limit: Optional[int] = None

  def initial_state(self, num_items: int, item_keys: np.ndarray) -> IndexState:
    return IndexState(windows=self._fresh_windows(),
                      codes=jnp.zeros((num_items, self.config.num_levels), jnp.int32),
                      item_keys=jnp.asarray(item_keys, jnp.int32), built_at=jnp.int32(-1),
                      last_cluster=jnp.int32(-1))

  def initial_keys(self, num_items: int) -> Tuple[np.ndarray, int]:
    """Node keys before the index exists ([V, A] of -1) and the key vocabulary size."""
    levels = node_key_levels(self.config.nodes_per_level, self.node_key_limit)
    return np.full((num_items, max(len(levels), 1)), -1, np.int32), max(sum(levels), 1)

  def next_event(self, step: int, state: IndexState) -> Optional[int]:
    """The first step > `step` at which `update` changes the index (None: never again)."""
    c = self.config
    built_at = int(state.built_at)
    if built_at < 0:
      return c.start_step if c.start_step > step else step + 1
    if c.mode == "em":
      return int(state.last_cluster) + c.em_every * (
          1 + max(0, step - int(state.last_cluster)) // c.em_every)
    if c.mode == "joim":
      return (step // c.refresh_every + 1) * c.refresh_every
    return None

  def update(self, step: int, quantizer: Any, state: IndexState, params: Any,
             embed_and_code: EmbedAndCode) -> Tuple[Any, IndexState]:
    """The index after training step `step`: (quantizer params, state), unchanged unless an
    event is due (the build, an EM re-clustering, a JOIM code refresh)."""
    c = self.config
    if int(state.built_at) < 0:
      if step < c.start_step:
        return quantizer, state
      return self.build(step, quantizer, state, params, embed_and_code, first=True)
    if c.mode == "em" and step - int(state.last_cluster) >= c.em_every:
      return self.build(step, quantizer, state, params, embed_and_code, first=False)
    if c.mode == "joim" and step % c.refresh_every == 0:
      return quantizer, self.with_codes(state, embed_and_code(params, state)[1])
    return quantizer, state

  def build(self, step: int, quantizer: Any, state: IndexState, params: Any,
            embed_and_code: EmbedAndCode, first: bool) -> Tuple[Any, IndexState]:
    """(Re)builds the index at `step`: residual k-means codebooks unless JOIM starts from its
    'normal' init; resets the balance windows and refreshes the codes and node keys."""
    c = self.config
    embeddings, codes = embed_and_code(params, state)
    if c.codebook_init == "kmeans" or c.mode != "joim":
      result = residual_kmeans(jax.random.fold_in(jax.random.PRNGKey(self.seed), step),
                               embeddings, c.nodes_per_level, c.kmeans_iters, c.kmeans_init,
                               c.kmeans_chunk_size)
      quantizer = set_codebooks(quantizer, result.codebooks)
      codes = np.asarray(result.codes)
      logging.info("index %s at step %d: residual k-means errors %s",
                   "built" if first else "re-clustered", step, np.asarray(result.errors))
    state = state.replace(windows=self._fresh_windows(),
                          built_at=jnp.int32(step) if first else state.built_at,
                          last_cluster=jnp.int32(step))
    return quantizer, self.with_codes(state, codes)

  def with_codes(self, state: IndexState, codes: np.ndarray) -> IndexState:
    """`state` holding `codes`, and on attribute-free data the node keys they define."""
    state = state.replace(codes=jnp.asarray(codes, jnp.int32))
    if self.node_key_limit is None:
      return state
    return state.replace(item_keys=jnp.asarray(
        node_keys(np.asarray(codes), self.config.nodes_per_level, self.node_key_limit)))

  def fixed_codes(self, state: IndexState, item_ids: jax.Array) -> Optional[jax.Array]:
    """[N, L] codes of `item_ids` where the index is fixed during model training (SIL, EM);
    None in JOIM, where the candidates are assigned softly (traceable)."""
    return None if self.config.mode == "joim" else jnp.take(state.codes, item_ids, axis=0)

  def _fresh_windows(self) -> Tuple[balance_lib.BalanceWindow, ...]:
    return balance_lib.init_windows(self.config.balance_window, self.balance_widths)

