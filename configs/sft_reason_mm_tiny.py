"""The multimodal-reasoning cold start: a supervised stage of the tiny LM on worked answers about rendered
shape scenes (`<think>I see a red square on the left.</think><answer>1</answer>`,
unirl_jax.data.synthetic_questions --kind shapes), each record's image through the vision tower, before
configs/reason_mm_tiny.py's GRPO. The vision tower is fitted first (unirl_jax.vit_fit), then the LM decoder trains.

python -m unirl_jax.data.synthetic_questions --kind shapes --out workdir/questions_shapes
python -m unirl_jax.train --config configs/sft_reason_mm_tiny.py
"""

from configs import sft_reason_text_tiny

DATA = "workdir/questions_shapes"


def get_config():
  c = sft_reason_text_tiny.get_config()
  c.workdir = "workdir/sft_reason_mm_tiny"
  c.data.sources = (f"{DATA}/sft.jsonl",)
  c.data.vit_size = 84  # as reason.vit_size in the GRPO config: 9 image tokens, one per cell of the 3 x 3 scene grid
  # The random vision tower, trained through the tiny LM alone, learns colours but hardly shapes, and the LM reads
  # neither: fit it first to point each cell's token at the words naming what is there (unirl_jax.vit_fit), the
  # stand-in for the real model's pretrained, aligned ViT; then frozen (trained on with the LM, it drifts off
  # the words while the LM is still learning to copy them), as LLaVA's second stage keeps its encoder.
  c.model.vit_fit_steps = 300
  c.model.vit_fit_size = 84
  c.train.trainable = ("lm/language_model",)
  c.train.total_steps = 800  # the LM learns to copy the colours first, then the shapes and columns
  c.data.max_text_len = 128  # system + image block + question + template + worked answer
  c.data.max_target_len = 40  # the worked answer (up to ~35 tokens for three objects)
  return c
