"""GRPO surrogate losses as pure functions returning (sum, denominator, stats), so micro-batching is exact.

DM rows are (sample, denoising step) pairs, LM rows are completion tokens. The total over micro-batches is
sum(sums) / sum(denominators) (the LM's "seq_mean_token_mean" and "dr_grpo" modes have per-row weights or a
constant denominator that make the same identity hold).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def ppo_clip(ratio, advantage, eps: float):
  """max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)), elementwise."""
  return jnp.maximum(-advantage * ratio, -advantage * jnp.clip(ratio, 1 - eps, 1 + eps))


def dm_policy_loss(log_prob, old_log_prob, advantage, clip_eps: float = 1e-4, mask=None):
  """Flow-GRPO policy term over rows (B*T,) of per-step log-probs; `mask` drops ODE steps.

  old_log_prob=None is the single on-policy update (the original asserts ρ == 1): ρ = exp(lp − sg(lp)) is
  exactly 1 with the REINFORCE gradient, whatever ulps separate the rollout's and the recomputation's programs
  (report that gap as a diagnostic instead).
  """
  if old_log_prob is None:
    old_log_prob = jax.lax.stop_gradient(log_prob)
  ratio = jnp.exp(log_prob - old_log_prob)
  per = ppo_clip(ratio, advantage, clip_eps)
  m = jnp.ones_like(per) if mask is None else mask.astype(per.dtype)
  stats = {"clip_count": jnp.sum((jnp.abs(ratio - 1) > clip_eps) * m),
           "ratio_min": jnp.min(jnp.where(m > 0, ratio, jnp.inf)),
           "ratio_max": jnp.max(jnp.where(m > 0, ratio, -jnp.inf)),
           "approx_kl_sum": jnp.sum(0.5 * (log_prob - old_log_prob) ** 2 * m)}
  return jnp.sum(per * m), jnp.sum(m), stats


def dm_kl(mean, ref_mean, std, mask=None, kind: str = "mean"):
  """KL to the frozen reference per row: mean_k (μ_θ − μ_ref)² / (2 s²) ("mean", the original's exact Gaussian
  KL with the Δt-inclusive std), or a velocity-space MSE ("velocity": pass velocities as mean/ref_mean, std=1)."""
  if kind not in ("mean", "velocity"):
    raise ValueError(f"KL kind {kind!r} not 'mean' or 'velocity'")
  d = (mean.astype(jnp.float32) - jax.lax.stop_gradient(ref_mean).astype(jnp.float32)) ** 2
  per = d.mean(axis=tuple(range(1, d.ndim)))
  if kind == "mean":
    per = per / (2 * jnp.asarray(std, jnp.float32) ** 2)
  m = jnp.ones_like(per) if mask is None else mask.astype(per.dtype)
  return jnp.sum(per * m), jnp.sum(m)


def completion_mask(tokens, eos_ids) -> jax.Array:
  """(B, T) completion tokens -> 1 up to and including the first EOS, 0 after."""
  is_eos = jnp.isin(tokens, jnp.asarray(eos_ids))
  after = jnp.cumsum(is_eos, axis=1) - is_eos  # EOS seen strictly before this position
  return (after == 0).astype(jnp.float32)


def k3_kl(log_prob, ref_log_prob):
  """The k3 estimator exp(ref − lp) − (ref − lp) − 1 (non-negative, unbiased for KL(π‖π_ref))."""
  d = jax.lax.stop_gradient(ref_log_prob) - log_prob
  return jnp.exp(d) - d - 1


def lm_loss(log_prob, old_log_prob, ref_log_prob, advantage, mask, beta: float = 0.01, clip_eps: float = 0.2,
            aggregation: str = "seq_mean_token_mean", max_len: int | None = None):
  """Token-level GRPO: PPO-clip on per-token ratios plus β·k3 KL; log-probs (B, T), advantage (B,), mask (B, T).

  aggregation: "seq_mean_token_mean" (the original: mean over sequences of token means), "token_mean", or
  "dr_grpo" (sum over tokens / (B · max_len), Dr. GRPO).
  """
  per = ppo_clip(jnp.exp(log_prob - old_log_prob), advantage[:, None], clip_eps)
  if beta:
    per = per + beta * k3_kl(log_prob, ref_log_prob)
  m = mask.astype(jnp.float32)
  b, t = m.shape
  if aggregation == "seq_mean_token_mean":
    return jnp.sum(jnp.sum(per * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)), jnp.float32(b)
  if aggregation == "token_mean":
    return jnp.sum(per * m), jnp.sum(m)
  if aggregation == "dr_grpo":
    return jnp.sum(per * m), jnp.float32(b * (max_len or t))
  raise ValueError(f"LM loss aggregation {aggregation!r} not one of seq_mean_token_mean, token_mean, dr_grpo")
