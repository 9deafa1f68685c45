"""The reflection scenario's cold start (ours, docs/scenarios.md) on CPU, from the GenEval cold start (whose DiT
already draws shape scenes): in every batch, half the rows are flow matching on shape scenes (drawn from
GenEval-format prompts and from explicit scene descriptions, the kind of prompt a revision is) and half LM
supervision on judging a scene against its prompt, with a revision after a "no" (unirl_jax.data.shapes_sft).
The vision tower is fitted to the scenes first (unirl_jax.vit_fit); then the DiT, connector, queries and the LM
decoder train, the LM at its own lr.

python -m unirl_jax.train --config configs/pretrain_geneval_tiny.py     # the GenEval cold start, once
python -m unirl_jax.data.shapes_sft --out workdir/shapes_sft
python -m unirl_jax.train --config configs/pretrain_reflect_tiny.py
"""

from configs import pretrain_geneval_tiny

DATA = "workdir/shapes_sft"


def get_config():
  c = pretrain_geneval_tiny.get_config()
  c.workdir = "workdir/pretrain_reflect_tiny"
  c.model.init = "workdir/pretrain_geneval_tiny/final"
  c.model.vae_fit_steps = 0  # fitted in the GenEval cold start
  c.data.sources = (f"{DATA}/scenes.jsonl", f"{DATA}/reflect_sft.jsonl")
  c.data.mix = "rows"
  c.data.task_weights = {"t2i": 0.5, "chat": 0.5}
  c.data.batch_size = 16
  c.data.vit_size = 84  # as reflect.vit_size in configs/reflect_tiny.py: 9 tokens, one per cell of the scene grid
  c.data.max_text_len = 224  # the judge prompt with image 1's tokens and the judgement (up to ~200)
  c.data.max_target_len = 96  # the judgement and the revision (up to 88 tokens)
  c.optim.lr = 3e-4
  c.optim.min_lr = 3e-5
  c.optim.group_lr = {"lm": 3e-3}  # the LM learns the judging format from scratch; the DiT only keeps drawing
  c.train.total_steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  # The judge has to see image 1: the GenEval cold start's random vision tower is fitted first to point each
  # cell's token at the LM's words for its colour and shape (unirl_jax.vit_fit; that LM never read an image),
  # then frozen while the LM decoder learns to judge.
  c.model.vit_fit_steps = 300
  c.model.vit_fit_data = "geneval_scenes"
  c.model.vit_fit_size = 84
  c.train.trainable = ("dit", "connector", "t2i_queries", "lm/language_model")
  return c
