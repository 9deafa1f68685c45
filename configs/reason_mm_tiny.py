"""Multimodal reasoning GRPO (task "reason" with image questions, docs/scenarios.md) on the tiny LM (CPU):
counting, colour and position questions about rendered shape scenes (unirl_jax.data.synthetic_questions), seen
through the vision tower at reason.vit_size², R1 format + accuracy rewards, the LM alone trained.

python -m unirl_jax.data.synthetic_questions --kind shapes --out workdir/questions_shapes
python -m unirl_jax.train --config configs/sft_reason_mm_tiny.py   # the supervised stage
python -m unirl_jax.train --config configs/reason_mm_tiny.py

Keys left out take unirl_jax.run_config.GRPORun's defaults.
"""

from configs import reason_text_tiny

DATA = "workdir/questions_shapes"


def get_config():
  c = reason_text_tiny.get_config()
  c.workdir = "workdir/reason_mm_tiny"
  c.prompt_file = f"{DATA}/train_questions.jsonl"
  c.model.init = "workdir/sft_reason_mm_tiny/final"  # configs/sft_reason_mm_tiny.py
  c.max_text_len = 128  # the question + 9 image tokens at 84²
  c.reason.vit_size = 84
  c.lm.max_new_tokens = 48  # the scene description of up to three objects
  c.train.trainable = ("lm/language_model",)  # the decoder; the vision tower stays as the cold start fitted it
  c.optim.lr = 5e-4  # 3e-4 moved it less in 100 steps, 1e-3 not at all (docs/results.md)
  c.train.total_steps = 150
  return c
