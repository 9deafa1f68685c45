"""Reward functions, registered by name: fn(images uint8 (N, H, W, 3), prompts: list[str]) -> float32 (N,)."""

from __future__ import annotations

from typing import Callable

import numpy as np

RewardFn = Callable[[np.ndarray, list], np.ndarray]
REGISTRY: dict[str, RewardFn] = {}


def register(name: str):
  def deco(fn: RewardFn) -> RewardFn:
    if name in REGISTRY:
      raise ValueError(f"reward {name!r} registered twice")
    REGISTRY[name] = fn
    return fn
  return deco


def get(name: str) -> RewardFn:
  from unirl_jax.rewards import jpeg  # noqa: F401  (registers)
  if name not in REGISTRY:
    raise KeyError(f"unknown reward {name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[name]
