"""The editing scenario's second cold-start stage: configs/pretrain_edit_tiny.py's checkpoint trained 3000 more steps
on edit batches only, so the DiT learns to read the instruction (docs/results.md: after the mixed stage, dropping
the text barely changes the flow loss on edits). The third stage is
configs/pretrain_edit_lm_tiny.py.

python -m unirl_jax.train --config configs/pretrain_edit_only_tiny.py
"""

from configs import pretrain_edit_tiny


def get_config():
  c = pretrain_edit_tiny.get_config()
  c.workdir = "workdir/pretrain_edit_only_tiny"
  c.model.init = "workdir/pretrain_edit_tiny/final"
  c.data.task_weights = {"edit": 1.0}
  c.train.total_steps = 3000
  return c
