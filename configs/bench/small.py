"""The CPU comparison size: python -m unirl_jax.bench --config configs/bench/small.py --compare torch

A 4-layer width-256 LM over Qwen's vocabulary, a width-256 4-layer SANA on 16x16 latents (64 px through the
tiny DC-AE), G=8, 4 SDE steps, 16 new tokens;
layers and the loss's denoising steps unrolled (model.scan_unroll, dm.unroll_steps; no remat), as suits XLA:CPU
at this depth.
"""

from configs.bench import tiny


def get_config():
  c = tiny.get_config()
  c.model.init = "preset:small"
  c.model.scan_unroll = 4  # every stack unrolled: XLA:CPU stacks a scan's per-layer residuals slowly
  c.dm.unroll_steps = 4  # the loss's denoising steps too, and kept without remat: the same work as torch's step
  c.dm.remat_steps = False
  c.group_size = 8
  c.image_size = 64
  c.dm.steps = 4
  c.bench.new_tokens = 16
  c.bench.compare_lm_batch = 4
  return c
