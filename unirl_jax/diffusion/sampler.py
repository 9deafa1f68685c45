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


def guided_velocity(apply: Callable[..., jax.Array], cond: jax.Array, null: jax.Array, guidance: Guidance,
                    ref_latents: Optional[jax.Array] = None, encoder_attention_mask: Optional[jax.Array] = None,
                    **extra) -> Velocity:
  """Batches the CFG branches into one model call.

  apply(x, encoder_hidden_states, timestep, encoder_attention_mask=..., ref_latents=..., **extra) -> v, e.g.
  `functools.partial(sana_model.apply, {"params": params})`. `null` is the unconditional caption input
  (UniRL: zeros). Two-way keeps the reference latents in both branches (UniRL's training-time CFG);
  three-way drops them in the fully unconditional branch.
  """
  k = guidance.branches
  ctx = {1: [cond], 2: [null, cond], 3: [null, null, cond]}[k]
  ctx = jnp.concatenate(ctx)
  mask = None if encoder_attention_mask is None else jnp.concatenate([encoder_attention_mask] * k)
  if ref_latents is None:
    if k == 3:
      raise ValueError("three-way guidance needs ref_latents")
    ref = None
  else:
    refs = [ref_latents] * k if k < 3 else [jnp.zeros_like(ref_latents), ref_latents, ref_latents]
    ref = jnp.concatenate(refs)

  def velocity(x, t):
    b = x.shape[0]
    kw = dict(extra)
    if mask is not None:
      kw["encoder_attention_mask"] = mask
    if ref is not None:
      kw["ref_latents"] = ref
    v = apply(jnp.concatenate([x] * k), ctx, jnp.tile(t, k), **kw)
    return guidance.combine(v.reshape((k, b) + v.shape[1:]))

  return velocity


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
    x = (x.astype(jnp.float32) + (sigmas[i + 1] - sigmas[i]) * v.astype(jnp.float32)).astype(v.dtype)
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

