"""The train-and-evaluate loop: one readable function, `train_and_evaluate(config, workdir)`.

Per step (jitted, several steps per call through lax.fori_loop so the host only dispatches):
draw a batch on device from the PRNG key, compute the task loss and gradients, skip the update
if anything is non-finite (recording the step), apply optax. The host then logs, checkpoints,
validates and stops early. At the end the best parameters are evaluated on the test split and
`results.json` and `topk.npz` are written to the workdir.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from hsnn_jax.data import cache
from hsnn_jax.data.types import RecDataset
from hsnn_jax.eval import evaluate as evaluation
from hsnn_jax.eval import reference
from hsnn_jax.train import config_check
from hsnn_jax.train.checkpoint import Checkpointer
from hsnn_jax.train.sampler import DeviceInteractions, sample_batch, user_batch_for_eval
from hsnn_jax.train.tasks import RetrievalTask, build_task
from hsnn_jax.train.writer import MetricWriter


class NonFiniteError(FloatingPointError):
  """Raised when a step produced NaN/Inf; the last good checkpoint is left intact."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: Any
  aux: Any  # the task's non-trainable state (see RetrievalTask.init)
  opt_state: Any
  key: jax.Array  # raw uint32 [2] PRNG key: drives sampling, so resuming replays batches
  bad_step: jax.Array  # [] int32, first step with a non-finite loss or gradient, -1 if none


def hardware_description() -> str:
  d = jax.devices()[0]
  return (f"{jax.device_count()} x {d.device_kind} ({d.platform}); host {platform.machine()} "
          f"with {os.cpu_count()} CPU cores; jax {jax.__version__}")


def make_optimizer(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  if t.schedule == "cosine":
    lr = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1),
                                            t.num_steps, end_value=t.learning_rate * 0.01)
  else:
    lr = optax.linear_schedule(0.0, t.learning_rate, max(t.warmup_steps, 1))
  if t.optimizer == "adamw":
    opt = optax.adamw(lr, weight_decay=t.weight_decay)
  elif t.optimizer == "adam":
    opt = optax.chain(optax.add_decayed_weights(t.weight_decay), optax.adam(lr))
  else:
    opt = optax.chain(optax.add_decayed_weights(t.weight_decay), optax.adagrad(lr))
  return optax.chain(optax.clip_by_global_norm(t.grad_clip), opt) if t.grad_clip > 0 else opt


def load_dataset(cfg: ml_collections.ConfigDict) -> RecDataset:
  if not cache.exists(cfg.cache_dir, cfg.dataset):
    from hsnn_jax.data import prepare  # pylint: disable=import-outside-toplevel
    prepare.prepare_dataset(cfg.dataset, cache_dir=cfg.cache_dir, **dict(cfg.get("data", {})))
  return cache.load(cfg.cache_dir, cfg.dataset)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_chunk(task: RetrievalTask, tx, cfg: ml_collections.ConfigDict):
  """Returns jitted f(state, data, n) running n steps; metrics are means over those steps."""
  t = cfg.train
  fail_at = int(t.get("inject_nan_at_step", -1))  # fault injection, for tests of the NaN guard

  def one_step(state: TrainState, data: DeviceInteractions):
    key, k_batch, k_model = jax.random.split(state.key, 3)
    batch = sample_batch(k_batch, data, t.batch_size, t.num_negatives, task.history)
    (loss, (metrics, aux)), grads = jax.value_and_grad(
        lambda p: task.loss(p, state.aux, batch, k_model, data, state.step), has_aux=True)(state.params)
    if fail_at >= 0:
      loss = jnp.where(state.step == fail_at, jnp.nan, loss)
    ok = jnp.isfinite(loss) & _all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    bad = jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step)
    new = TrainState(step=state.step + 1, params=keep(params, state.params), aux=keep(aux, state.aux),
                     opt_state=keep(opt_state, state.opt_state), key=key, bad_step=bad)
    return new, metrics

  def chunk(state, data, n):
    def body(_, carry):
      s, acc = carry
      s, m = one_step(s, data)
      return s, jax.tree.map(jnp.add, acc, m)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: one_step(state, data)[1]))
    state, total = jax.lax.fori_loop(0, n, body, (state, zeros))
    return state, jax.tree.map(lambda x: x / n, total)

  return jax.jit(chunk, static_argnums=2, donate_argnums=0)


def run_evaluation(task, params, aux, ds: RecDataset, cfg, split: str):
  make_users = user_batch_for_eval(ds, task.history_len, include_valid=(split == "test"))
  return evaluation.evaluate(task.scorer(params, aux), ds, split=split, ks=tuple(cfg.eval.ks),
                             make_user_batch=make_users, exclude_train=cfg.eval.exclude_train,
                             user_chunk=cfg.eval.user_chunk, item_chunk=cfg.eval.item_chunk)


class _EarlyStopping:
  """Best validation value and steps since it improved, persisted so a resumed run continues."""

  def __init__(self, path: str, patience: int):
    self.path, self.patience = path, patience
    self.best, self.best_step, self.bad_evals = -np.inf, -1, 0
    if os.path.exists(path):
      with open(path) as fh:
        s = json.load(fh)
      self.best, self.best_step, self.bad_evals = s["best"], s["best_step"], s["bad_evals"]

  def update(self, step: int, value: float) -> bool:
    """Records a validation value; returns True if it is the new best."""
    improved = value > self.best
    if improved:
      self.best, self.best_step, self.bad_evals = value, step, 0
    else:
      self.bad_evals += 1
    with open(self.path, "w") as fh:
      json.dump({"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}, fh)
    return improved

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_evals >= self.patience


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  config_check.validate(cfg)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as fh:
    fh.write(cfg.to_json_best_effort(indent=1))
  ds = load_dataset(cfg)
  logging.info("%s", ds.summary())
  task = build_task(cfg, ds)
  t = cfg.train
  data = DeviceInteractions.from_dataset(ds, task.history_len, t.get("max_sequence", 0))
  init_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
  example = sample_batch(train_key, data, t.batch_size, t.num_negatives, task.history)
  params, aux = task.init(init_key, example)
  tx = make_optimizer(t)
  state = TrainState(step=jnp.int32(0), params=params, aux=aux, opt_state=tx.init(params),
                     key=train_key, bad_step=jnp.int32(-1))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=t.checkpoint_every,
                      keep=t.keep_checkpoints)
  best_ckpt = Checkpointer(os.path.join(workdir, "best"), save_every=1, keep=1, async_save=False)
  state, resumed = ckpt.restore_latest(state)
  if resumed is not None:
    logging.info("resumed from step %d in %s", resumed, ckpt.directory)
  stopper = _EarlyStopping(os.path.join(workdir, "early_stopping.json"), t.patience)
  writer = MetricWriter(workdir)
  train_chunk = make_train_chunk(task, tx, cfg)
  use_valid = t.eval_every > 0 and ds.valid.nnz > 0

  step = int(state.step)
  bar = tqdm.tqdm(total=t.num_steps, initial=step, desc="train", disable=not cfg.progress_bar)
  start = time.time()
  while step < t.num_steps and not stopper.should_stop:
    # Chunks end on every log, checkpoint and validation boundary.
    n = min(t.log_every, t.num_steps - step, t.checkpoint_every - step % t.checkpoint_every)
    if use_valid:
      n = min(n, t.eval_every - step % t.eval_every)
    state, metrics = train_chunk(state, data, n)
    bad = int(state.bad_step)
    if bad >= 0:
      ckpt.wait()
      raise NonFiniteError(
          f"non-finite loss or gradient at step {bad}; training stopped. The last good checkpoint "
          f"is step {ckpt.latest_step()} in {ckpt.directory}; nothing after step {bad} was saved.")
    step += n
    params, aux = task.between_chunks(step, state.params, state.aux)
    state = state.replace(params=params, aux=aux)
    bar.update(n)
    metrics = {k: float(v) for k, v in metrics.items()}
    metrics["examples_per_sec"] = n * t.batch_size / max(time.time() - start, 1e-9)
    start = time.time()
    bar.set_postfix(loss=f"{metrics['loss']:.4f}")
    writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
    if step % t.checkpoint_every == 0 or step >= t.num_steps:
      ckpt.save(step, state, force=True)
    if use_valid and step % t.eval_every == 0:
      result = run_evaluation(task, state.params, state.aux, ds, cfg, "valid")
      writer.write(step, {f"valid/{k}": v for k, v in result.metrics.items()})
      if stopper.update(step, result.metrics[cfg.eval.selection_metric]):
        best_ckpt.save(step, (state.params, state.aux), force=True)
      logging.info("step %d valid %s", step, result.metrics)
  bar.close()
  ckpt.close()

  params, aux = state.params, state.aux
  if best_ckpt.latest_step() is not None:
    (params, aux), best_step = best_ckpt.restore_latest((params, aux))
    logging.info("evaluating the best validation checkpoint (step %d)", best_step)
  best_ckpt.close()
  result = run_evaluation(task, params, aux, ds, cfg, cfg.eval.split)
  writer.write(step, {f"{cfg.eval.split}/{k}": v for k, v in result.metrics.items()})
  writer.close()
  evaluation.save_topk(os.path.join(workdir, "topk.npz"), result, ds)
  results = {"metrics": result.metrics, "config": json.loads(cfg.to_json_best_effort()),
             "hardware": hardware_description(), "dataset": ds.summary(), "steps": step,
             "split": cfg.eval.split, **task.report(params, aux),
             "best_valid": None if stopper.best_step < 0 else {"step": stopper.best_step,
                                                               cfg.eval.selection_metric: stopper.best}}
  with open(os.path.join(workdir, "results.json"), "w") as fh:
    json.dump(results, fh, indent=1)
  print(format_metrics(f"{cfg.dataset} {cfg.eval.split}, {len(result.users)} users, full corpus",
                       result.metrics))
  print(reference.format_comparison(cfg.dataset, result.metrics))
  return results


def format_metrics(title: str, metrics: dict) -> str:
  width = max(len(k) for k in metrics)
  return "\n".join([title] + [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())])
