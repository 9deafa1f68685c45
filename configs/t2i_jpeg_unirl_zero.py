"""The JPEG sanity experiment at UniRL-Zero's real size (the original's scripts/train/rl/train_blip3o_t2i_jepg.sh).

8 prompts x G=8 images = 64 trajectories per optimiser step, 10 SDE steps at 1024 px, CFG 3.5, lr 1e-5 linear
to 0 over the original's horizon (10 epochs over the prompts: train.epochs, so train.total_steps is derived from
the prompt count), beta 4e-3, clip 1e-4, prompts of up to 8192 tokens padded to the step's longest (the original's
max_prompt_length). Start from the pretrained unified checkpoint (see configs/pretrain_unirl_zero.py):
  python -m unirl_jax.train --config configs/t2i_jpeg_unirl_zero.py --config.model.init=ckpt/base \
      --config.prompt_file=pickscore.txt
`--config.model.init=preset:unirl_zero_3b_1600m` runs it on random weights (e.g. to size memory).
"""

from configs import t2i_jpeg_tiny


def get_config():
  c = t2i_jpeg_tiny.get_config()
  c.workdir = "workdir/t2i_jpeg_unirl_zero"
  c.model.init = "ckpt/base"
  c.model.dtype = "bfloat16"  # bf16 compute, fp32 master weights
  c.model.remat = "full"
  c.model.frozen_dtype = "bfloat16"  # frozen LM/ViT/VAE and the reference copy stored in bf16, as the original
  c.model.vae_fit_steps = 0
  c.prompt_file = "pickscore.txt"
  c.prompts_per_step = 8  # 8 GPUs x 1 prompt
  c.group_size = 8
  c.max_text_len = 8192  # the original's max_prompt_length
  c.text_pad = "longest"  # as the original (padding="longest"), rounded up to text_pad_multiple tokens
  c.text_pad_multiple = 64
  c.image_size = 1024
  c.dm.steps = 10
  c.dm.cfg = 3.5
  c.dm.beta = 4e-3
  c.dm.clip_eps = 1e-4
  c.optim.lr = 1e-5
  c.train.total_steps = 0  # derived: epochs x prompts / prompts per step (the lr decays over it)
  c.train.epochs = 10
  c.train.micro_batch = 8  # trajectories per backward pass (64 per step); lower it if memory is short
  c.train.checkpoint_every = 50
  c.train.keep_checkpoints = 3
  c.train.sample_every = 25
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
