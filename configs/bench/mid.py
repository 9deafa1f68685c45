"""The accelerator comparison size (the GPU check's torch-step ratio): unified.mid at random init, 128 px,
1 prompt x G=8, 10 SDE steps with CFG, float32 on both sides.

python -m unirl_jax.bench --config configs/bench/mid.py --compare torch-step   # on a GPU: torch on CUDA too
"""

from configs.bench import tiny


def get_config():
  c = tiny.get_config()
  c.model.init = "preset:mid"
  c.group_size = 8
  c.image_size = 128
  c.dm.steps = 10
  c.bench.new_tokens = 64
  c.bench.compare_lm_batch = 8
  return c
