"""Initialising, describing and loading Qwen2.5-VL params (plain pytrees + their logical axis names)."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax.numpy as jnp

from unirl_jax.models import param_utils
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


init_params, abstract_params, logical_axes = param_utils.param_fns(_boxed_init)
num_params = param_utils.num_params


def load(path: str, dtype: Optional[str] = None, mesh=None, rules=None, **overrides) -> tuple[Qwen2_5_VL, Any]:
  """Loads a converted checkpoint dir (config.json + params/) -> (model, params).

  dtype sets the compute dtype (params keep their stored dtype); with a mesh the params are restored
  straight into their logical shardings.
  """
  cfg = Qwen2_5_VLConfig.from_hf(os.path.join(path, "config.json"), **overrides)
  cfg = cfg.replace(param_dtype=param_utils.read_meta(path).get("param_dtype", "float32"),
                    **({"dtype": dtype} if dtype else {}))
  return Qwen2_5_VL(cfg), param_utils.restore(path, cfg, abstract_params, logical_axes, "qwen2_5_vl", mesh, rules)
