"""The editing scenario's third cold-start stage: configs/pretrain_edit_only_tiny.py's checkpoint trained 3000 more
edit-only steps with the LM decoder trainable too, so the instruction reaches the DiT through features that
separate edits. The cold start of docs/results.md's session-11 GRPO runs (--config.model.init);
configs/i2i_tiny.py itself starts from configs/pretrain_edit_tiny.py.

python -m unirl_jax.train --config configs/pretrain_edit_lm_tiny.py
"""

from configs import pretrain_edit_only_tiny


def get_config():
  c = pretrain_edit_only_tiny.get_config()
  c.workdir = "workdir/pretrain_edit_lm_tiny"
  c.model.init = "workdir/pretrain_edit_only_tiny/final"
  c.train.trainable = ("dit", "connector", "i2i_queries", "lm/language_model")
  return c
