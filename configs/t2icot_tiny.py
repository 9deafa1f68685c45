"""CoT-enhanced text-to-image GRPO (UniRL's t2icot) on the tiny unified model: the LM rewrites each caption
(G completions), each whole dialogue conditions one image, and the LM token loss and the Flow-GRPO loss share
each trajectory's advantage (reward = image reward + format reward). CPU-sized.

python -m unirl_jax.train --config configs/t2icot_tiny.py
"""

import ml_collections

from configs import t2i_jpeg_tiny


def get_config():
  c = t2i_jpeg_tiny.get_config()
  c.task = "t2icot"
  c.workdir = "workdir/t2icot_tiny"
  c.reward = "jpeg_compressibility,format"
  c.max_text_len = 96  # the CoT instruction is longer than the t2i one
  c.lm = ml_collections.ConfigDict(dict(max_new_tokens=24, temperature=1.0, top_k=50, top_p=1.0, beta=0.01,
                                        clip_eps=0.2, aggregation="seq_mean_token_mean", max_cond_len=128,
                                        cond_padding="right"))
  c.train.trainable = ("lm/language_model", "dit", "connector", "t2i_queries")
  # The original's two groups: DiT + connector + queries at lr, the LLM at lr / 6 (3e-6 vs 5e-7).
  c.optim.group_lr = {"lm": c.optim.lr / 6}
  c.train.total_steps = 200
  return c
