"""Flow-GRPO for the unified model's diffusion expert (docs/algorithms.md §2): the SDE rollout with CFG, and the
recomputed policy + KL loss over (sample, denoising step) rows as a loss part of a task."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.diffusion.sampler import Guidance
from unirl_jax.diffusion.schedule import FlowMatchSchedule
from unirl_jax.diffusion.sde import Schedule, Trajectory, sde_sample, sde_step
from unirl_jax.models.unified import UnifiedModel
from unirl_jax.rl.batch import Condition, DMRows, Experience
from unirl_jax.rl.losses import dm_kl, dm_policy_loss


@dataclasses.dataclass(frozen=True)
class DMConfig:
  steps: int = 10  # denoising steps per rollout
  shift: float = 3.0  # flow-matching schedule shift
  cfg: float = 3.5  # text guidance scale, rollout and loss
  # Editing: the reference guidance scale of the rollout's and loss's three-way CFG (the original's 1.0);
  # None = two-way text CFG (text-to-image).
  ref_cfg: Optional[float] = None
  # The loss's text guidance when it differs from the rollout's; ratios are then taken against the rollout's
  # log-probs (the original's editing: rollout 3.0, loss 3.5, so ρ ≠ 1 from the first update). None = `cfg`,
  # the same policy in both, ρ ≡ 1.
  loss_cfg: Optional[float] = None
  noise_level: float = 0.7  # the SDE's a in σ_sde = a·√(σ / (1 − σ))
  sde_steps: Optional[int] = None  # SDE (and trained) on the first K steps, ODE after; None = all
  log_prob_reduce: str = "mean"  # the original's per-element mean, or "sum"
  clip_eps: float = 1e-4  # PPO clip range
  beta: float = 4e-3  # KL coefficient
  kl: str = "mean"  # "mean": Gaussian KL of the SDE means; "velocity": MSE of the guided velocities
  detach_uncond: bool = False  # the original keeps gradients through the unconditional branch
  remat_steps: bool = True  # recompute each step's activations in the backward pass
  # Denoising steps per iteration of the loss's scan (>= steps: unrolled). XLA:CPU handles a scan's stacked
  # residuals slowly: on CPU, unrolled without remat is ~20 % faster (BENCHMARKS.md); compiles grow with it.
  unroll_steps: int = 1

  def __post_init__(self):
    if self.steps < 1:
      raise ValueError(f"dm.steps must be >= 1, got {self.steps}")
    if self.sde_steps is not None and not 1 <= self.sde_steps <= self.steps:
      raise ValueError(f"dm.sde_steps {self.sde_steps} not in [1, dm.steps={self.steps}] (None: all)")
    if self.kl not in ("mean", "velocity"):
      raise ValueError(f"dm.kl {self.kl!r} not 'mean' or 'velocity'")
    if self.unroll_steps < 1:
      raise ValueError(f"dm.unroll_steps must be >= 1, got {self.unroll_steps}")
    if self.log_prob_reduce not in ("mean", "sum"):
      raise ValueError(f"dm.log_prob_reduce {self.log_prob_reduce!r} not 'mean' or 'sum'")

  def schedule(self) -> Schedule:
    sigmas, timesteps = FlowMatchSchedule(shift=self.shift).set_timesteps(self.steps)
    return Schedule.make(sigmas, timesteps, self.sde_steps)

  @property
  def guidance(self) -> Guidance:
    """The rollout's CFG."""
    return Guidance(self.cfg, self.ref_cfg)

  @property
  def loss_guidance(self) -> Guidance:
    return Guidance(self.cfg if self.loss_cfg is None else self.loss_cfg, self.ref_cfg)

  @property
  def mismatched(self) -> bool:
    """The loss recomputes another policy than the rollout sampled (`loss_cfg`)."""
    return self.loss_cfg is not None and self.loss_cfg != self.cfg


def condition(model: UnifiedModel, params, cd: Condition, task: str = "t2i", grid=None):
  """The DM caption input of `cd`'s rows; an edit's rows carry their source's ViT patches, all of one image
  size (`grid`: that image's (t, h, w) ViT grid, static), so any split of the rows keeps its grid."""
  pv, grids = None, None
  if cd.pixel_values is not None:
    if grid is None:
      raise ValueError("edit rows carry ViT patches: give their image grid (t, h, w)")
    pv = cd.pixel_values.reshape(-1, cd.pixel_values.shape[-1])
    grids = np.tile(np.asarray(grid, np.int64).reshape(1, 3), (cd.ids.shape[0], 1))
  return model.condition(params, cd.ids, cd.mask, pv, grids, task=task, query_shift=cd.query_shift)


def rollout(model: UnifiedModel, params, cd: Condition, rng, dc: DMConfig, schedule: Schedule,
            latent_hw: tuple[int, int], ref=None, task: str = "t2i", grid=None) -> tuple[Trajectory, jax.Array]:
  """SDE sampling (no gradients), one trajectory per condition row: the trajectory and the images in [-1, 1].
  Rows are the prompts already repeated per sample (group-major), as the loss sees them. An edit gives its
  rows' noisy reference latents `ref` (three-way CFG when dc.ref_cfg is set), task "i2i" and the rows' ViT
  `grid` (t, h, w)."""
  params = jax.lax.stop_gradient(params)
  cond = condition(model, params, cd, task, grid)
  k_x, k_sde = jax.random.split(rng)
  c = model.config.dit.in_channels
  x = jax.random.normal(k_x, (cond.shape[0],) + tuple(latent_hw) + (c,), jnp.float32).astype(cond.dtype)
  ctx = model.guidance_context(params["dit"], cond, dc.guidance)
  vel = model.guided_velocity(params["dit"], ctx, dc.guidance, ref_latents=ref)
  traj = sde_sample(vel, x, schedule, k_sde, dc.noise_level, dc.log_prob_reduce)
  return traj, model.decode(params, traj.latents[:, -1])


@dataclasses.dataclass(frozen=True)
class DMLoss:
  """L_pg + β·KL of the DM trajectories in `Experience.<field>`, averaged over the trained (sample, step) rows.

  The per-row sum is divided by the whole step's `denominator`, so summing over micro-batches is exact. One
  on-policy update: ρ ≡ 1 (`dm_policy_loss`); the rollout-vs-recompute log-prob gap is `logp_mismatch`.
  """

  model: UnifiedModel
  dc: DMConfig
  field: str = "dm"
  prefix: str = ""  # metric names of a second DM part (e.g. "cycle_")
  task: str = "t2i"  # "i2i": the rows are edits (ViT patches in the condition, reference latents)
  grid: Optional[tuple] = None  # an edit row's (t, h, w) ViT image grid, shared by all rows (static)

  def denominator(self, exp: Experience):
    rows: DMRows = getattr(exp, self.field)
    n = exp.rows if rows.row_mask is None else jnp.maximum(jnp.sum(rows.row_mask), 1.0)
    return n * jnp.sum(exp.schedule.sde_mask).astype(jnp.float32)

  def loss_sum(self, params, ref_params, exp: Experience) -> tuple[jax.Array, dict]:
    model, dc = self.model, self.dc
    rows: DMRows = getattr(exp, self.field)
    sched = exp.schedule
    sigmas = sched.sigmas
    cd = rows.condition
    cond = condition(model, params, cd, self.task, self.grid)
    cond_ref = condition(model, ref_params, cd, self.task, self.grid)
    b = cond.shape[0]
    g = dc.loss_guidance
    # The caption K/V once for all steps; their gradient accumulates over the steps that read them.
    ctx = model.guidance_context(params["dit"], cond, g)
    ctx_ref = jax.lax.stop_gradient(model.guidance_context(ref_params["dit"], cond_ref, g))
    vel = model.guided_velocity(params["dit"], ctx, g, ref_latents=rows.ref, detach_uncond=dc.detach_uncond)
    vel_ref = model.guided_velocity(ref_params["dit"], ctx_ref, g, ref_latents=rows.ref)
    latents = jnp.moveaxis(rows.trajectory.latents, 1, 0)  # (n + 1, B, ...)
    old_lp = jnp.moveaxis(rows.trajectory.log_probs, 1, 0)  # (n, B)
    adv = exp.advantages if rows.advantages is None else rows.advantages

    def step(carry, i):
      x, prev = latents[i], latents[i + 1]
      t = jnp.full((b,), sched.timesteps[i])
      v = vel(x, t)
      v_ref = jax.lax.stop_gradient(vel_ref(x, t))
      out = sde_step(x, v, sigmas[i], sigmas[i + 1], sched.sigma_1, dc.noise_level, prev=prev,
                     reduce=dc.log_prob_reduce)
      mask = jnp.broadcast_to(sched.sde_mask[i], (b,))
      if rows.row_mask is not None:  # rows without this trajectory (reflection's image 2 after a yes)
        mask = mask & (rows.row_mask > 0)
      pg, _, st = dm_policy_loss(out.log_prob, old_lp[i] if dc.mismatched else None, adv, dc.clip_eps, mask)
      if dc.kl == "mean":
        ref_mean = sde_step(x, v_ref, sigmas[i], sigmas[i + 1], sched.sigma_1, dc.noise_level, prev=prev).mean
        kl, _ = dm_kl(out.mean, ref_mean, out.std, mask)
      else:
        kl, _ = dm_kl(v, v_ref, 1.0, mask, kind="velocity")
      gap = jnp.max(jnp.where(mask, jnp.abs(out.log_prob - old_lp[i]), 0.0))
      pg_s, kl_s, clip_s, akl_s, gap_s, rmin, rmax = carry
      return (pg_s + pg, kl_s + kl, clip_s + st["clip_count"], akl_s + st["approx_kl_sum"],
              jnp.maximum(gap_s, gap), jnp.minimum(rmin, st["ratio_min"]), jnp.maximum(rmax, st["ratio_max"])), None

    body = jax.checkpoint(step) if dc.remat_steps else step
    zero = jnp.zeros((), jnp.float32)
    init = (zero,) * 5 + (jnp.float32(jnp.inf), jnp.float32(-jnp.inf))
    (pg, kl, clips, akl, gap, rmin, rmax), _ = jax.lax.scan(body, init, jnp.arange(sched.steps),
                                                            unroll=min(dc.unroll_steps, sched.steps))
    p = self.prefix
    return pg + dc.beta * kl, {p + "policy_loss": pg, p + "kl": kl, p + "clip_frac": clips, p + "approx_kl": akl,
                               p + "logp_mismatch": gap, p + "ratio_min": rmin, p + "ratio_max": rmax}

  def metrics(self, stats: dict, den, rows: int) -> dict:
    p = self.prefix
    out = {p + k: stats[p + k] / den for k in ("policy_loss", "kl", "clip_frac", "approx_kl")}
    out.update({p + k: stats[p + k] for k in ("logp_mismatch", "ratio_min", "ratio_max")})
    return out
