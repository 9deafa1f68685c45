"""Multimodal reasoning GRPO at the real size (task "reason" with image questions, docs/scenarios.md): the text
run's settings (configs/reason_text_unirl_zero.py, ours) on open-r1-multimodal's data
(lmms-lab/multimodal-open-r1-8k-verified exported as parquet: problem, solution, image bytes), images at 448²
(256 image tokens), 512 new tokens as the original's LM sampler.
"""

from configs import reason_text_unirl_zero


def get_config():
  c = reason_text_unirl_zero.get_config()
  c.workdir = "workdir/reason_mm_unirl_zero"
  c.prompt_file = "multimodal-open-r1-8k-verified.parquet"
  c.lm.max_new_tokens = 512
  c.reason.vit_size = 448
  return c
