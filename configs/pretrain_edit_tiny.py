"""The editing scenario's cold start: the GenEval cold start (configs/pretrain_geneval_tiny.py) trained further on
shape edits in both directions, mixed with each image's caption (unirl_jax.data.shape_edits), on CPU. It also
writes the RL edit records configs/i2i_tiny.py reads (synthetic_data/train_edits.jsonl, eval_edits.jsonl).

python -m unirl_jax.train --config configs/pretrain_geneval_tiny.py   # once
python -m unirl_jax.train --config configs/pretrain_edit_tiny.py
"""

from configs import pretrain_geneval_tiny


def get_config():
  c = pretrain_geneval_tiny.get_config()
  c.workdir = "workdir/pretrain_edit_tiny"
  c.model.init = "workdir/pretrain_geneval_tiny/final"
  c.model.vae_fit_steps = 0  # the GenEval cold start's DC-AE already decodes shape scenes
  c.data.synthetic = "shape_edits"
  c.data.synthetic_n = 1024
  # the reference branch starts at zero and is what editing needs: most batches edit
  c.data.task_weights = {"edit": 0.8, "t2i": 0.2}
  c.loss.logit_normal_std = 1.0  # the original's, as measured in docs/results.md's editing section
  c.train.total_steps = 5000
  c.train.log_every = 500
  c.train.trainable = ("dit", "connector", "i2i_queries")
  return c
