"""One GRPO gradient over a step's experience: the sum of a task's loss parts (DM, LM, ...), accumulated over
micro-batches of trajectory rows; each part is a sum divided by the whole step's denominator, so any split
gives the same gradient (docs/algorithms.md §4)."""

from __future__ import annotations

from typing import Protocol, Sequence

import jax
import jax.numpy as jnp

from unirl_jax import train_state
from unirl_jax.rl.batch import Experience
from unirl_jax.train_state import merge


class LossPart(Protocol):
  """A term of a task's loss (rl.dm.DMLoss, rl.lm.LMLoss)."""

  def denominator(self, exp: Experience) -> jax.Array: ...

  def loss_sum(self, params, ref_params, exp: Experience) -> tuple[jax.Array, dict]: ...

  def metrics(self, stats: dict, den, rows: int) -> dict: ...


def _combine(name: str):
  """How a statistic accumulates over micro-batches: extrema by their name, everything else by sum."""
  if name.endswith("logp_mismatch") or name.endswith("ratio_max"):
    return jnp.maximum
  if name.endswith("ratio_min"):
    return jnp.minimum
  return jnp.add


def _chunks(x, m: int):
  """(rows, ...) -> (m, rows / m, ...)."""
  return x.reshape((m, x.shape[0] // m) + x.shape[1:])


def grpo_grads(parts: Sequence[LossPart], trainable, frozen, ref_trainable, exp: Experience, micro_batch: int = 0):
  """-> (loss, grads, metrics). micro_batch: trajectories per backward pass (0 = all at once); must divide the rows."""
  rows = exp.rows
  mb = micro_batch or rows
  if rows % mb:
    raise ValueError(f"train.micro_batch {mb} does not divide the {rows} trajectories of a step")
  m = rows // mb
  dens = [p.denominator(exp) for p in parts]
  chunks = jax.tree.map(lambda x: _chunks(x, m), exp.row_part())

  def loss_fn(tr, ch: Experience):
    params, ref = merge(tr, frozen), merge(ref_trainable, frozen)
    ch = ch.replace(schedule=exp.schedule)
    loss, stats = None, {}
    for part, den in zip(parts, dens):
      s, st = part.loss_sum(params, ref, ch)
      loss = s / den if loss is None else loss + s / den
      stats.update(st)
    return loss, stats

  def body(carry, ch):
    g_acc, l_acc, s_acc = carry
    (loss, stats), g = jax.value_and_grad(loss_fn, has_aux=True)(trainable, ch)
    s_new = {k: _combine(k)(s_acc[k], v) for k, v in stats.items()}
    return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss, s_new), None

  stat_shapes = jax.eval_shape(loss_fn, trainable, jax.tree.map(lambda x: x[0], chunks))[1]
  start = lambda k: jnp.inf if k.endswith("ratio_min") else -jnp.inf if k.endswith("ratio_max") else 0
  init = (jax.tree.map(jnp.zeros_like, trainable), jnp.zeros((), jnp.float32),
          {k: jnp.full(v.shape, start(k), v.dtype) for k, v in stat_shapes.items()})
  (grads, loss, s), _ = jax.lax.scan(body, init, chunks)
  metrics = {}
  for part, den in zip(parts, dens):
    metrics.update(part.metrics(s, den, rows))
  return loss, grads, metrics


def update_step(parts: Sequence[LossPart], tx, micro_batch: int, state: dict, frozen, ref_trainable, exp: Experience):
  """The jitted GRPO update: gradient, non-finite guard (the step is skipped and counted), optimizer."""
  loss, grads, m = grpo_grads(parts, state["trainable"], frozen, ref_trainable, exp, micro_batch)
  state, g = train_state.apply_gradients(tx, state, loss, grads)
  return state, {"loss": loss, **g, **m}
