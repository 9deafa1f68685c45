"""The CoT format reward (UniRL's CoT trainer): 1 if the completion starts with `<answer>…</answer>` on its first line."""

from __future__ import annotations

import re

import numpy as np

from unirl_jax.rewards import RewardInputs, register

_ANSWER = re.compile(r"<answer>.*?</answer>")  # re.match, no DOTALL: the answer must open the first line


@register("format")
def format_reward(inputs: RewardInputs) -> np.ndarray:
  completions = inputs.need("completions", "format")
  return np.asarray([1.0 if _ANSWER.match(c.strip()) else 0.0 for c in completions], np.float32)

