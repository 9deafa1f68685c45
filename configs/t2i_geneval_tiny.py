"""Text-to-image GRPO with the GenEval reward on the shapes domain (CPU): the tiny cold start of
configs/pretrain_geneval_tiny.py, trained on its GenEval-format training prompts with the offline shapes detector.

python -m unirl_jax.train --config configs/pretrain_geneval_tiny.py      # the cold start, once
python -m unirl_jax.train --config configs/t2i_geneval_tiny.py
python -m unirl_jax.eval --ckpt workdir/t2i_geneval_tiny --prompts workdir/pretrain_geneval_tiny/synthetic_data/eval_prompts.jsonl --out /tmp/ev
(`python -m unirl_jax.demo` runs the three.) Keys left out take unirl_jax.run_config.GRPORun's defaults.
"""

import ml_collections

from configs import t2i_jpeg_tiny

COLD_START = "workdir/pretrain_geneval_tiny"


def get_config():
  c = t2i_jpeg_tiny.get_config()
  c.workdir = "workdir/t2i_geneval_tiny"
  c.model.init = f"{COLD_START}/final"
  c.model.vae_fit_steps = 0  # the cold start's DC-AE is already fitted to the scenes
  c.prompt_file = f"{COLD_START}/synthetic_data/train_prompts.jsonl"  # GenEval metadata per record
  c.prompts_per_step = 4
  c.group_size = 8
  # GenEval's partial credit (the original's training reward); the strict 0/1 correctness is logged beside it.
  c.reward = "geneval_shapes,geneval_shapes_correct:0"
  c.dm.steps = 8
  c.dm.sde_steps = None  # all 8 steps SDE and trained, as the original (the first 3 alone did not learn)
  c.optim.lr = 1e-3
  c.train.total_steps = 60
  c.train.sample_every = 20
  return c
