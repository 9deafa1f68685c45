"""The text-reasoning cold start: a supervised stage of the tiny LM on worked arithmetic solutions
(`<think>a + b = c</think><answer>c</answer>`, unirl_jax.data.synthetic_questions), before
configs/reason_text_tiny.py's GRPO. The pretraining trainer with chat records: only the LM decoder trains.

python -m unirl_jax.data.synthetic_questions --kind arithmetic --out workdir/questions_arithmetic
python -m unirl_jax.train --config configs/sft_reason_text_tiny.py
"""

from configs import pretrain_tiny

DATA = "workdir/questions_arithmetic"


def get_config():
  c = pretrain_tiny.get_config()
  c.workdir = "workdir/sft_reason_text_tiny"
  c.model.init = "preset:tiny_qwen_vocab"
  c.data.sources = (f"{DATA}/sft.jsonl",)
  c.data.max_text_len = 96  # system + question + template + worked solution (~85 tokens)
  c.data.max_target_len = 24  # the worked solution (~20 tokens): only the last 24 positions' logits
  c.data.batch_size = 16
  c.optim.lr = 3e-3
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 20
  # 450 steps leave held-out greedy accuracy near 0.6 (sampled 0.46): room for GRPO to show. Longer fits the
  # operands (target loss 0.001 by step 1000): docs/results.md.
  c.train.total_steps = 450
  c.train.log_every = 50
  c.train.checkpoint_every = 200
  c.train.trainable = ("lm/language_model",)
  return c
