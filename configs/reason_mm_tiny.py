"""Multimodal reasoning GRPO (task "reason" with image questions, docs/scenarios.md) on the tiny LM (CPU):
counting, colour and position questions about rendered shape scenes (unirl_jax.data.synthetic_questions), seen
through the vision tower at reason.vit_size², R1 format + accuracy rewards, the LM alone trained.

python -m unirl_jax.data.synthetic_questions --kind shapes --out workdir/questions_shapes
python -m unirl_jax.train --config configs/reason_mm_tiny.py

Keys left out take unirl_jax.run_config.GRPORun's defaults.
"""

from configs import reason_text_tiny

DATA = "workdir/questions_shapes"


def get_config():
  c = reason_text_tiny.get_config()
  c.workdir = "workdir/reason_mm_tiny"
  c.prompt_file = f"{DATA}/train_questions.jsonl"
  # The supervised stage for image questions (data.sources = DATA/sft.jsonl, trainable "lm") has no config yet.
  c.model.init = "preset:tiny_qwen_vocab"
  c.max_text_len = 128  # the question + 4 image tokens at 56²
  c.reason.vit_size = 56
  return c
