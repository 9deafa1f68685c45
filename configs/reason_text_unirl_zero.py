"""Text reasoning GRPO at the real size (task "reason", docs/scenarios.md). The paper gives no settings and the
original released no trainer for it, so these are ours: the token GRPO of the original's CoT trainer (G=8,
temperature 1, top-k 50, k3 KL 0.01, sequence mean of token means; `../shared/reference/unirl.md` §4) with the
open-r1 rewards and template (§5.7), 1024 new tokens (open-r1's completion budget), LM lr 1e-6 (open-r1's
recipes), linear decay, 8 questions per step. `prompt_file`: GSM8K / MATH style question records
(unirl_jax.data.questions), e.g. an export of openai/gsm8k's train split as JSONL.
"""

from configs import reason_text_tiny, t2i_jpeg_unirl_zero


def get_config():
  c = t2i_jpeg_unirl_zero.get_config()
  tiny = reason_text_tiny.get_config()
  c.task = "reason"
  c.workdir = "workdir/reason_text_unirl_zero"
  c.model.init = "ckpt/unirl_zero"  # a unified checkpoint (python -m convert unirl ...), or the base model's
  c.prompt_file = "gsm8k_train.jsonl"
  c.reward = "think_format:1,accuracy:1"
  c.lm = tiny.lm
  c.lm.max_new_tokens = 1024
  c.reason = tiny.reason
  c.reason.vit_size = 448
  c.max_text_len = 1024
  c.text_pad = "longest"
  c.optim.lr = 1e-6
  c.train.trainable = ("lm/language_model",)
  c.train.micro_batch = 8  # trajectories per backward pass: 64 x 1.5k tokens do not fit at once
  return c
