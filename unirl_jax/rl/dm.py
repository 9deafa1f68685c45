"""Flow-GRPO for the unified model's diffusion expert (unirl.md §3.3–3.4): text-to-image rollout with CFG, and
the recomputed policy + KL loss over (sample, denoising step) rows."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from unirl_jax.diffusion.schedule import FlowMatchSchedule
from unirl_jax.diffusion.sde import Rollout, sde_sample, sde_step
from unirl_jax.models.unified import UnifiedModel
from unirl_jax.rl.losses import dm_kl, dm_policy_loss


@dataclasses.dataclass(frozen=True)
class DMConfig:
  steps: int = 10
  shift: float = 3.0
  cfg: float = 3.5
  noise_level: float = 0.7
  sde_steps: Optional[int] = None  # SDE (and trained) on the first K steps, ODE after; None = all
  log_prob_reduce: str = "mean"  # the original's per-element mean, or "sum"
  clip_eps: float = 1e-4
  beta: float = 4e-3
  kl: str = "mean"  # "mean": Gaussian KL of the SDE means; "velocity": MSE of the guided velocities
  detach_uncond: bool = False  # the original keeps gradients through the unconditional branch
  remat_steps: bool = True  # recompute each step's activations in the backward pass

  def schedule(self):
    return FlowMatchSchedule(shift=self.shift).set_timesteps(self.steps)


def guidance_context(model: UnifiedModel, dit_params, cond):
  """The caption K/V of both CFG branches (null rows first, then `cond`): once per rollout, not per step."""
  return model.caption_context(dit_params, jnp.concatenate([model.null_condition(cond), cond]))


def guided_velocity(model: UnifiedModel, dit_params, x, context, t, cfg: float, detach_uncond: bool = False):
  """Two-way CFG in one batched DiT call over `guidance_context`'s rows; text-to-image feeds zero reference
  latents (UniRL's T2I input)."""
  b = x.shape[0]
  v = model.dit.apply({"params": dit_params}, jnp.concatenate([x, x]), None, jnp.concatenate([t, t]),
                      ref_latents=jnp.zeros((2 * b,) + x.shape[1:], x.dtype), context=context)
  v_u, v_c = v[:b], v[b:]
  if detach_uncond:
    v_u = jax.lax.stop_gradient(v_u)
  return v_u + cfg * (v_c - v_u)


def rollout(model: UnifiedModel, params, input_ids, attention_mask, rng, dc: DMConfig,
            latent_hw: tuple[int, int]) -> tuple[Rollout, jax.Array]:
  """SDE sampling (no gradients), one trajectory per prompt row: the trajectory and the images in [-1, 1].

  Rows are the chat-templated prompts already repeated per sample (group-major), as the loss sees them.
  """
  params = jax.lax.stop_gradient(params)
  cond = model.condition(params, input_ids, attention_mask, task="t2i")
  k_x, k_sde = jax.random.split(rng)
  c = model.config.dit.in_channels
  x = jax.random.normal(k_x, (cond.shape[0],) + tuple(latent_hw) + (c,), jnp.float32).astype(cond.dtype)
  sigmas, timesteps = dc.schedule()
  ctx = guidance_context(model, params["dit"], cond)
  vel = lambda x, t: guided_velocity(model, params["dit"], x, ctx, t, dc.cfg)
  roll = sde_sample(vel, x, sigmas, timesteps, k_sde, dc.noise_level, dc.sde_steps, dc.log_prob_reduce)
  return roll, model.decode(params, roll.latents[-1])


def denominator(roll: Rollout, rows: int):
  """The number of trained (sample, step) rows: the loss's denominator, known before any micro-batch runs."""
  return rows * jnp.sum(roll.sde_mask).astype(jnp.float32)


def dm_loss_sum(model: UnifiedModel, params, ref_params, input_ids, attention_mask, roll: Rollout, advantages,
                dc: DMConfig):
  """Σ over the SDE (sample, step) rows of L_pg + β·KL, recomputed on the stored trajectory; divide by
  `denominator` (summed over micro-batches, this is exact).

  `advantages` (rows,) are shared by every step of a trajectory. One on-policy update: ρ ≡ 1 (see
  `dm_policy_loss`); the rollout-vs-recompute log-prob gap is reported as `logp_mismatch` (a max, not a sum).
  """
  sigmas, _ = dc.schedule()
  sigmas = jnp.asarray(sigmas)
  cond = model.condition(params, input_ids, attention_mask, task="t2i")
  cond_ref = model.condition(ref_params, input_ids, attention_mask, task="t2i")
  b = cond.shape[0]
  # The caption K/V once for all steps; their gradient accumulates over the steps that read them.
  ctx = guidance_context(model, params["dit"], cond)
  ctx_ref = jax.lax.stop_gradient(guidance_context(model, ref_params["dit"], cond_ref))

  def step(carry, i):
    x, prev = roll.latents[i], roll.latents[i + 1]
    t = jnp.full((b,), roll.timesteps[i])
    v = guided_velocity(model, params["dit"], x, ctx, t, dc.cfg, dc.detach_uncond)
    v_ref = jax.lax.stop_gradient(guided_velocity(model, ref_params["dit"], x, ctx_ref, t, dc.cfg))
    out = sde_step(x, v, sigmas[i], sigmas[i + 1], sigmas[1], dc.noise_level, prev=prev, reduce=dc.log_prob_reduce)
    mask = jnp.broadcast_to(roll.sde_mask[i], (b,))
    pg, _, st = dm_policy_loss(out.log_prob, None, advantages, dc.clip_eps, mask)
    if dc.kl == "mean":
      ref_mean = sde_step(x, v_ref, sigmas[i], sigmas[i + 1], sigmas[1], dc.noise_level, prev=prev).mean
      kl, _ = dm_kl(out.mean, ref_mean, out.std, mask)
    else:
      kl, _ = dm_kl(v, v_ref, 1.0, mask, kind="velocity")
    gap = jnp.max(jnp.where(mask, jnp.abs(out.log_prob - roll.log_probs[i]), 0.0))
    pg_s, kl_s, clip_s, akl_s, gap_s, rmin, rmax = carry
    return (pg_s + pg, kl_s + kl, clip_s + st["clip_count"], akl_s + st["approx_kl_sum"], jnp.maximum(gap_s, gap),
            jnp.minimum(rmin, st["ratio_min"]), jnp.maximum(rmax, st["ratio_max"])), None

  body = jax.checkpoint(step) if dc.remat_steps else step
  zero = jnp.zeros((), jnp.float32)
  init = (zero,) * 5 + (jnp.float32(jnp.inf), jnp.float32(-jnp.inf))
  (pg, kl, clips, akl, gap, rmin, rmax), _ = jax.lax.scan(body, init, jnp.arange(roll.timesteps.shape[0]))
  return pg + dc.beta * kl, {"policy_loss": pg, "kl": kl, "clip_frac": clips, "approx_kl": akl,
                             "logp_mismatch": gap, "ratio_min": rmin, "ratio_max": rmax}
