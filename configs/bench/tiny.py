"""Bench of the tiny unified model on CPU (seconds): python -m unirl_jax.bench --config configs/bench/tiny.py"""

import ml_collections

from configs import t2i_jpeg_tiny


def get_config():
  c = t2i_jpeg_tiny.get_config()
  c.model.vae_fit_steps = 0
  c.progress = False
  c.group_size = 4
  c.dm.steps = 3
  c.train.checkpoint_every = 10 ** 9
  c.train.sample_every = 0
  c.train.tensorboard = False
  c.mesh.data = 1
  c.bench = ml_collections.ConfigDict(dict(repeats=3, new_tokens=8, kv_cache_dtype=None, compare_lm_batch=2))
  return c
