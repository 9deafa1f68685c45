"""Optimizers from config: AdamW with linear warmup + cosine (or linear) decay to a floor, optional
global-norm clipping, and per-group learning rates over the top-level param groups (optax.multi_transform)."""

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
                                            max(total_steps, warmup_steps + 1), end_value=min_lr)


def _adamw(cfg, lr: float, total_steps: int) -> optax.GradientTransformation:
  min_lr = cfg.min_lr * lr / cfg.lr if cfg.lr else 0.0  # the floor scales with the group's peak
  sched = schedule(lr, total_steps, cfg.warmup_steps, min_lr, cfg.schedule)
  return optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)


def adamw(cfg, total_steps: int, groups=None) -> optax.GradientTransformation:
  """cfg (run_config.OptimSettings): lr, min_lr, warmup_steps, schedule, b1, b2, eps, weight_decay, grad_clip
  (0 = off) and group_lr {top-level param group: peak lr} (e.g. UniRL CoT: {"lm": 5e-7} with lr 3e-6); the
  schedule spans `total_steps`. `groups` are the top-level keys of the params being optimised."""
  group_lr = dict(cfg.group_lr)
  if group_lr:
    if groups is None:
      raise ValueError("optim.group_lr needs the param groups")
    unknown = set(group_lr) - set(groups)
    if unknown:
      raise ValueError(f"optim.group_lr names groups {sorted(unknown)} that are not trained ({sorted(groups)})")
    txs = {g: _adamw(cfg, group_lr.get(g, cfg.lr), total_steps) for g in groups}
    tx = optax.multi_transform(txs, lambda params: {g: g for g in params})
  else:
    tx = _adamw(cfg, cfg.lr, total_steps)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx) if cfg.grad_clip else tx
