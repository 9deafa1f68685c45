"""The editing scenario's cold start in one stage from a random `preset:shapes` model (DC-AE fitted to the
scenes first), on shape edits in both directions mixed with each image's caption, with the connector at a
tenth of the learning rate.

Why not configs/pretrain_edit_tiny.py's chain: at lr 1e-3 the connector collapses to a nearly constant
output within the first few hundred steps (the DiT is still fresh and its gradients are noise), the DiT then
learns to ignore its caption, and no later stage recovers: the chain's DiT changes its velocity by < 1 % when
given another record's instruction. With the connector at 1e-4 the instruction reaches the DiT
(docs/results.md, editing, session 12).

python -m unirl_jax.train --config configs/pretrain_edit_scratch_tiny.py
"""

from configs import pretrain_geneval_tiny


def get_config():
  c = pretrain_geneval_tiny.get_config()  # its model: preset:shapes, DC-AE fitted to the scenes first
  c.workdir = "workdir/pretrain_edit_scratch_tiny"
  c.data.synthetic = "shape_edits"
  c.data.synthetic_n = 8192  # 1024: its held-out colour edits showed the target colour in 12.5 %, 8192: 28.8 %
  c.data.task_weights = {"edit": 0.8, "t2i": 0.2}
  c.optim.group_lr = {"connector": 1e-4}
  c.loss.logit_normal_std = 1.0  # the original's; std 2 (the GenEval cold start's) read the instruction less here
  c.train.total_steps = 5000
  c.train.log_every = 500
  c.train.trainable = ("dit", "connector", "i2i_queries", "t2i_queries")
  return c
