"""Small shared test fixtures: exact, tie-free dot-product scorers; dotted config overrides."""

import jax.numpy as jnp
import numpy as np

from hsnn_jax.models.scorer import Scorer


def tie_free_vectors(seed, num_users, num_items, dim):
  """Small-integer user and item vectors plus a last item coordinate item_id / 1024 that the user
  weighs by 1: every dot product is exact in float32 (chunked and full scoring agree bit for bit)
  and no two items tie for a user. Returns ([num_users, dim + 1], [num_items, dim + 1]) float32."""
  rng = np.random.default_rng(seed)
  users = np.concatenate([rng.integers(-3, 4, (num_users, dim)), np.ones((num_users, 1))], 1)
  items = np.concatenate([rng.integers(-3, 4, (num_items, dim)),
                          np.arange(num_items)[:, None] / 1024], 1)
  return users.astype(np.float32), items.astype(np.float32)


def dot_scorer(users, items, score=None, wrap_encode_users=None):
  """A Scorer over fixed user/item vectors (user repr = users[ub.user])."""
  encode_users = lambda ub: jnp.asarray(users)[ub.user]
  return Scorer(encode_users=wrap_encode_users(encode_users) if wrap_encode_users else encode_users,
                encode_items=lambda ids: jnp.asarray(items)[ids],
                score=score or (lambda u, v: u @ v.T), flops_per_pair=2 * users.shape[1], name="dot")


def set_fields(cfg, overrides):
  """Sets {'train.num_steps': 10, 'mesh.data': 2, ...} on an ml_collections config; returns it."""
  for dotted, value in overrides.items():
    *sections, field = dotted.split(".")
    node = cfg
    for section in sections:
      node = node[section]
    node[field] = value
  return cfg
