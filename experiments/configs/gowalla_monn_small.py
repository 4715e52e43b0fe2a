"""Gowalla (LightGCN split), MoNN Small (HSNN Table 5: u 8x40, i 1x40, ui 1x40).

  python -m experiments.prepare --dataset=gowalla --manual_dir=../shared/data/lightgcn/gowalla
  python -m experiments.train --config=experiments/configs/gowalla_monn_small.py --workdir=runs/gowalla_monn_small
  python -m experiments.train --config=experiments/configs/gowalla_monn_small.py:accelerator --workdir=runs/gowalla_monn_small_acc

Full-corpus Recall@20 / NDCG@20 on test.txt, training items excluded (LightGCN protocol), the
same sampled softmax as gowalla_two_tower.py. The user tower reads the user's training items
('full' history). Gowalla has no item attributes, so a MoNN has no I2IF keys; the HSNN config
(gowalla_hsnn.py) uses its learned index nodes as keys instead.

Presets:
  'cpu' (default): monn_small_lite (monn.py's public-data size) without the interaction tower,
        which would only see zeros here; 256 examples x (256 in-batch + 512 uniform) candidates
        per step, 6,000 steps (about 2 epochs of the 810K training pairs).
  'warm': the 'cpu' preset as a residual over the frozen two-tower of gowalla_two_tower.py (run
        it first with --workdir=runs/gowalla_two_tower): logit = MoNN logit + base logit, the
        MoNN's output layer zeroed at init so training starts at the base (task.py FrozenBase).
  'accelerator': MoNN Small of Table 5 (its interaction tower sees zeros), 1024 x (1024 + 1024)
        candidates, 12,000 steps: every (user, candidate) pair runs the OverArch and the
        interaction tower.
"""

from experiments.configs import gowalla_two_tower
from hsnn_jax.train import task_monn

PRESETS = ("cpu", "accelerator", "warm")


def get_config(preset: str = "cpu"):
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; known: {PRESETS}")
  if preset == "warm":
    return warm(get_config("cpu"))
  c = gowalla_two_tower.get_config()  # data, schedule, metrics
  c.model = task_monn.default_model_config(preset="monn_small", history="full")
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 200
  c.eval.user_chunk = 256
  c.eval.item_chunk = 8192
  if preset == "accelerator":
    c.train.batch_size = 1024
    c.train.num_negatives = 1024
    return c
  c.model.preset = "monn_small_lite"
  c.model.overrides.num_embed_ui = 0
  c.train.batch_size = 256
  c.train.num_negatives = 512
  c.train.num_steps = 6000
  c.eval.user_chunk = 32  # small chunks: faster full-corpus scoring on CPU (README)
  c.eval.item_chunk = 1024
  return c


BASE_WORKDIR = "runs/gowalla_two_tower"  # where the README's base command writes its run


def warm(c):
  """The 'warm' preset over a cpu config (MoNN or HSNN): a residual over the trained base."""
  c.model.base_workdir = BASE_WORKDIR
  return c
