"""UniRL-Zero text-to-image GRPO with the GenEval reward at the real size (the original's
train_blip3o_t2i.sh): the JPEG run's settings with GenEval's train_metadata.jsonl prompts.

The "gen_eval" reward is an object-detector scorer that the original runs as a separate service; it is not
part of this package yet, so register one under that name (unirl_jax.rewards.register) before running.
"""

from configs import t2i_jpeg_unirl_zero


def get_config():
  c = t2i_jpeg_unirl_zero.get_config()
  c.workdir = "workdir/t2i_unirl_zero"
  c.prompt_file = "train_metadata.jsonl"
  c.reward = "gen_eval"
  return c
