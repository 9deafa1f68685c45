"""UniRL-Zero instructional editing with cycle consistency at the real size (the original's
train_blip3o_i2i.sh, `../shared/reference/unirl.md` §3.6, §7.1): 8 sources x G=8 edits (+8 reconstructions),
10 SDE steps at 1024 px with the source at 672² for the LM (576 tokens), rollout CFG text 3.0 / reference 1.0,
beta 3e-4, lr 1e-5 linear to 0 over 200 epochs, R = 4 x CLIP direction + 1 x CLIP image similarity (OpenAI
CLIP ViT-L/14, converted with `python -m convert clip`). Set dm.loss_cfg=3.5 and edit.literal_vision_end=True to
reproduce the original bit for bit (its loss guides at 3.5, and its prompt spells `<vision_end>` as text).

python -m unirl_jax.train --config configs/i2i_unirl_zero.py --config.model.init=ckpt/base \
    --config.prompt_file=i2i_dataset.parquet
"""

import ml_collections

from configs import i2i_tiny, t2i_jpeg_unirl_zero


def get_config():
  c = t2i_jpeg_unirl_zero.get_config()
  t = i2i_tiny.get_config()
  c.task = "i2i"
  c.workdir = "workdir/i2i_unirl_zero"
  c.prompt_file = "i2i_dataset.parquet"
  c.edit = t.edit
  c.edit.vit_size = 672
  c.edit.kinds = ()
  c.max_text_len = 8192
  c.reward = "clip_direction:4,clip_image_similarity:1"
  c.clip_rewards = {"clip_direction": "ckpt/clip-vit-large-patch14", "clip_image_similarity": "ckpt/clip-vit-large-patch14"}
  c.dm.cfg = 3.0
  c.dm.ref_cfg = 1.0
  c.dm.loss_cfg = ml_collections.FieldReference(None, field_type=float)
  c.dm.beta = 3e-4
  c.train.epochs = 200
  c.train.checkpoint_every = 500
  c.train.trainable = ("dit", "connector", "i2i_queries")
  return c
