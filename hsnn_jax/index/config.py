"""Every knob of the learned index (METHOD.md §3) that the papers leave open.

One frozen dataclass, read by the residual quantizer, the schedules, the balance regularizer,
k-means and the training loop. `validate()` raises one ValueError naming the bad field.

Units: distances are squared (or plain) L2 between item embeddings and codewords, so `max_alpha`
is in inverse distance units; the defaults assume item embeddings of norm ~1 (the typical gap
between nearest and second-nearest squared distance is then ~0.05-0.5, and alpha=50 makes the
softmax nearly one-hot). Rescale `max_alpha` with the square of the embedding scale. The
defaults of max_alpha, alpha_exponent and balance_weight were picked from a small grid on planted
clusters (tests/test_index_learning.py), not tuned on real data.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

DISTANCES = ("squared_l2", "l2")
MODES = ("joim", "sil", "em")
CODEBOOK_INITS = ("kmeans", "normal")
KMEANS_INITS = ("kmeans++", "random")


@dataclasses.dataclass(frozen=True)
class IndexConfig:
  """Configuration of the learned hierarchical index.

  Attributes:
    nodes_per_level: codebook size K_l of each level, coarsest first; its length is the number
      of index levels L. A level-l node is a code prefix, so level l has at most prod K_0..K_l
      nodes.
    distance: 'squared_l2' (HILL, default) or 'l2' (HSNN) between a residual and a codeword.
    straight_through: forward the hard codeword, backpropagate through the soft one. Off by
      default: the papers train the soft path only.
    mode: 'joim' (index losses train the item tower and the codebooks), 'sil' (codebooks from
      residual k-means on trained item embeddings, frozen, no gradient into the item tower) or
      'em' (alternating; during model training the index is fixed exactly as in 'sil').
    codebook_init: 'kmeans' (residual k-means on the current item embeddings, the default) or
      'normal' (N(0, codebook_init_scale^2) entries).
    codebook_init_scale: standard deviation of the 'normal' codebook init.
    max_alpha: temperature reached at the last step: soft = softmax(-alpha * distance).
    alpha_exponent: alpha_t = max_alpha * (t / max_steps) ** alpha_exponent.
    min_alpha: floor of alpha_t, so step 0 is not a uniform assignment that carries no signal.
    balance_window: W, the number of most recent batches (the current one included) whose soft
      assignments the balance regularizer pools.
    balance_weight: weight of the balance regularizer sum_l K_l * balance_l (each level is 1 at
      perfect balance, K_l when collapsed; see balance.balance_loss_and_update).
    reconstruction_weight: weight of ||sum_l c̄_l - v||^2.
    index_loss_weight: final weight of the index supervision loss (after warm-up).
    index_loss_warmup_steps: linear warm-up length of the index loss weight; 0 = no warm-up.
    kmeans_iters: Lloyd iterations per level of (residual) k-means.
    kmeans_init: 'kmeans++' or 'random' (distinct random points).
    kmeans_chunk_size: rows per distance chunk in k-means; bounds memory at chunk x K floats.
    start_step: the training step the index is built at (> 0 for 'sil' and 'em', which cluster a
      trained item model; see lifecycle.py).
    em_every: 'em': steps between re-clusterings (the E step).
    refresh_every: 'joim': every item's hard codes (and node keys) are recomputed on the steps
      that are multiples of this (the soft assignment itself is trained every step).
  """

  nodes_per_level: Tuple[int, ...] = (32, 32)
  distance: str = "squared_l2"
  straight_through: bool = False
  mode: str = "joim"
  codebook_init: str = "kmeans"
  codebook_init_scale: float = 0.02
  max_alpha: float = 50.0
  alpha_exponent: float = 1.0
  min_alpha: float = 1.0
  balance_window: int = 8
  balance_weight: float = 1.0
  reconstruction_weight: float = 1.0
  index_loss_weight: float = 1.0
  index_loss_warmup_steps: int = 1000
  kmeans_iters: int = 25
  kmeans_init: str = "kmeans++"
  kmeans_chunk_size: int = 16384
  start_step: int = 0
  em_every: int = 1000
  refresh_every: int = 100

  @property
  def num_levels(self) -> int:
    return len(self.nodes_per_level)

  @property
  def stop_gradient_input(self) -> bool:
    """Whether index losses must not reach the item tower (SIL and the model step of EM)."""
    return self.mode != "joim"

  @property
  def freeze_codebooks(self) -> bool:
    """Whether the codebooks are fixed during model training (SIL and the model step of EM)."""
    return self.mode != "joim"

  def validate(self) -> "IndexConfig":
    """Raises ValueError naming the first bad field; returns self so it can be chained."""
    if not isinstance(self.nodes_per_level, tuple) or not self.nodes_per_level:
      raise ValueError(f"nodes_per_level must be a non-empty tuple, got {self.nodes_per_level!r}")
    if any(not isinstance(k, int) or k < 2 for k in self.nodes_per_level):
      raise ValueError(f"nodes_per_level entries must be ints >= 2, got {self.nodes_per_level}")
    _check_choice("distance", self.distance, DISTANCES)
    _check_choice("mode", self.mode, MODES)
    _check_choice("codebook_init", self.codebook_init, CODEBOOK_INITS)
    _check_choice("kmeans_init", self.kmeans_init, KMEANS_INITS)
    _check_positive("codebook_init_scale", self.codebook_init_scale)
    _check_positive("max_alpha", self.max_alpha)
    _check_positive("alpha_exponent", self.alpha_exponent)
    _check_positive("min_alpha", self.min_alpha)
    if self.min_alpha > self.max_alpha:
      raise ValueError(f"min_alpha ({self.min_alpha}) must not exceed max_alpha ({self.max_alpha})")
    _check_positive("balance_window", self.balance_window)
    _check_positive("kmeans_iters", self.kmeans_iters)
    _check_positive("kmeans_chunk_size", self.kmeans_chunk_size)
    _check_positive("em_every", self.em_every)
    _check_positive("refresh_every", self.refresh_every)
    if not isinstance(self.start_step, int) or self.start_step < 0:
      raise ValueError(f"start_step must be an int >= 0, got {self.start_step!r}")
    for name in ("balance_weight", "reconstruction_weight", "index_loss_weight",
                 "index_loss_warmup_steps"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    return self


def _check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_positive(name: str, value) -> None:
  if not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}")
