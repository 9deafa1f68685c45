"""Instructional editing with cycle-consistency GRPO (UniRL's i2i) on the shapes edits (CPU): the edit cold start
of configs/pretrain_edit_tiny.py, its shape-edit records, and the shapes CLIP as the edit and cycle rewards.

python -m unirl_jax.train --config configs/pretrain_geneval_tiny.py    # the base cold start, once
python -m unirl_jax.train --config configs/pretrain_edit_tiny.py       # + editing, once
python -m unirl_jax.clip_fit --out workdir/shapes_clip                  # the reward model, once
python -m unirl_jax.train --config configs/i2i_tiny.py
python -m unirl_jax.eval --benchmark edit --ckpt workdir/i2i_tiny --data workdir/pretrain_edit_tiny/synthetic_data/eval_edits.jsonl --clip workdir/shapes_clip --out /tmp/ev

Keys left out take unirl_jax.run_config.GRPORun's defaults.
"""

import ml_collections

from configs import t2i_jpeg_tiny

COLD_START = "workdir/pretrain_edit_tiny"
CLIP = "workdir/shapes_clip"


def get_config():
  c = t2i_jpeg_tiny.get_config()
  c.task = "i2i"
  c.workdir = "workdir/i2i_tiny"
  c.model.init = f"{COLD_START}/final"
  c.model.vae_fit_steps = 0
  c.prompt_file = f"{COLD_START}/synthetic_data/train_edits.jsonl"
  c.prompts_per_step = 4
  c.group_size = 8
  c.max_text_len = 64
  c.edit = ml_collections.ConfigDict(dict(vit_size=56, cycle=True, literal_vision_end=False))
  # The original's R = 4 x CLIP direction (edit) + 1 x CLIP image similarity of reconstruction and source (cycle).
  c.reward = "clip_direction:4,clip_image_similarity:1"
  c.clip_rewards = {"clip_direction": CLIP, "clip_image_similarity": CLIP}
  c.dm.steps = 8
  c.dm.cfg = 3.0  # the original's editing rollout: text 3.0, reference 1.0
  c.dm.ref_cfg = 1.0
  # The loss's text guidance: None = the rollout's (rho = 1 on the first update); 3.5 = the original's mismatch.
  c.dm.loss_cfg = ml_collections.FieldReference(None, field_type=float)
  c.dm.beta = 3e-4
  c.optim.lr = 3e-4  # 1e-3 and 5e-4 drove the KL above 1 within 20 steps and the rewards down (docs/results.md)
  c.train.total_steps = 45
  c.train.sample_every = 15
  c.train.trainable = ("dit", "connector", "i2i_queries")
  return c
