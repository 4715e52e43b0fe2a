"""The train-and-evaluate loop: one readable function, `train_and_evaluate(config, workdir)`.

Per step (jitted, several steps per call through lax.fori_loop so the host only dispatches):
draw a batch on device from the PRNG key, compute the task loss and gradients, skip the update
if anything is non-finite (recording the step), apply optax. The host then logs, checkpoints,
validates and stops early. At the end the best parameters are evaluated on the test split and
`results.json` and `topk.npz` are written to the workdir.

Scale-out: everything runs on one ('data', 'model') mesh (config `mesh`, hsnn_jax/parallel):
the batch is split over 'data', large embedding tables over 'model', the rest replicated; the
jitted chunk takes and returns those shardings. With several processes (jax.distributed, see
hsnn_jax/parallel/distributed.py) every process runs this same function; process 0 writes the
logs and results, all take part in checkpoints.

Preemption: SIGTERM sets a flag that the loop reads between chunks; it then saves a checkpoint
and raises `Preempted` (experiments/train.py exits with PREEMPTED_EXIT_CODE). After a hard kill
the next run resumes from the newest intact checkpoint (see checkpoint.py), which holds the
PRNG key (the data position) and the early-stopping state, so it continues the same trajectory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import signal
import threading
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.experimental import multihost_utils

from hsnn_jax.data import cache
from hsnn_jax.data.types import RecDataset
from hsnn_jax.eval import evaluate as evaluation
from hsnn_jax.eval import hierarchical
from hsnn_jax.eval import reference
from hsnn_jax.eval.ne import heldout_ne
from hsnn_jax.parallel import distributed
from hsnn_jax.parallel import mesh as mesh_lib
from hsnn_jax.parallel import sharding
from hsnn_jax.train.sharded_sampler import make_sampler
from hsnn_jax.train import config_check, workdir_lock
from hsnn_jax.train.checkpoint import CheckpointError, Checkpointer
from hsnn_jax.train.sampler import DeviceInteractions, sample_batch, user_batch_for_eval
from hsnn_jax.train.task import FrozenBase
from hsnn_jax.train.tasks import RetrievalTask, build_task, model_kind
from hsnn_jax.train.writer import MetricWriter, write_json_atomic


# sysexits.h EX_TEMPFAIL ("try again"): a preempted run saved its state and should be re-run.
PREEMPTED_EXIT_CODE = 75


class NonFiniteError(FloatingPointError):
  """Raised when a step produced NaN/Inf; the last good checkpoint is left intact."""


class Preempted(Exception):
  """SIGTERM arrived; the state at `step` was saved in `directory`. Re-run to resume."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by SIGTERM after step {step}; state saved in {directory}; "
                     f"run the same command again to resume")
    self.step, self.directory = step, directory


# Errors that are the user's to fix (config, data, cache, numerics, disk, a busy workdir): the
# command-line entry points print them as one line and exit 1, without a traceback.
USER_ERRORS = (ValueError, OSError, NonFiniteError, CheckpointError, workdir_lock.WorkdirBusy)


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: Any
  aux: Any  # the task's non-trainable state (see RetrievalTask.init)
  opt_state: Any
  key: jax.Array  # raw uint32 [2] PRNG key: drives sampling, so resuming replays batches
  bad_step: jax.Array  # [] int32, first step with a non-finite loss or gradient, -1 if none


def hardware_description(mesh: jax.sharding.Mesh | None = None) -> str:
  d = jax.devices()[0]
  layout = "" if mesh is None else f"; mesh data={mesh.shape['data']} x model={mesh.shape['model']}"
  procs = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
  return (f"{jax.device_count()} x {d.device_kind} ({d.platform}){procs}; host "
          f"{platform.machine()} with {os.cpu_count()} CPU cores; jax {jax.__version__}{layout}")


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
    prepare.prepare_dataset(cfg.dataset, cache_dir=cfg.cache_dir, **dict(cfg.data))
  return cache.load(cfg.cache_dir, cfg.dataset)


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_chunk(task: RetrievalTask, tx, cfg: ml_collections.ConfigDict,
                     mesh: jax.sharding.Mesh | None = None, state_sharding: Any = None):
  """Returns jitted f(state, data, n) running n steps; metrics are means over those steps.

  With a `mesh`, `state` carries `state_sharding`, `data` is replicated, the batch is split
  over 'data' (see hsnn_jax/train/sharded_sampler.py) and the metrics come back replicated.
  """
  t = cfg.train
  fail_at = int(t.inject_nan_at_step)  # fault injection, for tests of the NaN guard
  if mesh is None:
    sample = lambda key, data: sample_batch(key, data, t.batch_size, t.num_negatives, task.history)
  else:
    sample = make_sampler(mesh, mode=t.sampling, batch_size=t.batch_size,
                          num_negatives=t.num_negatives, history=task.history)

  def one_step(state: TrainState, data: DeviceInteractions):
    key, k_batch, k_model = jax.random.split(state.key, 3)
    batch = sample(k_batch, data)
    (loss, (metrics, aux)), grads = jax.value_and_grad(
        lambda p: task.loss(p, state.aux, batch, k_model, data, state.step), has_aux=True)(state.params)
    if fail_at >= 0:
      loss = jnp.where(state.step == fail_at, jnp.nan, loss)
    ok = jnp.isfinite(loss) & _all_finite(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step is only recorded: the loop stops at the chunk's end, before any save,
    # so the state after it is never used and needs no per-step select to protect it.
    bad = jnp.where((state.bad_step < 0) & ~ok, state.step, state.bad_step)
    new = TrainState(step=state.step + 1, params=params, aux=aux, opt_state=opt_state, key=key,
                     bad_step=bad)
    return new, metrics

  def chunk(state, data, n):
    def body(_, carry):
      s, acc = carry
      s, m = one_step(s, data)
      return s, jax.tree.map(jnp.add, acc, m)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: one_step(state, data)[1]))
    state, total = jax.lax.fori_loop(0, n, body, (state, zeros))
    return state, jax.tree.map(lambda x: x / n, total)

  # n is traced, not static: chunks of any length (up to an index event, the last one) share
  # one compiled program.
  if mesh is None:
    return jax.jit(chunk, donate_argnums=0)
  everywhere = sharding.replicated(mesh)
  return jax.jit(chunk, donate_argnums=0, in_shardings=(state_sharding, everywhere, everywhere),
                 out_shardings=(state_sharding, everywhere))


def chunk_length(step: int, cfg: ml_collections.ConfigDict, use_valid: bool,
                 next_event: int | None) -> int:
  """Steps until the next log, checkpoint, validation or task event (e.g. an index build)."""
  t = cfg.train
  n = min(t.log_every, t.num_steps - step, t.checkpoint_every - step % t.checkpoint_every)
  if use_valid:
    n = min(n, t.eval_every - step % t.eval_every)
  return n if next_event is None else max(1, min(n, next_event - step))


def run_evaluation(task, params, aux, ds: RecDataset, cfg, split: str, max_users: int = 0):
  """Full-corpus ranking metrics of `split`; max_users > 0: a fixed sample of that many users."""
  make_users = user_batch_for_eval(ds, task.history_len, include_valid=(split == "test"))
  return evaluation.evaluate(task.scorer(params, aux), ds, split=split, ks=tuple(cfg.eval.ks),
                             make_user_batch=make_users, exclude_train=cfg.eval.exclude_train,
                             user_chunk=cfg.eval.user_chunk, item_chunk=cfg.eval.item_chunk,
                             max_users=max_users, seed=cfg.seed)


def beam_search_metrics(task, params, aux, ds: RecDataset, cfg,
                        exhaustive: evaluation.EvalResult) -> dict:
  """eval.beam_widths set and the task has its own index ('hsnn'): beam search for the users of
  `exhaustive`, its metrics, exactness against `exhaustive`'s top items, items scored and
  latency beside exhaustive scoring (eval/hierarchical.py). {} otherwise."""
  widths = tuple(cfg.eval.beam_widths)
  if not widths or task.hierarchy is None:
    return {}
  hier = task.hierarchy(params, aux)
  if len(widths) != hier.index.num_levels:
    raise ValueError(f"eval.beam_widths={widths}: one width per index level "
                     f"({hier.index.num_levels})")
  widths = tuple(min(w, n) for w, n in zip(widths, hier.index.num_nodes))
  out = hierarchical.evaluate_hierarchical(
      hier, ds, user_batch_for_eval(ds, task.history_len, include_valid=cfg.eval.split == "test"),
      beam_widths=widths, ks=tuple(cfg.eval.ks), split=cfg.eval.split,
      max_items=cfg.eval.beam_max_items, batch_size=cfg.eval.user_chunk,
      item_chunk=cfg.eval.item_chunk, exact=exhaustive.topk_items)
  out["beam_widths"] = ",".join(map(str, widths))
  return out


class _EarlyStopping:
  """Best validation value and validations since it improved; saved in every checkpoint."""

  def __init__(self, patience: int, saved: dict | None = None):
    self.patience = patience
    self.best, self.best_step, self.bad_evals = -np.inf, -1, 0
    if saved:
      self.best, self.best_step, self.bad_evals = (saved["best"], saved["best_step"],
                                                   saved["bad_evals"])

  def state(self) -> dict:
    return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

  def update(self, step: int, value: float) -> bool:
    """Records a validation value; returns True if it is the new best."""
    improved = value > self.best
    if improved:
      self.best, self.best_step, self.bad_evals = value, step, 0
    else:
      self.bad_evals += 1
    return improved

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_evals >= self.patience


class _StopOnSigterm:
  """While active, SIGTERM (a preemption notice) only sets `requested`; restored on exit."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    logging.warning("SIGTERM: saving a checkpoint at the end of this chunk, then stopping")

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _NoWriter:
  """Stands in for MetricWriter on processes other than 0."""

  def write(self, step, metrics):
    del step, metrics

  def close(self):
    pass


def _drop_metrics_after(workdir: str, step: int) -> None:
  """Removes metrics.jsonl lines past `step` (written by a run that died before its next
  checkpoint), so a resumed run's log reads as one uninterrupted run."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path) as fh:
    lines = fh.read().splitlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):  # a line cut short by the kill
      pass
  if len(kept) != len(lines):
    with open(path, "w") as fh:
      fh.write("".join(line + "\n" for line in kept))


def _load_dataset_once(cfg: ml_collections.ConfigDict) -> RecDataset:
  """Process 0 prepares the cache if needed while the others wait, then every process loads it."""
  if jax.process_count() > 1:
    if distributed.is_primary():
      load_dataset(cfg)
    multihost_utils.sync_global_devices("dataset prepared")
  return load_dataset(cfg)


def load_base(cfg: ml_collections.ConfigDict, ds: RecDataset) -> FrozenBase | None:
  """The frozen run under `cfg.model.base_workdir` (its best, else newest, checkpoint), or None.

  The base is rebuilt from its own config.json on this run's dataset and cache; it must be a
  'two_tower' run on the same data.
  """
  workdir = cfg.model.base_workdir if "base_workdir" in cfg.model else ""
  if not workdir:
    return None
  with open(os.path.join(workdir, "config.json")) as fh:
    saved = json.load(fh)
  where = f"model.base_workdir={workdir!r}"
  kind, dataset = saved.get("model", {}).get("kind"), saved.get("dataset")
  if kind != "two_tower" or dataset != cfg.dataset:
    raise ValueError(f"{where}: expected a 'two_tower' run on {cfg.dataset!r}, found a "
                     f"{kind!r} run on {dataset!r}")
  # Its config over today's defaults (fields added since it ran keep their defaults).
  base_cfg = ml_collections.ConfigDict(cfg.to_dict())
  base_cfg.model = model_kind("two_tower").default_model_config()
  _update_known(base_cfg, saved)
  base_cfg.cache_dir = cfg.cache_dir
  trained = load_trained(base_cfg, workdir)
  if (trained.ds.num_items, trained.ds.num_users) != (ds.num_items, ds.num_users):
    raise ValueError(f"{where}: its dataset has {trained.ds.num_items} items and "
                     f"{trained.ds.num_users} users, this run's {ds.num_items} and {ds.num_users}")
  logging.info("frozen base: %s (step %d)", workdir, trained.step)
  base_task = trained.task
  return FrozenBase(params=trained.params, logits=base_task.logits,
                    scorer=lambda params: base_task.scorer(params, ()),
                    history=base_task.history, history_len=base_task.history_len,
                    weight=float(cfg.model.base_weight))


def _update_known(config: ml_collections.ConfigDict, values: dict) -> None:
  """Sets every field of `values` that `config` has, recursively (others are ignored)."""
  for key, value in values.items():
    if key not in config:
      continue
    if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _update_known(config[key], value)
    else:
      config[key] = tuple(value) if isinstance(value, list) else value


@dataclasses.dataclass
class TrainingSetup:
  """Everything the loop needs, placed on the mesh: the initial state (before any resume)."""

  ds: RecDataset
  task: RetrievalTask
  data: DeviceInteractions  # replicated over the mesh
  state: TrainState  # with `state_sharding`
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  state_sharding: Any

  def train_chunk(self, cfg: ml_collections.ConfigDict):
    return make_train_chunk(self.task, self.tx, cfg, self.mesh, self.state_sharding)


def build_training(cfg: ml_collections.ConfigDict) -> TrainingSetup:
  """Validates cfg, loads the data, builds the task and the initial state on the mesh."""
  config_check.validate(cfg)
  mesh_lib.check_config(cfg, jax.device_count(), jax.process_count())
  mesh = mesh_lib.mesh_from_config(cfg)
  ds = _load_dataset_once(cfg)
  logging.info("%s; %s", ds.summary(), hardware_description(mesh))
  task = build_task(cfg, ds, load_base(cfg, ds))
  t = cfg.train
  data = DeviceInteractions.from_dataset(ds, task.history_len, t.max_sequence,
                                         t.sample_unit)
  init_key, train_key = jax.random.split(jax.random.PRNGKey(cfg.seed))
  example = sample_batch(train_key, data, t.batch_size, t.num_negatives, task.history)
  params, aux = task.init(init_key, example)
  tx = make_optimizer(t)
  state = TrainState(step=jnp.int32(0), params=params, aux=aux, opt_state=tx.init(params),
                     key=train_key, bad_step=jnp.int32(-1))
  # Every process built the same values from the same seed; each keeps its devices' shards.
  state_sharding = sharding.state_shardings(state, mesh,
                                            cfg.mesh.shard_min_rows)
  return TrainingSetup(
      ds=ds, task=task, tx=tx, mesh=mesh, state_sharding=state_sharding,
      state=sharding.put(state, state_sharding),
      data=sharding.put(data, jax.tree.map(lambda _: sharding.replicated(mesh), data)))


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) in `workdir`, evaluates, writes results.json; returns the results.

  The workdir is locked for the run (workdir_lock): a second live run on it raises WorkdirBusy.
  """
  config_check.validate(cfg)  # before anything is written
  mesh_lib.check_config(cfg, jax.device_count(), jax.process_count())
  with workdir_lock.hold(workdir, distributed.is_primary(), distributed.agree_any):
    return _train_and_evaluate(cfg, workdir)


def _train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  started = time.time()
  primary = distributed.is_primary()
  os.makedirs(workdir, exist_ok=True)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as fh:
      fh.write(cfg.to_json_best_effort(indent=1))
  setup = build_training(cfg)
  ds, task, data, state, mesh = setup.ds, setup.task, setup.data, setup.state, setup.mesh
  t = cfg.train
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=t.checkpoint_every,
                      keep=t.keep_checkpoints)
  best_ckpt = Checkpointer(os.path.join(workdir, "best"), save_every=1, keep=1, async_save=False)
  restored = ckpt.restore(state)
  state = restored.state
  stopper = _EarlyStopping(t.patience, restored.extra.get("early_stopping"))
  if restored.step is not None:
    logging.info("resumed from step %d in %s", restored.step, ckpt.directory)
    if primary:
      _drop_metrics_after(workdir, restored.step)
  writer = MetricWriter(workdir) if primary else _NoWriter()
  train_chunk = setup.train_chunk(cfg)
  use_valid = t.eval_every > 0 and ds.valid.nnz > 0

  def save(step, state):
    return ckpt.save(step, state, extra={"early_stopping": stopper.state()}, force=True)

  step = int(state.step)
  bar = tqdm.tqdm(total=t.num_steps, initial=step, desc="train",
                  disable=not (cfg.progress_bar and primary))
  start = time.time()
  with _StopOnSigterm() as sigterm:
    while step < t.num_steps and not stopper.should_stop:
      n = chunk_length(step, cfg, use_valid, task.next_event(step, state.aux))
      state, metrics = train_chunk(state, data, n)
      bad = int(state.bad_step)
      if bad >= 0:
        ckpt.wait()
        raise NonFiniteError(
            f"non-finite loss or gradient at step {bad}; training stopped. The last good "
            f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}; nothing after step "
            f"{bad} was saved.")
      step += n
      params, aux = task.between_chunks(step, state.params, state.aux)
      if params is not state.params or aux is not state.aux:  # host-side work: re-place it
        state = sharding.put(state.replace(params=params, aux=aux), setup.state_sharding)
      bar.update(n)
      metrics = {k: float(v) for k, v in metrics.items()}
      metrics["examples_per_sec"] = n * t.batch_size / max(time.time() - start, 1e-9)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
      if use_valid and step % t.eval_every == 0 and step >= t.eval_start:
        result = run_evaluation(task, *sharding.local_view((state.params, state.aux)), ds, cfg,
                                "valid", max_users=cfg.eval.valid_users)
        writer.write(step, {f"valid/{k}": v for k, v in result.metrics.items()})
        if stopper.update(step, result.metrics[cfg.eval.selection_metric]):
          best_ckpt.save(step, (state.params, state.aux), force=True)
        logging.info("step %d valid %s", step, result.metrics)
      if step % t.checkpoint_every == 0 or step >= t.num_steps:
        save(step, state)
      if distributed.agree_any(sigterm.requested):
        save(step, state)
        ckpt.close()
        best_ckpt.close()
        writer.close()
        bar.close()
        raise Preempted(step, ckpt.directory)
      start = time.time()
  save(step, state)  # a no-op unless early stopping ended the run between checkpoints
  bar.close()
  ckpt.close()

  params, aux = state.params, state.aux
  if best_ckpt.latest_step() is not None:
    (params, aux), best_step = best_ckpt.restore_latest((params, aux))
    logging.info("evaluating the best validation checkpoint (step %d)", best_step)
  best_ckpt.close()
  params, aux = sharding.local_view((params, aux))
  eval_started = time.time()
  result = run_evaluation(task, params, aux, ds, cfg, cfg.eval.split)
  if cfg.eval.ne_negatives > 0:
    result.metrics["ne"] = heldout_ne(
        task.scorer(params, aux), ds,
        user_batch_for_eval(ds, task.history_len, include_valid=(cfg.eval.split == "test")),
        cfg.eval.split, negatives_per_positive=cfg.eval.ne_negatives, seed=cfg.seed,
        user_chunk=cfg.eval.user_chunk)
  eval_seconds, beam_started = time.time() - eval_started, time.time()
  beam = beam_search_metrics(task, params, aux, ds, cfg, result)
  writer.write(step, {f"{cfg.eval.split}/{k}": v for k, v in result.metrics.items()})
  if beam:
    writer.write(step, {f"{cfg.eval.split}/beam/{k}": v for k, v in beam.items()
                        if k != "beam_widths"})
  writer.close()
  results = {"metrics": result.metrics, "config": json.loads(cfg.to_json_best_effort()),
             "hardware": hardware_description(mesh), "dataset": ds.summary(), "steps": step,
             "split": cfg.eval.split, **task.report(params, aux),
             **({"beam_search": beam} if beam else {}),
             # This process only: a resumed run counts from its resume.
             "wall_seconds": {"total": time.time() - started,
                              "final_eval": eval_seconds,
                              **({"beam_search": time.time() - beam_started} if beam else {})},
             "best_valid": None if stopper.best_step < 0 else {"step": stopper.best_step,
                                                               cfg.eval.selection_metric: stopper.best}}
  if primary:
    evaluation.save_topk(os.path.join(workdir, "topk.npz"), result, ds)
    if getattr(task, "export", None) is not None:
      task.export(params, aux, workdir)
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(format_metrics(f"{cfg.dataset} {cfg.eval.split}, {len(result.users)} users, full corpus",
                         result.metrics))
    print(reference.format_comparison(cfg.dataset, result.metrics))
    if beam:
      print(format_metrics(f"beam search through the learned index, widths {beam['beam_widths']}",
                           {k: v for k, v in beam.items() if k != "beam_widths"}))
  return results


def format_metrics(title: str, metrics: dict) -> str:
  width = max(len(k) for k in metrics)
  return "\n".join([title] + [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())])


@dataclasses.dataclass
class Trained:
  """A finished run, reloaded: the dataset, the task and its best (or last) parameters."""

  ds: RecDataset
  task: RetrievalTask
  params: Any
  aux: Any
  step: int

  def scorer(self):
    return self.task.scorer(self.params, self.aux)


def load_trained(cfg: ml_collections.ConfigDict, workdir: str) -> Trained:
  """Reloads the best validation checkpoint of `workdir`, or its newest one if it has none."""
  setup = build_training(cfg)
  best = Checkpointer(os.path.join(workdir, "best"), save_every=1, keep=1, async_save=False)
  if best.latest_step() is not None:
    (params, aux), step = best.restore_latest((setup.state.params, setup.state.aux))
  else:
    restored = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1).restore(
        setup.state)
    if restored.step is None:
      raise FileNotFoundError(f"no checkpoint in {workdir}: train it first")
    params, aux, step = restored.state.params, restored.state.aux, restored.step
  best.close()
  params, aux = sharding.local_view((params, aux))
  return Trained(ds=setup.ds, task=setup.task, params=params, aux=aux, step=int(step))
