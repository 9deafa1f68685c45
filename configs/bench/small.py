"""The CPU comparison size: python -m unirl_jax.bench --config configs/bench/small.py --compare torch

A 4-layer width-256 LM over Qwen's vocabulary, a width-256 4-layer SANA on 16x16 latents (64 px through the
tiny DC-AE), G=8, 4 SDE steps, 16 new tokens.
"""

from configs.bench import tiny


def get_config():
  c = tiny.get_config()
  c.model.init = "preset:small"
  c.group_size = 8
  c.image_size = 64
  c.dm.steps = 4
  c.bench.new_tokens = 16
  c.bench.compare_lm_batch = 4
  return c
