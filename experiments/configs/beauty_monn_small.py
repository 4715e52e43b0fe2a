"""Amazon Beauty (S3-Rec 5-core, leave-one-out), MoNN Small with category / brand I2IF keys.

  python -m experiments.prepare --dataset=beauty --manual_dir=../shared/data/amazon-s3rec
  python -m experiments.train --config=experiments/configs/beauty_monn_small.py --workdir=runs/beauty_monn_small
  python -m experiments.train --config=experiments/configs/beauty_monn_small.py:accelerator --workdir=runs/beauty_monn_small_acc

TIGER protocol: last item = test, second-last = validation; full-corpus Recall / NDCG @5, @10.
The user tower reads the items before the label ('causal' history); item attributes
(Beauty_item2attributes.json) are the I2IF keys, so the interaction tower sees the share of the
user's history in each of the candidate's categories and brand. Early stopping on validation
Recall@10 over a fixed sample of validation users; the best checkpoint is evaluated on test
over every user.

Presets:
  'cpu' (default): sized for the 2-core budget of a run in minutes: MoNN Small's public-data
        size (monn_small_lite: Table 5's embedding counts, narrower per-pair work, see monn.py),
        128 examples x (128 in-batch + 256 uniform) candidates per step, 3,000 steps,
        validation on 1,000 users.
  'warm': the 'cpu' preset as a residual over the frozen SASRec base of beauty_sasrec.py (run
        it first with --workdir=runs/beauty_sasrec): logit = MoNN logit + base logit, the MoNN's
        output layer zeroed at init so training starts at the base (task.py FrozenBase); a
        50-item history, the base's window.
  'accelerator': MoNN Small of HSNN Table 5, 256 x (256 + 1024) candidates, 6,000 steps,
        validation on every user.
"""

from experiments.configs import beauty_two_tower
from hsnn_jax.train import task_monn

PRESETS = ("cpu", "accelerator", "warm")


def get_config(preset: str = "cpu"):
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; known: {PRESETS}")
  if preset == "warm":
    return warm(get_config("cpu"))
  c = beauty_two_tower.get_config()  # data, schedule, early stopping, metrics
  c.model = task_monn.default_model_config(preset="monn_small", history="causal", item_attrs=True)
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 200
  c.eval.user_chunk = 256
  c.eval.item_chunk = 8192
  if preset == "accelerator":
    c.train.num_negatives = 1024
    return c
  c.model.preset = "monn_small_lite"
  c.model.history_len = 20  # Beauty sequences average ~9 items (as beauty_two_tower.py)
  c.train.batch_size = 128
  c.train.num_negatives = 256
  c.train.num_steps = 3000
  c.train.log_every = 100
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.eval.valid_users = 1000
  c.eval.user_chunk = 32  # small chunks: faster full-corpus scoring on CPU (README)
  c.eval.item_chunk = 1024
  return c


BASE_WORKDIR = "runs/beauty_sasrec"  # where the README's base command writes its run


def warm(c):
  """The 'warm' preset over a cpu config (MoNN or HSNN): a residual over the trained base."""
  c.model.base_workdir = BASE_WORKDIR
  c.model.history_len = 50  # the base's SASRec window: it reads the model's history
  return c
