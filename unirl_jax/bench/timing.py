"""Timing spans: compile separately, warm-up excluded, `block_until_ready` around every timed call."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax


def summarize(times: list[float]) -> dict:
  """Seconds -> {"median_s", "min_s", "max_s", "spread" (max-min over median), "repeats"}."""
  med = statistics.median(times)
  return {"median_s": med, "min_s": min(times), "max_s": max(times),
          "spread": (max(times) - min(times)) / med if med else 0.0, "repeats": len(times)}


def time_fn(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict:
  """Times fn() (already compiled, or host code) `repeats` times after `warmup` untimed calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return summarize(times)


def compile_fn(jitted, *args, **kwargs) -> tuple[Any, float]:
  """-> (the compiled executable, seconds spent lowering + compiling)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  return compiled, time.perf_counter() - t0
