"""Qwen2.5-VL in JAX/Flax: `model, params = qwen2_5_vl.load(DIR)`."""

from unirl_jax.models.qwen2_5_vl.config import (Qwen2_5_VLConfig, TextConfig, VisionConfig, qwen2_5_vl_3b,
                                                qwen2_5_vl_7b, tiny)
from unirl_jax.models.qwen2_5_vl.model import Qwen2_5_VL, grid_tuple
from unirl_jax.models.qwen2_5_vl.params import abstract_params, init_params, load, logical_axes, num_params
from unirl_jax.models.qwen2_5_vl.rope import get_rope_index
from unirl_jax.models.qwen2_5_vl.text import init_cache
