"""Optimizers from config: AdamW with linear warmup + cosine decay to a floor, global-norm clipping."""

from __future__ import annotations

import optax


def schedule(lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0, kind: str = "cosine"):
  if kind == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup_steps, 1)), optax.constant_schedule(lr)],
                                [max(warmup_steps, 1)]) if warmup_steps else optax.constant_schedule(lr)
  if kind == "linear":  # UniRL RL: linear decay to 0, no warmup
    return optax.linear_schedule(lr, min_lr, max(total_steps, 1))
  if kind != "cosine":
    raise ValueError(f"lr schedule {kind!r} not one of cosine, linear, constant")
  return optax.warmup_cosine_decay_schedule(0.0 if warmup_steps else lr, lr, warmup_steps,
                                            max(total_steps, warmup_steps + 1),
                                            end_value=min_lr)


def adamw(cfg) -> optax.GradientTransformation:
  """cfg: lr, min_lr, warmup_steps, total_steps, schedule, b1, b2, eps, weight_decay, grad_clip (0 = off)."""
  sched = schedule(cfg.lr, cfg.total_steps, cfg.warmup_steps, cfg.min_lr, cfg.schedule)
  tx = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip else tx
