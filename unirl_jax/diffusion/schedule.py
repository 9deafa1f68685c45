"""Flow-matching sigma/timestep schedule, mirroring diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps`.

Not the textbook formula: the endpoints come from the *shifted* 1000-step training table (so σ_min is
shift(0.001)), a linspace between them is shifted again, and a terminal 0 is appended — the reference does
exactly this, and UniRL's σ table (docs/algorithms.md §1) follows from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class FlowMatchSchedule:
  """The subset of `FlowMatchEulerDiscreteScheduler`'s config that shapes the sigmas."""

  num_train_timesteps: int = 1000
  shift: float = 1.0
  use_dynamic_shifting: bool = False
  base_shift: float = 0.5
  max_shift: float = 1.15
  base_image_seq_len: int = 256
  max_image_seq_len: int = 4096
  shift_terminal: Optional[float] = None
  time_shift_type: str = "exponential"

  def __post_init__(self):
    if self.time_shift_type not in ("exponential", "linear"):
      raise ValueError(f"time_shift_type {self.time_shift_type!r} not 'exponential' or 'linear'")

  @classmethod
  def from_diffusers(cls, src: Any) -> "FlowMatchSchedule":
    """A scheduler_config.json path, its directory, a pipeline directory (uses scheduler/), or a dict."""
    if isinstance(src, (str, os.PathLike)):
      path = str(src)
      if os.path.isdir(os.path.join(path, "scheduler")):
        path = os.path.join(path, "scheduler")
      if os.path.isdir(path):
        path = os.path.join(path, "scheduler_config.json")
      with open(path) as f:
        src = json.load(f)
    d = dict(src)
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "invert_sigmas",
                 "stochastic_sampling"):
      if d.get(flag):
        raise ValueError(f"scheduler option {flag}=True is not supported")
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d and d[f.name] is not None})

  def _shift(self, sigmas, mu: Optional[float]):
    if self.use_dynamic_shifting:
      if mu is None:
        raise ValueError("this schedule uses dynamic shifting: pass `mu` (see `dynamic_shift_mu`)")
      if self.time_shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
      return mu / (mu + (1 / sigmas - 1))
    return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

  def train_sigmas(self) -> np.ndarray:
    """The 1000-step training table (float32), shifted unless shifting is dynamic."""
    n = self.num_train_timesteps
    s = (np.linspace(1, n, n, dtype=np.float32)[::-1] / np.float32(n)).astype(np.float32)
    if not self.use_dynamic_shifting:
      s = (np.float32(self.shift) * s / (np.float32(1) + np.float32(self.shift - 1) * s)).astype(np.float32)
    return s

  def set_timesteps(self, num_inference_steps: int, mu: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """-> sigmas (n + 1,) ending in 0 and timesteps (n,) = 1000·σ, both float32."""
    if num_inference_steps < 1:
      raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    table = self.train_sigmas()
    n = self.num_train_timesteps
    t = np.linspace(float(table[0]) * n, float(table[-1]) * n, num_inference_steps)
    sigmas = self._shift(t / n, mu)
    if self.shift_terminal:
      one_minus = 1 - sigmas
      sigmas = 1 - one_minus / (one_minus[-1] / (1 - self.shift_terminal))
    sigmas = sigmas.astype(np.float32)
    timesteps = (sigmas * np.float32(n)).astype(np.float32)
    return np.concatenate([sigmas, np.zeros(1, np.float32)]), timesteps


def dynamic_shift_mu(image_seq_len: int, s: FlowMatchSchedule) -> float:
  """Mirrors diffusers pipelines' `calculate_shift`: mu grows linearly with the number of latent tokens."""
  m = (s.max_shift - s.base_shift) / (s.max_image_seq_len - s.base_image_seq_len)
  return image_seq_len * m + (s.base_shift - m * s.base_image_seq_len)
