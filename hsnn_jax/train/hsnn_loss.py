"""The HSNN training loss, Eq. 4 of METHOD.md §2-3, as a pure function of the model's outputs.

Per batch (B users, C = B + S candidates: in-batch positives then S uniform negatives):

  loss = item + w_embed * embed                        item-level MoNN; <u, v> trains v
       + w_index(t) * sum_l (w_l * level_l + w_mse * mse_l)   Eq. 4: every index level, same labels
       + on * (w_rec * reconstruction + w_bal * balance + w_ens * ensemble)
       + w_distill * distillation                      optional, toward an EMA teacher

Every retrieval term is the configured sampled loss (`task.sampled_loss`) of that level's logits
over the same candidates and labels, passed in as `retrieval(logits [B, C]) -> scalar`. mse_l is
the auxiliary MSE of level l's interaction head toward the item-level interaction tower's output
on the same pairs (stop_gradient target). `on` is 1 once the index exists; w_index(t) warms up
linearly from the step the index was built (index/schedule.py).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from hsnn_jax.index.config import IndexConfig
from hsnn_jax.index.schedule import index_loss_weight
from hsnn_jax.models.hsnn import HSNNTrainOutput


@dataclasses.dataclass(frozen=True)
class HSNNLossWeights:
  """The weights of Eq. 4's terms (config.model and its index section)."""

  embedding: float
  embed_temperature: float
  levels: Tuple[float, ...]
  interaction_mse: float
  ensemble: float
  reconstruction: float
  balance: float
  index: float
  index_warmup_steps: int

  @classmethod
  def from_config(cls, m: ml_collections.ConfigDict, index: IndexConfig) -> "HSNNLossWeights":
    return cls(embedding=m.embedding_loss_weight, embed_temperature=m.embed_temperature,
               levels=tuple(m.level_loss_weights) or (1.0,) * index.num_levels,
               interaction_mse=m.interaction_mse_weight, ensemble=m.ensemble_loss_weight,
               reconstruction=index.reconstruction_weight, balance=index.balance_weight,
               index=index.index_loss_weight, index_warmup_steps=index.index_loss_warmup_steps)


def hsnn_loss(out: HSNNTrainOutput, retrieval: Callable[[jax.Array], jax.Array],
              weights: HSNNLossWeights, step: jax.Array, built_at: jax.Array,
              balance: jax.Array) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """(scalar loss, metrics) of Eq. 4 at `step`; built_at: the step the index was built (-1
  before), balance: the balance regularizer of this batch (index/balance.py)."""
  item_loss = retrieval(out.item_logits[..., 0])
  embed_loss = retrieval(out.embed_logits / weights.embed_temperature)
  level_losses = [retrieval(logits[..., 0]) for logits in out.level_logits]
  mse = [jnp.mean((p - jax.lax.stop_gradient(out.item_interaction))**2)
         for p in out.level_interaction if p is not None]
  ensemble_loss = retrieval(out.ensemble_logits[..., 0])
  on = (built_at >= 0).astype(jnp.float32)
  w_index = on * index_loss_weight(step - built_at, weights.index_warmup_steps, weights.index)
  index_term = sum(w * l for w, l in zip(weights.levels, level_losses))
  if mse:
    index_term = index_term + weights.interaction_mse * sum(mse)
  reconstruction = out.quantized.reconstruction_loss
  total = (item_loss + weights.embedding * embed_loss + w_index * index_term
           + on * (weights.reconstruction * reconstruction + weights.balance * balance
                   + weights.ensemble * ensemble_loss))
  metrics = {"item_loss": item_loss, "embed_loss": embed_loss, "ensemble_loss": ensemble_loss,
             "reconstruction": reconstruction, "balance": balance, "index_weight": w_index}
  metrics.update({f"level_{l}_loss": v for l, v in enumerate(level_losses)})
  if mse:
    metrics["interaction_mse"] = sum(mse) / len(mse)
  return total, metrics


def distillation_loss(students: Sequence[jax.Array], teacher: jax.Array, valid: jax.Array,
                      temperature: float) -> jax.Array:
  """Sum over students [B, C] of the mean over rows of the cross-entropy from
  softmax(teacher / T) to softmax(student / T); valid [B, C] masks candidates out."""
  neg = jnp.finfo(jnp.float32).min
  target = jax.nn.softmax(jnp.where(valid, jax.lax.stop_gradient(teacher) / temperature, neg))

  def one(student: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(jnp.where(valid, student / temperature, neg))
    return -jnp.mean(jnp.sum(jnp.where(valid, target * log_p, 0.0), axis=-1))

  return sum(one(s) for s in students)


def ema(teacher, params, decay: float):
  """The teacher moved toward `params` by an exponential moving average."""
  return jax.tree.map(lambda e, p: decay * e + (1 - decay) * jax.lax.stop_gradient(p),
                      teacher, params)
