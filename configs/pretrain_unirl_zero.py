"""UniRL-Zero base-model pretraining at the real size (the original's scripts/train/pretrain/train.sh), for accelerators.

Start from a unified checkpoint assembled from the converted experts:
  python -m convert unirl --lm ckpt/qwen2_5_vl_3b --dit ckpt/sana --vae ckpt/dc_ae --vocab-size 151668 --dst ckpt/base
  python -m unirl_jax.train --config configs/pretrain_unirl_zero.py --config.data.sources='("t2i.jsonl",)'
"""

from configs import pretrain_tiny


def get_config():
  c = pretrain_tiny.get_config()
  c.workdir = "workdir/pretrain_unirl_zero"
  c.model.init = "ckpt/base"
  c.model.dtype = "bfloat16"  # bf16 compute, fp32 master weights
  c.model.remat = "full"
  c.data.image_size = 1024
  c.data.vit_size = 672  # 576 LM tokens
  c.data.max_text_len = 768  # 1024 - 256 queries
  c.data.batch_size = 128  # 16 per GPU x 8 in the original
  c.optim.lr = 1e-4
  c.optim.min_lr = 1e-5
  c.optim.warmup_steps = 500  # 0.3 % of the run
  c.train.total_steps = 150_000
  c.train.log_every = 50
  c.train.checkpoint_every = 2000
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
