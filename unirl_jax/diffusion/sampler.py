"""Euler ODE sampling over a flow-matching schedule, with two- and three-way classifier-free guidance.

Mirrors a `FlowMatchEulerDiscreteScheduler.step` loop: x <- x + (σ_{i+1} − σ_i) · v(x, 1000·σ_i), in float32.
The loop is one `lax.scan` (or a Python loop with `use_scan=False`, for debugging).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Velocity = Callable[[jax.Array, jax.Array], jax.Array]  # (x (B, ...), t (B,)) -> v (B, ...)


@dataclasses.dataclass(frozen=True)
class Guidance:
  """scale: text guidance; ref_scale: set for UniRL's three-way editing CFG.

  two-way:   v = v_∅ + scale·(v_c − v_∅)                              branches [∅, c]
  three-way: v = v_∅ + ref_scale·(v_ref − v_∅) + scale·(v_full − v_ref)  branches [∅, ref only, full]
  scale == 1 without ref_scale is plain conditional sampling (one branch).
  """

  scale: float = 1.0
  ref_scale: Optional[float] = None

  @property
  def branches(self) -> int:
    if self.ref_scale is not None:
      return 3
    return 1 if self.scale == 1.0 else 2

  def combine(self, v: jax.Array) -> jax.Array:
    """v: (branches, B, ...) in the order above -> guided (B, ...)."""
    if self.branches == 1:
      return v[0]
    if self.branches == 2:
      return v[0] + self.scale * (v[1] - v[0])
    return v[0] + self.ref_scale * (v[1] - v[0]) + self.scale * (v[2] - v[1])

  def conditions(self, cond: jax.Array, null: jax.Array) -> jax.Array:
    """The caption rows of every branch, stacked in branch order: [c], [∅, c] or [∅, ∅, c]."""
    return jnp.concatenate({1: [cond], 2: [null, cond], 3: [null, null, cond]}[self.branches])


def guided_velocity(apply: Callable[..., jax.Array], guidance: Guidance, ref_latents: Optional[jax.Array] = None,
                    detach_uncond: bool = False) -> Velocity:
  """All CFG branches in one batched model call -> the guided velocity (x, t) -> v.

  apply(x, t, ref_latents) -> v runs the model on the stacked branches (B·k rows), its captions already bound
  (e.g. a caption context computed once per rollout from `guidance.conditions(cond, null)`). Two-way keeps the
  reference latents in both branches (UniRL's training-time CFG); three-way drops them in the unconditional
  branch; `ref_latents=None` passes None on (UniRL's text-to-image feeds zeros there). detach_uncond stops the
  gradient through every branch but the fully conditional one (Flow-GRPO's choice; the original keeps it).
  """
  k = guidance.branches
  if ref_latents is None and k == 3:
    raise ValueError("three-way guidance needs ref_latents")

  def velocity(x, t):
    b = x.shape[0]
    ref = None
    if ref_latents is not None:
      refs = [ref_latents] * k if k < 3 else [jnp.zeros_like(ref_latents), ref_latents, ref_latents]
      ref = jnp.concatenate(refs)
    v = apply(jnp.concatenate([x] * k), jnp.tile(t, k), ref)
    v = v.reshape((k, b) + v.shape[1:])
    if detach_uncond and k > 1:
      v = jnp.concatenate([jax.lax.stop_gradient(v[:-1]), v[-1:]])
    return guidance.combine(v)

  return velocity


def euler_step(x: jax.Array, v: jax.Array, sigma, sigma_next) -> jax.Array:
  """One flow-matching Euler step x + (σ' − σ)·v in float32 (the ODE sampler's, and the SDE sampler's ODE tail)."""
  return x.astype(jnp.float32) + (sigma_next - sigma) * v.astype(jnp.float32)


def euler_sample(velocity: Velocity, x: jax.Array, sigmas: Any, timesteps: Any, *, use_scan: bool = True,
                 return_trajectory: bool = False):
  """Integrates from x at σ_0 to σ_n = 0. Returns final latents, or (final, trajectory (n+1, B, ...))."""
  sigmas = jnp.asarray(sigmas, jnp.float32)
  timesteps = jnp.asarray(timesteps, jnp.float32)
  n = timesteps.shape[0]
  if sigmas.shape[0] != n + 1:
    raise ValueError(f"sigmas ({sigmas.shape[0]}) must have one more entry than timesteps ({n})")
  b = x.shape[0]
  dtype = x.dtype

  def step(x, i):
    v = velocity(x, jnp.full((b,), timesteps[i]))
    x = euler_step(x, v, sigmas[i], sigmas[i + 1]).astype(v.dtype)
    return x.astype(dtype), x.astype(dtype)

  if use_scan:
    final, traj = jax.lax.scan(step, x, jnp.arange(n))
  else:
    outs, cur = [], x
    for i in range(n):
      cur, _ = step(cur, i)
      outs.append(cur)
    final, traj = cur, jnp.stack(outs)
  if return_trajectory:
    return final, jnp.concatenate([x[None], traj])
  return final


def initial_noise(rng: jax.Array, shape: tuple, dtype=jnp.float32) -> jax.Array:
  return jax.random.normal(rng, shape, dtype)

