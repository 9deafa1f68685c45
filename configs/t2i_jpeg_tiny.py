"""Text-to-image GRPO with the JPEG-compressibility reward on a tiny unified model (CPU).

python -m unirl_jax.train --config configs/t2i_jpeg_tiny.py [--config.reward=jpeg_incompressibility]
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "grpo"
  c.task = "t2i"  # or "t2icot" (configs/t2icot_tiny.py)
  c.seed = 0
  c.workdir = "workdir/t2i_jpeg_tiny"
  c.progress = True

  c.model = ml_collections.ConfigDict()
  c.model.init = "preset:tiny_qwen_vocab"
  c.model.dtype = "float32"
  c.model.remat = "none"
  c.model.frozen_dtype = None  # e.g. "bfloat16": frozen weights and the reference copy in bf16
  c.model.vae_fit_steps = 300  # fit the random tiny DC-AE to shapes first (unirl_jax.vae_fit), ~40 s

  c.prompt_file = ""  # .txt (one per line) or .jsonl ("prompt"); empty: `prompts`
  c.prompts = []  # empty: built-in shape prompts
  c.prompts_per_step = 1
  c.group_size = 8
  c.max_text_len = 48
  c.image_size = 32
  c.reward = "jpeg_compressibility"
  c.adv_std, c.adv_eps, c.adv_clip = "unbiased", 1e-4, 5.0

  c.dm = ml_collections.ConfigDict(dict(steps=6, shift=3.0, cfg=3.5, noise_level=0.7, sde_steps=None,
                                        log_prob_reduce="mean", clip_eps=1e-4, beta=4e-3, kl="mean",
                                        detach_uncond=False, remat_steps=True))

  c.total_steps = 600
  c.optim = ml_collections.ConfigDict(dict(lr=3e-3, min_lr=0.0, warmup_steps=0, schedule="linear", b1=0.9,
                                           b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0))
  c.optim.total_steps = c.get_ref("total_steps")

  c.train = ml_collections.ConfigDict()
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  c.train.sample_every = 10
  c.train.micro_batch = 0  # trajectories per backward pass; 0 = the whole step at once (same gradient)
  c.train.tensorboard = True
  c.train.trainable = ("dit", "connector", "t2i_queries")

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  return c
