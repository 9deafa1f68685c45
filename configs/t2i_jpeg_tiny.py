"""Text-to-image GRPO with the JPEG-compressibility reward on a tiny unified model (CPU); the default run.

python -m unirl_jax.train --config configs/t2i_jpeg_tiny.py [--config.reward=jpeg_incompressibility]

Every key is a field of unirl_jax.run_config.GRPORun (documented there); keys left out take its defaults.
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
  c.model.scan_unroll = 1
  c.model.frozen_dtype = ml_collections.FieldReference(None, field_type=str)  # "bfloat16": frozen + reference
  c.model.vae_fit_steps = 300  # fit the random tiny DC-AE to shapes first (unirl_jax.vae_fit), ~40 s

  c.prompt_file = ""  # .txt (one per line) or .jsonl ("prompt"); empty: `prompts`
  c.prompts = ()  # empty: built-in shape prompts
  c.prompts_per_step = 1
  c.group_size = 8
  c.max_text_len = 48
  c.text_pad = "max_len"
  c.image_size = 32
  c.reward = "jpeg_compressibility"
  c.advantage = ml_collections.ConfigDict(dict(std="unbiased", eps=1e-4, clip=5.0))

  c.dm = ml_collections.ConfigDict(dict(steps=6, shift=3.0, cfg=3.5, noise_level=0.7,
                                        sde_steps=ml_collections.FieldReference(None, field_type=int),
                                        log_prob_reduce="mean", clip_eps=1e-4, beta=4e-3, kl="mean",
                                        detach_uncond=False, remat_steps=True, unroll_steps=1))

  c.optim = ml_collections.ConfigDict(dict(lr=3e-3, min_lr=0.0, warmup_steps=0, schedule="linear", b1=0.9,
                                           b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0))

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 600
  c.train.checkpoint_every = 20
  c.train.keep_checkpoints = 2
  c.train.sample_every = 10
  c.train.micro_batch = 0  # trajectories per backward pass; 0 = the whole step at once (same gradient)
  c.train.tensorboard = True
  c.train.trainable = ("dit", "connector", "t2i_queries")

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  return c
