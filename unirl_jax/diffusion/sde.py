"""Flow-GRPO's SDE step with Gaussian log-probs, and an SDE rollout as one `lax.scan` (unirl.md §3.2–3.3).

σ_sde = a·√(σ / (1 − σ̃)), σ̃ = σ₁ where σ = 1 (the first step); dt = σ' − σ < 0;
μ = x·(1 + σ_sde²·dt/(2σ)) + v·(1 + σ_sde²·(1 − σ)/(2σ))·dt;  x' = μ + s·ε with s = σ_sde·√(−dt);
log p = mean (or sum) over the latent's elements of the Gaussian log-density of x' under N(μ, s²).
Everything here runs in float32 whatever the model dtype, as the reference does.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

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


class Rollout(NamedTuple):
  latents: jax.Array  # (n + 1, B, ...): x at σ_0 .. σ_n, as fed to the model (stored for recomputation)
  log_probs: jax.Array  # (n, B), 0 on ODE steps
  timesteps: jax.Array  # (n,)
  sde_mask: jax.Array  # (n,) bool: which steps are stochastic (and trained)


def sde_sample(velocity: Callable, x, sigmas, timesteps, rng, noise_level: float = 0.7,
               sde_steps: Optional[int] = None, reduce: str = "mean", store_dtype=None) -> Rollout:
  """Samples with the SDE on the first `sde_steps` steps (all by default) and Euler ODE after.

  velocity(x, t) -> v is the (CFG-guided) model. The σ index is shared by both kinds of step, so an ODE
  tail reads the right σ's. `store_dtype` (e.g. bf16) is what the next model call sees, as in the original.
  """
  sigmas = jnp.asarray(sigmas, jnp.float32)
  timesteps = jnp.asarray(timesteps, jnp.float32)
  n = timesteps.shape[0]
  k = n if sde_steps is None else sde_steps
  store_dtype = store_dtype or x.dtype
  b = x.shape[0]
  sigma_1 = sigmas[1] if n > 1 else sigmas[0]

  def step(carry, i):
    x, rng = carry
    rng, key = jax.random.split(rng)
    v = velocity(x, jnp.full((b,), timesteps[i]))
    noise = jax.random.normal(key, x.shape, jnp.float32)
    sde = sde_step(x, v, sigmas[i], sigmas[i + 1], sigma_1, noise_level, noise=noise, reduce=reduce)
    ode = x.astype(jnp.float32) + (sigmas[i + 1] - sigmas[i]) * v.astype(jnp.float32)
    stochastic = i < k
    nxt = jnp.where(stochastic, sde.prev, ode).astype(store_dtype)
    return (nxt, rng), (nxt, jnp.where(stochastic, sde.log_prob, 0.0))

  (_, _), (xs, lps) = jax.lax.scan(step, (x.astype(store_dtype), rng), jnp.arange(n))
  latents = jnp.concatenate([x.astype(store_dtype)[None], xs])
  return Rollout(latents, lps, timesteps, jnp.arange(n) < k)
