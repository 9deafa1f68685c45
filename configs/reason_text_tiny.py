"""Text reasoning GRPO (task "reason", docs/scenarios.md) on the tiny LM (CPU): arithmetic word problems with
single-digit operands (unirl_jax.data.synthetic_questions), R1 format + accuracy rewards, the LM alone trained.

python -m unirl_jax.data.synthetic_questions --kind arithmetic --out workdir/questions_arithmetic
python -m unirl_jax.train --config configs/sft_reason_text_tiny.py   # the supervised stage: format first
python -m unirl_jax.train --config configs/reason_text_tiny.py

Keys left out take unirl_jax.run_config.GRPORun's defaults.
"""

import ml_collections

from configs import t2i_jpeg_tiny

DATA = "workdir/questions_arithmetic"


def get_config():
  c = t2i_jpeg_tiny.get_config()
  c.task = "reason"
  c.workdir = "workdir/reason_text_tiny"
  c.model.init = "workdir/sft_reason_text_tiny/final"  # a random LM never writes the tags: no reward signal
  c.model.vae_fit_steps = 0  # no images are generated
  c.prompt_file = f"{DATA}/train_questions.jsonl"
  c.prompts_per_step = 4
  c.group_size = 8
  c.max_text_len = 96
  c.reward = "think_format:0.5,accuracy:1"
  c.lm = ml_collections.ConfigDict(dict(max_new_tokens=32, temperature=1.0, top_k=50, top_p=1.0, beta=0.01,
                                        clip_eps=0.2, aggregation="seq_mean_token_mean"))
  c.reason = ml_collections.ConfigDict(dict(vit_size=56))
  c.optim.lr = 3e-4
  c.train.total_steps = 100
  c.train.sample_every = 10
  c.train.trainable = ("lm/language_model",)
  return c
