"""One GRPO gradient over a batch of trajectories: L_DM (+ L_LM for CoT) accumulated over micro-batches of
trajectory rows, each loss a sum divided by the whole batch's denominator, so any split gives the same gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from unirl_jax.diffusion.sde import Rollout
from unirl_jax.rl import dm, lm
from unirl_jax import train_state
from unirl_jax.train_state import merge


COMBINE = {"logp_mismatch": jnp.maximum, "ratio_max": jnp.maximum, "ratio_min": jnp.minimum}  # others: sums


def _chunks(x, m: int, axis: int = 0):
  """Splits `axis` (the rows) into (m, rows/m) and moves the micro-batch index to the front."""
  x = jnp.moveaxis(x, axis, 0)
  x = x.reshape((m, x.shape[0] // m) + x.shape[1:])
  return jnp.moveaxis(x, 1, axis + 1)


def grpo_grads(model, trainable, frozen, ref_trainable, batch: dict, dc: dm.DMConfig, lc: lm.LMConfig | None = None,
               micro_batch: int = 0):
  """-> (loss, grads, metrics). batch: "ids", "mask" (rows, T) DM condition prompts, "roll" (Rollout over rows),
  "advantages" (rows,); with an LM (CoT) also "prompt_ids", "prompt_mask", "completion", "comp_mask".

  micro_batch: trajectories per micro-batch (0 = all at once); must divide the rows.
  """
  roll: Rollout = batch["roll"]
  rows = batch["advantages"].shape[0]
  mb = micro_batch or rows
  if rows % mb:
    raise ValueError(f"micro_batch {mb} does not divide the {rows} trajectories of a step")
  m = rows // mb
  with_lm = "completion" in batch
  dm_den = dm.denominator(roll, rows)
  lm_den = lm.denominator(batch["comp_mask"], lc) if with_lm else None
  keys = ["ids", "mask", "advantages"] + (["prompt_ids", "prompt_mask", "completion", "comp_mask"] if with_lm else [])
  chunks = {k: _chunks(batch[k], m) for k in keys}
  chunks["latents"] = _chunks(roll.latents, m, axis=1)
  chunks["log_probs"] = _chunks(roll.log_probs, m, axis=1)

  def loss_fn(tr, ch):
    params, ref = merge(tr, frozen), merge(ref_trainable, frozen)
    r = Rollout(ch["latents"], ch["log_probs"], roll.timesteps, roll.sde_mask)
    s, stats = dm.dm_loss_sum(model, params, ref, ch["ids"], ch["mask"], r, ch["advantages"], dc)
    loss = s / dm_den
    if with_lm:
      ls, lstats = lm.lm_loss_sum(model.lm, params["lm"], ref["lm"], ch["prompt_ids"], ch["prompt_mask"],
                                  ch["completion"], ch["comp_mask"], ch["advantages"], lc)
      loss = loss + ls / lm_den
      stats = {**stats, **lstats, "lm_loss": ls}
    return loss, stats

  def body(carry, ch):
    g_acc, l_acc, s_acc = carry
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(trainable, ch)
    s_new = {k: COMBINE.get(k, jnp.add)(s_acc[k], v) for k, v in stats.items()}
    return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss, s_new), None

  stat_shapes = jax.eval_shape(loss_fn, trainable, jax.tree.map(lambda x: x[0], chunks))[1]
  start = {"ratio_min": jnp.inf, "ratio_max": -jnp.inf}
  init = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32),
          {k: jnp.full(v.shape, start.get(k, 0), v.dtype) for k, v in stat_shapes.items()})
  (grads, loss, s), _ = jax.lax.scan(body, init, chunks)
  metrics = {k: s[k] / dm_den for k in ("policy_loss", "kl", "clip_frac", "approx_kl")}
  metrics.update({k: s[k] for k in ("logp_mismatch", "ratio_min", "ratio_max")})
  if with_lm:
    metrics.update(lm_loss=s["lm_loss"] / lm_den, lm_kl=s["lm_kl_tokens"] / jnp.maximum(s["lm_tokens"], 1.0),
                   completion_tokens=s["lm_tokens"] / rows)
  return loss, grads, metrics


def update_step(model, tx, dc: dm.DMConfig, lc: lm.LMConfig | None, micro_batch: int, state: dict, frozen,
                ref_trainable, batch: dict):
  """The jitted GRPO update: gradient, non-finite guard (the step is skipped and counted), optimizer."""
  loss, grads, m = grpo_grads(model, state["trainable"], frozen, ref_trainable, batch, dc, lc, micro_batch)
  gnorm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
  state = train_state.guarded_update(tx, state, grads, finite)
  return state, {"loss": loss, "grad_norm": gnorm, "skipped": (~finite).astype(jnp.int32), **m}
