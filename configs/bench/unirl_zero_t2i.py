"""The real sizes at random init (no weights): Qwen2.5-VL-3B + connector + SANA-1.6B + DC-AE f32c32, 1024 px,
G=8, 10 SDE steps, CFG 3.5, bf16 compute over fp32 master weights, full remat, micro-batches of 2 trajectories
— sized for one 80 GB GPU.

python -m unirl_jax.bench --config configs/bench/unirl_zero_t2i.py --json bench.json
python -m unirl_jax.bench --config configs/bench/unirl_zero_t2i.py --compile_only   # any host, no weights
"""

from configs import t2i_jpeg_unirl_zero
from configs.bench import tiny


def get_config():
  c = t2i_jpeg_unirl_zero.get_config()
  c.model.init = "preset:unirl_zero_3b_1600m"
  c.prompts_per_step = 1  # one GPU: 1 prompt x G=8 images
  c.prompt_file = ""
  c.max_text_len = 128
  c.text_pad = "max_len"
  c.progress = False
  c.train.micro_batch = 2
  c.train.checkpoint_every = 10 ** 9
  c.train.sample_every = 0
  c.train.tensorboard = False
  c.mesh.data, c.mesh.fsdp = 1, -1
  c.bench = tiny.get_config().bench
  c.bench.new_tokens = 512  # CoT's max_new_tokens: the LM decode of gpu_check
  c.bench.kv_cache_dtype = "bfloat16"
  c.bench.compare_lm_batch = 8
  return c
