"""The reflection scenario's cold start (ours, docs/scenarios.md) on CPU: in every batch, half the rows are
flow matching on shape scenes (drawn from GenEval-format prompts and from explicit scene descriptions, the kind
of prompt a revision is) and half LM supervision on judging a scene against its prompt, with a revision after a
"no" (unirl_jax.data.shapes_sft). The DiT, connector, queries and the whole LM (vision tower too) train.

python -m unirl_jax.data.shapes_sft --out workdir/shapes_sft
python -m unirl_jax.train --config configs/pretrain_reflect_tiny.py
"""

from configs import pretrain_geneval_tiny

DATA = "workdir/shapes_sft"


def get_config():
  c = pretrain_geneval_tiny.get_config()
  c.workdir = "workdir/pretrain_reflect_tiny"
  c.data.sources = (f"{DATA}/scenes.jsonl", f"{DATA}/reflect_sft.jsonl")
  c.data.mix = "rows"
  c.data.task_weights = {"t2i": 0.5, "chat": 0.5}
  c.data.batch_size = 16
  c.data.vit_size = 56  # as reflect.vit_size in configs/reflect_tiny.py
  c.data.max_text_len = 128  # the judge prompt with image 1's tokens and the judgement
  c.data.max_target_len = 48  # the judgement and the revision
  c.train.trainable = ("dit", "connector", "t2i_queries", "lm")
  return c
