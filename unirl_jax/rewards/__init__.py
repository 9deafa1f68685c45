"""Reward functions, registered by name: fn(images uint8 (N, H, W, 3), prompts: list[str], completions:
list[str] | None) -> float32 (N,). A config names one or several (comma-separated); the total is their
unweighted sum, as in the original."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

RewardFn = Callable[[np.ndarray, list, Optional[list]], np.ndarray]
REGISTRY: dict[str, RewardFn] = {}


def register(name: str):
  def deco(fn: RewardFn) -> RewardFn:
    if name in REGISTRY:
      raise ValueError(f"reward {name!r} registered twice")
    REGISTRY[name] = fn
    return fn
  return deco


def get(name: str) -> RewardFn:
  from unirl_jax.rewards import format as _format, jpeg  # noqa: F401  (register)
  if name not in REGISTRY:
    raise KeyError(f"unknown reward {name!r}; known: {sorted(REGISTRY)}")
  return REGISTRY[name]


def names(spec) -> list[str]:
  """"a,b" or ("a", "b") -> ["a", "b"], each checked against the registry."""
  out = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
  if not out or not all(out):
    raise ValueError(f"reward spec {spec!r} names no reward")
  for n in out:
    get(n)
  return out


def score(spec, images, prompts, completions=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """-> (total (N,), {name: (N,)}): the sum of the named rewards, and each one."""
  parts = {n: np.asarray(get(n)(images, prompts, completions), np.float32) for n in names(spec)}
  for n, r in parts.items():
    if r.shape != (len(images),):
      raise ValueError(f"reward {n!r} returned shape {r.shape}, expected ({len(images)},)")
  return sum(parts.values()), parts
