"""Per-phase timings of a text-to-image GRPO step on the unified model, with analytic FLOPs and MFU."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax import optim, rewards, train_state
from unirl_jax.bench import devices, flops
from unirl_jax.bench.timing import summarize, time_fn
from unirl_jax.data.pipeline import to_uint8
from unirl_jax.diffusion.sde import Rollout, sde_sample
from unirl_jax.models import unified
from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
from unirl_jax.rl import dm, lm, update


def _dtype_bytes(name: str) -> int:
  return jnp.dtype(name).itemsize


def phase_flops(cfg: unified.UnifiedConfig, c, rows: int, prompt_len: int, latent_hw, lm_trainable: bool) -> dict:
  """Analytic FLOPs of every phase for `rows` trajectories (see unirl_jax.bench.flops for the conventions)."""
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
      "lm_prefill": rows * flops.lm_forward(cfg.lm.text, prompt_len, logits_tokens=1),
      "lm_decode": rows * flops.lm_decode(cfg.lm.text, prompt_len, c.bench.new_tokens),
      "lm_condition": lm_cond,
      "connector": conn,
      "dit_rollout": dit_ctx + steps * dit_step,
      "vae_decode": rows * flops.dc_ae_decode(cfg.vae, lh, lw),
      "ref_forward": ref,
      # backward = 2x forward for trained weights; the frozen LM still back-propagates activations (1x)
      "update": (3 if lm_trainable else 2) * lm_cond + 3 * conn + 3 * (dit_ctx + sde * dit_step) + ref,
  }
  out["step"] = lm_cond + conn + out["dit_rollout"] + out["vae_decode"] + out["update"]
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
  """Times every phase of `trainer`'s GRPO step (a t2i GRPOTrainer), then the full step."""
  c, model = trainer.c, trainer.model
  cfg = model.config
  peak_flops, peak_bw = devices.peak()
  texts, ids, mask = trainer.prompt_batch(1)
  rows, prompt_len = ids.shape
  lm_trainable = "lm" in trainer.state["trainable"]
  fl = phase_flops(cfg, c, rows, prompt_len, trainer.latent_hw, lm_trainable)
  params = train_state.merge(trainer.state["trainable"], trainer.frozen)
  key = jax.random.PRNGKey(0)
  res = {}

  def timed(name, fn, extra=lambda t: {}):
    """Times a jitted phase; its first call (compile + one run) minus the median is reported as compile_s."""
    out, first = _first_call(fn)
    t = time_fn(fn, repeats, warmup=0)
    res[name] = _finish(t, fl.get(name), peak_flops, {"compile_s": max(first - t["median_s"], 0.0), **extra(t)})
    log(f"  {name:13s} {t['median_s'] * 1e3:10.2f} ms")
    return out

  # LM sampling (the CoT path): prefill, then decode of a fixed number of tokens (EOS off).
  n_new = c.bench.new_tokens
  sampler = Sampler(model.lm, SamplingConfig(max_new_tokens=n_new, top_k=50, eos_token_ids=(),
                                             pad_token_id=cfg.lm.pad_token_id, cache_dtype=c.bench.get("kv_cache_dtype")))
  prefill = lambda: sampler.prefill(params["lm"], ids, mask)
  timed("lm_prefill", prefill, lambda t: {"tokens_per_s": rows * prompt_len / t["median_s"]})
  gen = lambda: sampler(params["lm"], ids, mask, rng=key)
  _, first = _first_call(gen)
  t_gen = time_fn(gen, repeats, warmup=0)
  pre = res["lm_prefill"]["median_s"]  # decode = generate - prefill (the cache is donated, so no re-run)
  t_dec = {**t_gen, **{k: max(t_gen[k] - pre, 1e-9) for k in ("median_s", "min_s", "max_s")}}
  dec_bytes = _decode_bytes(cfg, params["lm"], rows, prompt_len, n_new, c.bench.get("kv_cache_dtype"))
  res["lm_decode"] = _finish(t_dec, fl["lm_decode"], peak_flops, {
      "compile_s": max(first - t_gen["median_s"], 0.0), "tokens_per_s": rows * n_new / t_dec["median_s"],
      "note": "generate minus prefill", "hbm_bytes": dec_bytes,
      "hbm_roofline_frac": dec_bytes / t_dec["median_s"] / peak_bw if peak_bw else None})
  log(f"  {'lm_decode':13s} {t_dec['median_s'] * 1e3:10.2f} ms")

  # Conditioning: LM over prompt + queries, then the connector.
  q_fn = jax.jit(lambda p, i, m: model.query_states(p, i, m))
  h = timed("lm_condition", lambda: q_fn(params, ids, mask))
  c_fn = jax.jit(lambda p, h: model.connector.apply({"params": p}, h))
  cond = timed("connector", lambda: c_fn(params["connector"], h))

  # DiT rollout (SDE + CFG over all steps), then DC-AE decode, then the host reward.
  dc = trainer.dc
  sigmas, timesteps = dc.schedule()
  x0 = jax.random.normal(key, (rows,) + trainer.latent_hw + (cfg.dit.in_channels,), jnp.float32).astype(cond.dtype)

  @jax.jit
  def rollout(dit_params, cond, x0, k):
    ctx = dm.guidance_context(model, dit_params, cond)
    vel = lambda x, t: dm.guided_velocity(model, dit_params, x, ctx, t, dc.cfg)
    return sde_sample(vel, x0, sigmas, timesteps, k, dc.noise_level, dc.sde_steps, dc.log_prob_reduce)

  roll = timed("dit_rollout", lambda: rollout(params["dit"], cond, x0, key),
        lambda t: {"denoise_steps_per_s": dc.steps / t["median_s"]})
  dec = jax.jit(lambda p, z: model.decode(p, z))
  images = timed("vae_decode", lambda: dec(params, roll.latents[-1]), lambda t: {"images_per_s": rows / t["median_s"]})
  imgs = to_uint8(jax.device_get(images))
  prompts = [t for t in texts for _ in range(c.group_size)]
  res["reward"] = {**time_fn(lambda: rewards.score(c.reward, imgs, prompts)[0], repeats), "flops": None}
  log(f"  {'reward':13s} {res['reward']['median_s'] * 1e3:10.2f} ms")

  # The reference policy's share of the loss: its condition and velocities on the stored trajectory.
  ref = train_state.merge(trainer.ref_trainable, trainer.frozen)

  @jax.jit
  def ref_forward(ref, ids, mask, roll):
    ctx = dm.guidance_context(model, ref["dit"], model.condition(ref, ids, mask, task="t2i"))

    def step(_, i):
      t = jnp.full((rows,), roll.timesteps[i])
      return None, dm.guided_velocity(model, ref["dit"], roll.latents[i], ctx, t, dc.cfg)
    return jax.lax.scan(step, None, jnp.arange(roll.timesteps.shape[0]))[1]

  timed("ref_forward", lambda: ref_forward(ref, ids, mask, roll))

  # The update: compiled on its own (memory analysis printed first), then run on a donated state.
  adv = jnp.asarray(np.linspace(-1, 1, rows), jnp.float32)
  batch = {"ids": ids, "mask": mask, "roll": roll, "advantages": adv}
  t0 = time.perf_counter()
  compiled = trainer._update.lower(trainer.state, trainer.frozen, trainer.ref_trainable, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = memory_analysis(compiled)
  log(f"  update memory_analysis: {mem}")

  def run_update():
    trainer.state, m = compiled(trainer.state, trainer.frozen, trainer.ref_trainable, batch)
    return m
  t = time_fn(run_update, repeats)
  res["update"] = _finish(t, fl["update"], peak_flops, {"compile_s": compile_s, "memory_analysis": mem})
  log(f"  {'update':13s} {t['median_s'] * 1e3:10.2f} ms")

  # The full step as the trainer runs it (rollout jit, host decode + reward, update jit).
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


def compile_update(c) -> dict:
  """Lowers and compiles the real-size update on abstract shapes (no weights, no device memory):
  compile time and the compiled step's memory analysis."""
  name = c.model.init.split(":", 1)[1]
  model = unified.UnifiedModel(unified.with_execution(getattr(unified, name)(), **train_state.execution_knobs(c.model)))
  trainable, frozen = train_state.split(model.abstract_params(), tuple(c.train.trainable))
  tx = optim.adamw(c.optim, tuple(trainable))
  fdt = c.model.get("frozen_dtype", None)
  frozen, ref = (jax.eval_shape(lambda t: train_state.cast_floating(t, fdt), t) for t in (frozen, trainable))
  state = {"trainable": trainable, "opt_state": jax.eval_shape(tx.init, trainable),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  rows = c.prompts_per_step * c.group_size
  f = model.config.vae.spatial_compression_ratio
  lh = c.image_size // f
  n = c.dm.steps
  dt = jnp.dtype(c.model.dtype)
  s = jax.ShapeDtypeStruct
  roll = Rollout(s((n + 1, rows, lh, lh, model.config.dit.in_channels), dt), s((n, rows), jnp.float32),
                 s((n,), jnp.float32), s((n,), jnp.bool_))
  batch = {"ids": s((rows, c.max_text_len), jnp.int32), "mask": s((rows, c.max_text_len), jnp.int32), "roll": roll,
           "advantages": s((rows,), jnp.float32)}
  fn = functools.partial(update.update_step, model, tx, dm.DMConfig(**c.dm), lm.LMConfig(),
                         c.train.get("micro_batch", 0))
  t0 = time.perf_counter()
  lowered = jax.jit(fn, donate_argnums=(0,)).lower(state, frozen, ref, batch)
  lower_s = time.perf_counter() - t0
  compiled = lowered.compile()
  return {"lower_s": lower_s, "compile_s": time.perf_counter() - t0 - lower_s,
          "memory_analysis": memory_analysis(compiled),
          "params": {k: int(sum(np.prod(x.shape) for x in jax.tree.leaves(v))) for k, v in model.abstract_params().items()},
          "trajectories": rows}
