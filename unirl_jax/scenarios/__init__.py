"""The UniRL-Zero scenarios as GRPO tasks: each says where its prompts come from, what it rolls out, what its
rewards receive and which loss parts it trains with the shared advantage (`base.Task`)."""

from __future__ import annotations

from unirl_jax.scenarios.base import RewardInputs, Rollout, Task


def registry() -> dict[str, type[Task]]:
  from unirl_jax.scenarios import i2i, reason, reflect, t2i, t2icot
  return {t.name: t for t in (t2i.TextToImage, t2icot.CoTTextToImage, i2i.Editing, reason.Reasoning,
                              reflect.Reflection)}


def get(name: str) -> type[Task]:
  tasks = registry()
  if name not in tasks:
    raise ValueError(f"task {name!r} not one of {sorted(tasks)}")
  return tasks[name]


def make(name: str, engine) -> Task:
  return get(name)(engine)


__all__ = ["RewardInputs", "Rollout", "Task", "get", "make", "registry"]
