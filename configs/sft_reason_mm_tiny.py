"""The multimodal-reasoning cold start: a supervised stage of the tiny LM on worked answers about rendered
shape scenes (`<think>I see a red square on the left.</think><answer>1</answer>`,
unirl_jax.data.synthetic_questions --kind shapes), each record's image through the vision tower, before
configs/reason_mm_tiny.py's GRPO. The LM trains, vision tower included.

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
  c.train.trainable = ("lm",)  # the tiny random vision tower has to learn to see the shapes too
  c.data.max_text_len = 128  # system + image block + question + template + worked answer
  c.data.max_target_len = 40  # the worked answer (up to ~35 tokens for three objects)
  return c
