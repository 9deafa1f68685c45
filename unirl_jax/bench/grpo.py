"""Per-phase timings of a GRPO step, timing the trainer's own phase functions (the task's jitted rollout and LM
sampler, the host reward, the jitted update), with analytic FLOPs and MFU."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax import optim, rewards, run_config, train_state
from unirl_jax.bench import devices, flops
from unirl_jax.bench.timing import summarize, time_fn
from unirl_jax.diffusion.sde import Trajectory
from unirl_jax.models import unified
from unirl_jax.rl import dm, lm, update
from unirl_jax.rl.batch import Completions, Condition, DMRows, Experience


def _dtype_bytes(name: str) -> int:
  return jnp.dtype(name).itemsize


def phase_flops(cfg: unified.UnifiedConfig, c, rows: int, prompt_len: int, latent_hw, lm_trainable: bool,
                new_tokens: int = 0, lm_prompt_len: int = 0) -> dict:
  """Analytic FLOPs of every phase for `rows` trajectories (see unirl_jax.bench.flops for the conventions):
  prompt_len is the DM condition's, lm_prompt_len the sampled LM prompt's (CoT)."""
  q, (lh, lw) = cfg.num_queries, latent_hw
  steps = c.dm.steps
  sde = steps if c.dm.sde_steps is None else min(c.dm.sde_steps, steps)
  lm_cond = rows * flops.lm_forward(cfg.lm.text, prompt_len + q)
  conn = rows * flops.connector(cfg.connector, q)
  # Both CFG branches; the caption K/V once per rollout (or loss), the rest per denoising step.
  dit_ctx = 2 * rows * flops.sana_context(cfg.dit, q)
  dit_step = 2 * rows * flops.sana_forward(cfg.dit, lh, lw, q) - dit_ctx
  ref = lm_cond + conn + dit_ctx + sde * dit_step
  out = {
      "rollout": lm_cond + conn + dit_ctx + steps * dit_step + rows * flops.dc_ae_decode(cfg.vae, lh, lw),
      # backward = 2x forward for trained weights; the frozen LM still back-propagates activations (1x)
      "update": (3 if lm_trainable else 2) * lm_cond + 3 * conn + 3 * (dit_ctx + sde * dit_step) + ref,
  }
  if new_tokens:
    out["lm_prefill"] = rows * flops.lm_forward(cfg.lm.text, lm_prompt_len, logits_tokens=1)
    out["lm_decode"] = rows * flops.lm_decode(cfg.lm.text, lm_prompt_len, new_tokens)
  out["step"] = sum(out.values())
  return out


def _finish(timing: dict, n_flops: int | None, peak_flops, extra=None) -> dict:
  r = {**timing, **(extra or {})}
  if n_flops is not None:
    r["flops"] = int(n_flops)
    r["flops_per_s"] = n_flops / timing["median_s"]
    r["mfu"] = r["flops_per_s"] / peak_flops if peak_flops else None
  return r


def _first_call(fn):
  """-> (fn()'s output, seconds of the first call: compile + one run)."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - t0


def run(trainer, repeats: int, log=print) -> dict:
  """Times every phase a GRPO step of `trainer` runs (its task's own functions), then the full step."""
  from unirl_jax.scenarios.t2icot import CoTTextToImage
  c, model, task = trainer.config, trainer.model, trainer.task
  cfg = model.config
  peak_flops, peak_bw = devices.peak()
  texts = trainer.prompts.captions(1)
  cot = isinstance(task, CoTTextToImage)
  rng = jax.random.PRNGKey(0)
  res = {}

  def timed(name, fn, fl, extra=lambda t: {}):
    """Times a jitted phase; its first call (compile + one run) minus the median is reported as compile_s."""
    out, first = _first_call(fn)
    t = time_fn(fn, repeats, warmup=0)
    res[name] = _finish(t, fl.get(name), peak_flops, {"compile_s": max(first - t["median_s"], 0.0), **extra(t)})
    log(f"  {name:13s} {t['median_s'] * 1e3:10.2f} ms")
    return out

  params = train_state.merge(trainer.state["trainable"], trainer.frozen)
  if cot:
    comps, completions, condition = task.complete(texts, rng)
    p_ids, p_mask = trainer.put_rows((comps.prompt_ids, comps.prompt_mask))
    new_tokens = task.sampler.sc.max_new_tokens
  else:
    condition, new_tokens, completions = task.condition(texts), 0, None
  condition = trainer.put_rows(condition)
  rows, prompt_len = condition.ids.shape
  fl = phase_flops(cfg, c, rows, prompt_len, trainer.latent_hw, "lm" in trainer.state["trainable"], new_tokens,
                   p_ids.shape[1] if cot else 0)
  if cot:
    # The task's sampler: prefill, then prefill + decode as the trainer calls it (decode = the difference).
    prefill = lambda: task.sampler.prefill(params["lm"], p_ids, p_mask)
    timed("lm_prefill", prefill, fl, lambda t: {"tokens_per_s": rows * p_ids.shape[1] / t["median_s"]})
    gen = lambda: task.sampler(params["lm"], p_ids, p_mask, rng=rng)
    _, first = _first_call(gen)
    t_gen = time_fn(gen, repeats, warmup=0)
    pre = res["lm_prefill"]["median_s"]
    t_dec = {**t_gen, **{k: max(t_gen[k] - pre, 1e-9) for k in ("median_s", "min_s", "max_s")}}
    dec_bytes = _decode_bytes(cfg, params["lm"], rows, p_ids.shape[1], new_tokens, None)
    res["lm_decode"] = _finish(t_dec, fl["lm_decode"], peak_flops, {
        "compile_s": max(first - t_gen["median_s"], 0.0), "tokens_per_s": rows * new_tokens / t_dec["median_s"],
        "note": "generate minus prefill (up to max_new_tokens; stops early when every row ends)",
        "hbm_bytes": dec_bytes, "hbm_roofline_frac": dec_bytes / t_dec["median_s"] / peak_bw if peak_bw else None})
    log(f"  {'lm_decode':13s} {t_dec['median_s'] * 1e3:10.2f} ms")

  # The task's jitted rollout: LM + queries + connector, SDE sampling with CFG over all steps, DC-AE decode.
  st, fr = trainer.state["trainable"], trainer.frozen
  traj, images = timed("rollout", lambda: task._rollout(st, fr, condition, task.schedule, rng), fl,
                       lambda t: {"denoise_steps_per_s": c.dm.steps / t["median_s"],
                                  "images_per_s": rows / t["median_s"]})
  from unirl_jax.data.pipeline import to_uint8
  imgs = to_uint8(jax.device_get(images))
  prompts = [t for t in texts for _ in range(c.group_size)]
  inputs = rewards.RewardInputs(imgs, prompts, completions)
  res["reward"] = {**time_fn(lambda: rewards.score(c.reward, inputs, trainer.reward_fns)[0], repeats),
                   "flops": None}
  log(f"  {'reward':13s} {res['reward']['median_s'] * 1e3:10.2f} ms")

  # The trainer's update: compiled on its own (memory analysis printed first), then run on a donated state.
  exp = Experience(trainer.put_rows(np.linspace(-1, 1, rows).astype(np.float32)), task.schedule,
                   DMRows(condition, traj), trainer.put_rows(comps) if cot else None)
  fn = trainer.update_fn(exp)
  t0 = time.perf_counter()
  compiled = fn.lower(trainer.state, trainer.frozen, trainer.ref_trainable, exp).compile()
  compile_s = time.perf_counter() - t0
  mem = memory_analysis(compiled)
  log(f"  update memory_analysis: {mem}")

  def run_update():
    trainer.state, m = compiled(trainer.state, trainer.frozen, trainer.ref_trainable, exp)
    return m
  t = time_fn(run_update, repeats)
  res["update"] = _finish(t, fl["update"], peak_flops, {"compile_s": compile_s, "memory_analysis": mem})
  log(f"  {'update':13s} {t['median_s'] * 1e3:10.2f} ms")

  # The full step as the trainer runs it.
  trainer.train_step(1)
  times = []
  for s in range(repeats):
    t0 = time.perf_counter()
    trainer.train_step(2 + s)
    times.append(time.perf_counter() - t0)
  res["step"] = _finish(summarize(times), fl["step"], peak_flops, {"trajectories": rows})
  log(f"  {'step':13s} {res['step']['median_s'] * 1e3:10.2f} ms")
  res["peak_memory_bytes"] = devices.peak_memory_bytes()
  return res


def memory_analysis(compiled) -> dict | None:
  m = compiled.memory_analysis()
  if m is None:
    return None
  keys = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
          "generated_code_size_in_bytes")
  return {k: int(getattr(m, k)) for k in keys if hasattr(m, k)}


def _decode_bytes(cfg: unified.UnifiedConfig, lm_params, rows: int, prompt_len: int, n_new: int, cache_dtype) -> int:
  """HBM bytes a decode must read: the text weights once per step (in the compute dtype: the Sampler casts its
  unstacked copy once per call), plus the KV cache up to each position."""
  text = lm_params["language_model"]
  w = sum(x.size * _dtype_bytes(cfg.lm.dtype) for x in jax.tree.leaves(text))
  t = cfg.lm.text
  kv_b = _dtype_bytes(cache_dtype or cfg.lm.dtype)
  per_pos = rows * t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * kv_b
  return int(n_new * w + per_pos * sum(prompt_len + i for i in range(n_new)))


def abstract_update(config):
  """The real-size update on abstract shapes: -> (jitted update, (state, frozen, ref, exp) as ShapeDtypeStructs,
  model, run config). Nothing is allocated."""
  c = config if isinstance(config, run_config.GRPORun) else run_config.load(config)
  name = c.model.init.split(":", 1)[1]
  model = unified.UnifiedModel(unified.with_execution(getattr(unified, name)(), **train_state.execution_knobs(c.model)))
  trainable, frozen = train_state.split(model.abstract_params(), c.train.trainable)
  tx = optim.adamw(c.optim, max(c.train.total_steps, 1), tuple(trainable))
  fdt = c.model.frozen_dtype
  frozen, ref = (jax.eval_shape(lambda t: train_state.cast_floating(t, fdt), t) for t in (frozen, trainable))
  state = {"trainable": trainable, "opt_state": jax.eval_shape(tx.init, trainable),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  rows = c.rows
  f = model.config.vae.spatial_compression_ratio
  lh = c.image_size // f
  n = c.dm.steps
  dt = jnp.dtype(c.model.dtype)
  s = jax.ShapeDtypeStruct
  text = (rows, c.max_text_len)
  traj = Trajectory(s((rows, n + 1, lh, lh, model.config.dit.in_channels), dt), s((rows, n), jnp.float32))
  sched = jax.eval_shape(c.dm.schedule)
  parts = (dm.DMLoss(model, c.dm),)
  comps = None
  if c.task == "t2icot":
    parts += (lm.LMLoss(model.lm, c.lm),)
    comps = Completions(s(text, jnp.int32), s(text, jnp.int32), s((rows, c.lm.max_new_tokens), jnp.int32),
                        s((rows, c.lm.max_new_tokens), jnp.float32))
  exp = Experience(s((rows,), jnp.float32), sched, DMRows(Condition(s(text, jnp.int32), s(text, jnp.int32)), traj),
                   comps)
  fn = jax.jit(functools.partial(update.update_step, parts, tx, c.train.micro_batch), donate_argnums=(0,))
  return fn, (state, frozen, ref, exp), model, c


def compile_update(config) -> dict:
  """Lowers and compiles the real-size update on abstract shapes (no weights, no device memory):
  compile time and the compiled step's memory analysis."""
  fn, args, model, c = abstract_update(config)
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  lower_s = time.perf_counter() - t0
  compiled = lowered.compile()
  return {"lower_s": lower_s, "compile_s": time.perf_counter() - t0 - lower_s,
          "memory_analysis": memory_analysis(compiled),
          "params": {k: int(sum(np.prod(x.shape) for x in jax.tree.leaves(v))) for k, v in model.abstract_params().items()},
          "trajectories": c.rows}
