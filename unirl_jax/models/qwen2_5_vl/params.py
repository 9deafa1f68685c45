"""Initialising, describing and loading Qwen2.5-VL params (plain pytrees + their logical axis names)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from unirl_jax.models.qwen2_5_vl.model import Qwen2_5_VL


def _init_inputs(cfg: Qwen2_5_VLConfig):
  m = cfg.vision.spatial_merge_size
  grid = ((1, m, m),)
  ids = jnp.array([[cfg.bos_token_id, cfg.image_token_id]], jnp.int32)
  pixels = jnp.zeros((m * m, cfg.vision.patch_dim), jnp.float32)
  return ids, pixels, grid


def _boxed_init(cfg: Qwen2_5_VLConfig, rng):
  ids, pixels, grid = _init_inputs(cfg)
  return Qwen2_5_VL(cfg).init(rng, ids, pixel_values=pixels, image_grid_thw=grid)["params"]


def init_params(cfg: Qwen2_5_VLConfig, rng: Optional[jax.Array] = None) -> dict:
  """Random params (plain arrays, no partitioning boxes)."""
  rng = jax.random.PRNGKey(0) if rng is None else rng
  return nn.unbox(jax.jit(_boxed_init, static_argnums=0)(cfg, rng))


def abstract_params(cfg: Qwen2_5_VLConfig) -> dict:
  """ShapeDtypeStructs of every param, without allocating."""
  return nn.unbox(jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.PRNGKey(0)))


def logical_axes(cfg: Qwen2_5_VLConfig) -> dict:
  """A PartitionSpec of logical axis names per param (e.g. ('layers', 'embed', 'heads'))."""
  return nn.get_partition_spec(jax.eval_shape(functools.partial(_boxed_init, cfg), jax.random.PRNGKey(0)))


def load(path: str, dtype: Optional[str] = None, mesh=None, rules=None, **overrides) -> tuple[Qwen2_5_VL, Any]:
  """Loads a converted checkpoint dir (config.json + params/) -> (model, params).

  dtype sets the compute dtype (params keep their stored dtype); with a mesh the params are restored
  straight into their logical shardings.
  """
  from unirl_jax import checkpoint, sharding
  cfg = Qwen2_5_VLConfig.from_hf(os.path.join(path, "config.json"), **overrides)
  params_dir = os.path.join(path, "params")
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{path} has no params/ directory (write one with `python -m convert qwen2_5_vl`)")
  stored = _stored_dtype(path)
  if dtype is not None:
    cfg = cfg.replace(dtype=dtype)
  cfg = cfg.replace(param_dtype=stored)
  target = abstract_params(cfg)
  shardings = None
  if mesh is not None:
    shardings = sharding.param_shardings(logical_axes(cfg), mesh, rules, shapes=target)
  return Qwen2_5_VL(cfg), checkpoint.restore_params(params_dir, target, shardings)


def _stored_dtype(path: str) -> str:
  meta = os.path.join(path, "unirl_jax.json")
  if os.path.exists(meta):
    with open(meta) as f:
      return json.load(f).get("param_dtype", "float32")
  return "float32"


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
