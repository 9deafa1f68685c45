"""Group-relative advantages (docs/algorithms.md §2.3): per prompt group, (r − mean) / (std + eps), clipped."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AdvantageConfig:
  std: str = "unbiased"  # "unbiased" (N−1, the original's torch default) or "population"
  eps: float = 1e-4  # added to the std
  clip: float = 5.0  # advantages clipped to ±clip

  def __post_init__(self):
    if self.std not in ("unbiased", "population"):
      raise ValueError(f"advantage.std {self.std!r} not 'unbiased' or 'population'")


def group_advantages(rewards, group_size: int, std: str = "unbiased", eps: float = 1e-4, clip: float = 5.0):
  """rewards (N,) in group-major order (N = groups × group_size) -> advantages (N,).

  std: "unbiased" (N−1, the original's torch default) or "population". A group whose rewards are all
  equal gets advantage 0 (never NaN), as does a group of one.
  """
  r = jnp.asarray(rewards, jnp.float32)
  if r.shape[0] % group_size:
    raise ValueError(f"{r.shape[0]} rewards do not split into groups of {group_size}")
  if std not in ("unbiased", "population"):
    raise ValueError(f"std {std!r} not 'unbiased' or 'population'")
  g = r.reshape(-1, group_size)
  mean = g.mean(axis=1, keepdims=True)
  ddof = 1 if std == "unbiased" else 0
  if group_size - ddof <= 0:
    return jnp.zeros_like(r)
  sd = jnp.sqrt(jnp.sum((g - mean) ** 2, axis=1, keepdims=True) / (group_size - ddof))
  adv = jnp.where(sd > 0, (g - mean) / (sd + eps), 0.0)
  return jnp.clip(adv, -clip, clip).reshape(-1)
