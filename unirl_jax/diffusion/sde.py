"""Flow-GRPO's SDE step with Gaussian log-probs, and an SDE rollout as one `lax.scan` (docs/algorithms.md §2.1).

σ_sde = a·√(σ / (1 − σ̃)), σ̃ = σ₁ where σ = 1 (the first step; `Schedule.sigma_1`); dt = σ' − σ < 0;
μ = x·(1 + σ_sde²·dt/(2σ)) + v·(1 + σ_sde²·(1 − σ)/(2σ))·dt;  x' = μ + s·ε with s = σ_sde·√(−dt);
log p = mean (or sum) over the latent's elements of the Gaussian log-density of x' under N(μ, s²).
Everything here runs in float32 whatever the model dtype, as the reference does.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


class StepOut(NamedTuple):
  prev: jax.Array  # x' (B, ...)
  mean: jax.Array  # μ (B, ...)
  std: jax.Array  # s, a scalar per step
  log_prob: jax.Array  # (B,)


def sde_std(sigma, sigma_next, sigma_1, noise_level):
  """(σ_sde, s): the SDE's diffusion scale at σ and the transition std over [σ, σ']."""
  sigma = jnp.asarray(sigma, jnp.float32)
  denom = 1 - jnp.where(sigma == 1, jnp.asarray(sigma_1, jnp.float32), sigma)
  sigma_sde = noise_level * jnp.sqrt(sigma / denom)
  return sigma_sde, sigma_sde * jnp.sqrt(-(jnp.asarray(sigma_next, jnp.float32) - sigma))


def sde_step(x, v, sigma, sigma_next, sigma_1, noise_level: float, *, noise=None, prev=None,
             reduce: str = "mean") -> StepOut:
  """One step from x at σ to σ'. Give `noise` to sample x', or `prev` to score a stored x' (recomputation).

  The log-prob's gradient flows through μ (i.e. the velocity), never through the scored sample.
  """
  x, v = x.astype(jnp.float32), v.astype(jnp.float32)
  sigma = jnp.asarray(sigma, jnp.float32)
  dt = jnp.asarray(sigma_next, jnp.float32) - sigma
  sigma_sde, std = sde_std(sigma, sigma_next, sigma_1, noise_level)
  mean = x * (1 + sigma_sde**2 / (2 * sigma) * dt) + v * (1 + sigma_sde**2 * (1 - sigma) / (2 * sigma)) * dt
  if prev is None:
    if noise is None:
      raise ValueError("sde_step needs `noise` (to sample) or `prev` (to score)")
    prev = mean + std * noise.astype(jnp.float32)
  prev = jax.lax.stop_gradient(prev.astype(jnp.float32))
  return StepOut(prev, mean, std, gaussian_log_prob(prev, mean, std, reduce))


def gaussian_log_prob(x, mean, std, reduce: str = "mean"):
  """log N(x; mean, std²) reduced over all but the batch axis: "mean" (the original) or "sum"."""
  lp = -((x - mean) ** 2) / (2 * std**2) - jnp.log(std) - LOG_SQRT_2PI
  axes = tuple(range(1, lp.ndim))
  if reduce == "mean":
    return lp.mean(axis=axes)
  if reduce == "sum":
    return lp.sum(axis=axes)
  raise ValueError(f"log-prob reduce {reduce!r} not 'mean' or 'sum'")


@struct.dataclass
class Schedule:
  """The denoising steps a rollout took, stored with it so the loss reads the same σ's (shared by all rows)."""

  sigmas: jax.Array  # (n + 1,) float32, ending in 0
  timesteps: jax.Array  # (n,) float32, 1000·σ
  sde_mask: jax.Array  # (n,) bool: which steps are stochastic (and trained); an ODE tail after them

  @classmethod
  def make(cls, sigmas, timesteps, sde_steps: Optional[int] = None) -> "Schedule":
    sigmas = jnp.asarray(sigmas, jnp.float32)
    timesteps = jnp.asarray(timesteps, jnp.float32)
    n = timesteps.shape[0]
    if sigmas.shape[0] != n + 1:
      raise ValueError(f"sigmas ({sigmas.shape[0]}) must have one more entry than timesteps ({n})")
    k = n if sde_steps is None else sde_steps
    return cls(sigmas, timesteps, jnp.arange(n) < k)

  @property
  def sigma_1(self) -> jax.Array:
    """σ̃ of the first step's σ_sde (where σ = 1 would divide by zero): σ₁, as the original; with one step σ₁ = 0,
    so σ_sde = a there."""
    return self.sigmas[1]

  @property
  def steps(self) -> int:
    return self.timesteps.shape[0]


@struct.dataclass
class Trajectory:
  """One SDE rollout per row, rows first (so a step's trajectories split into micro-batches along axis 0)."""

  latents: jax.Array  # (B, n + 1, ...): x at σ_0 .. σ_n, as fed to the model (stored for recomputation)
  log_probs: jax.Array  # (B, n), 0 on ODE steps


def sde_sample(velocity: Callable, x, schedule: Schedule, rng, noise_level: float = 0.7, reduce: str = "mean",
               store_dtype=None) -> Trajectory:
  """Samples with the SDE on the schedule's stochastic steps and Euler ODE after (`euler_step`).

  velocity(x, t) -> v is the (CFG-guided) model. The σ index is shared by both kinds of step, so an ODE
  tail reads the right σ's. `store_dtype` (e.g. bf16) is what the next model call sees, as in the original.
  """
  from unirl_jax.diffusion.sampler import euler_step
  sigmas, timesteps = schedule.sigmas, schedule.timesteps
  n = schedule.steps
  store_dtype = store_dtype or x.dtype
  b = x.shape[0]

  def step(carry, i):
    x, rng = carry
    rng, key = jax.random.split(rng)
    v = velocity(x, jnp.full((b,), timesteps[i]))
    noise = jax.random.normal(key, x.shape, jnp.float32)
    sde = sde_step(x, v, sigmas[i], sigmas[i + 1], schedule.sigma_1, noise_level, noise=noise, reduce=reduce)
    ode = euler_step(x, v, sigmas[i], sigmas[i + 1])
    stochastic = schedule.sde_mask[i]
    nxt = jnp.where(stochastic, sde.prev, ode).astype(store_dtype)
    return (nxt, rng), (nxt, jnp.where(stochastic, sde.log_prob, 0.0))

  (_, _), (xs, lps) = jax.lax.scan(step, (x.astype(store_dtype), rng), jnp.arange(n))
  latents = jnp.concatenate([x.astype(store_dtype)[None], xs])
  return Trajectory(jnp.moveaxis(latents, 0, 1), jnp.moveaxis(lps, 0, 1))
