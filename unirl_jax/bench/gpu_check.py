"""The one-shot accelerator check: `python -m unirl_jax.bench.gpu_check --json gpu_check.json` (bench/gpu_check.sh).

Within ~8 minutes on one H100/H200 it prints and writes: the device's measured bf16 matmul rate; the real-size LM
decode (Qwen2.5-VL-3B, bf16 weights and KV cache, CoT's 512 new tokens) as a fraction of the HBM roofline; the
real-size DM update (configs/bench/unirl_zero_t2i.py: 1024 px, G=8 in micro-batches of 2, full remat) with its
step time, MFU and peak memory, and whether that peak fits 80 GB and 141 GB; and the whole t2i GRPO step against
the PyTorch reference step at configs/bench/mid.py, both in strict fp32 on the device (needs diffusers).
`--config` takes any bench config for the DM update and its overrides (e.g. `--config.model.remat=save_dots
--config.train.micro_batch=4` to try a variant; `--config=configs/bench/tiny.py` runs the same code on tiny models
in seconds, as the test suite does).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import tempfile
import time

import numpy as np

from absl import app, flags
from ml_collections import config_flags

SECTIONS = ("matmul", "lm_decode", "dm_update", "torch_step")
H100_BYTES, H200_BYTES = 79 * 2 ** 30, 139 * 2 ** 30  # what JAX can allocate on an 80 GB / 141 GB card
DECODE_ROWS = (8, 32)  # G=8 completions of one prompt; four prompts per device


def matmul_rate(n: int, repeats: int) -> dict:
  """Achieved bf16 FLOP/s of an n x n x n product: the ceiling the MFU numbers are read against."""
  import jax
  import jax.numpy as jnp
  from unirl_jax.bench.timing import time_fn
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x: x @ x)
  t = time_fn(lambda: f(a), repeats)
  return {"n": n, "median_s": t["median_s"], "flops_per_s": 2 * n ** 3 / t["median_s"]}


def random_like(tree, key, scale: float = 0.02, zeros=False):
  """Materialises a tree of ShapeDtypeStructs in one jitted program: floats ~ N(0, scale) read cyclically from one
  16M-value draw (cheap to compile at any size; a bench needs values, not flax's init, whose compile at 3B+
  parameters takes minutes on a GPU), integers 0; all zeros with `zeros`."""
  import jax
  import jax.numpy as jnp
  leaves, treedef = jax.tree.flatten(tree)
  n_base = 1 << 24

  def leaf(base, x):
    if zeros or not jnp.issubdtype(x.dtype, jnp.floating):
      return jnp.zeros(x.shape, x.dtype)
    n = int(np.prod(x.shape))
    flat = jnp.tile(base, -(-n // n_base))[:n] if n > n_base else base[:n]
    return flat.reshape(x.shape).astype(x.dtype)

  def fill(key):
    base = scale * jax.random.normal(key, (n_base,), jnp.float32)
    return treedef.unflatten([leaf(base, x) for x in leaves])
  return jax.jit(fill)(key)


def lm_decode(config, repeats: int, peak_bw: float | None, log=print) -> list[dict]:
  """Times the trainer's KV-cache sampler decoding `new` tokens (EOS off) after a `prompt`-token prefill."""
  import jax
  import jax.numpy as jnp
  from unirl_jax.bench.grpo import _decode_bytes
  from unirl_jax.bench.timing import summarize
  from unirl_jax.models import qwen2_5_vl, unified
  from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
  cfg = unified.with_execution(getattr(unified, config.model.init.split(":", 1)[1])(), dtype="bfloat16")
  prompt, new = config.max_text_len, config.bench.new_tokens
  params = random_like(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16),
                                    qwen2_5_vl.abstract_params(cfg.lm)), jax.random.PRNGKey(0))
  sampler = Sampler(qwen2_5_vl.Qwen2_5_VL(cfg.lm), SamplingConfig(
      max_new_tokens=new, temperature=1.0, top_k=50, eos_token_ids=(), pad_token_id=0, cache_dtype="bfloat16"))
  out = []
  for rows in DECODE_ROWS:
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 150000, (rows, prompt)), jnp.int32)
    times, first = [], None
    for i in range(repeats + 1):
      last, cache, pos = jax.block_until_ready(sampler.prefill(params, ids))
      t0 = time.perf_counter()
      jax.block_until_ready(sampler.decode(params, cache, last, pos, jax.random.PRNGKey(i)))
      if first is None:
        first = time.perf_counter() - t0
      else:
        times.append(time.perf_counter() - t0)
    t = summarize(times)
    hbm = _decode_bytes(cfg, params, rows, prompt, new, "bfloat16")
    r = {**t, "rows": rows, "prompt_tokens": prompt, "new_tokens": new, "compile_s": max(first - t["median_s"], 0.0),
         "tokens_per_s": rows * new / t["median_s"], "ms_per_token": 1e3 * t["median_s"] / new, "hbm_bytes": hbm,
         "hbm_bytes_per_s": hbm / t["median_s"],
         "hbm_roofline_frac": hbm / t["median_s"] / peak_bw if peak_bw else None}
    log(f"  lm_decode rows {rows}: {t['median_s'] * 1e3:.1f} ms for {new} tokens ({r['ms_per_token']:.2f} ms/token, "
        f"{r['hbm_bytes_per_s'] / 1e12:.2f} TB/s)")
    out.append(r)
  del params, sampler
  gc.collect()
  return out


def dm_update(config, repeats: int, log=print, trace_dir: str | None = None) -> dict:
  """The trainer's DM update (fwd + bwd over every SDE step of G trajectories in micro-batches, AdamW) on random
  weights and trajectories: step time, MFU, compiled memory and the device's peak memory."""
  import jax
  from unirl_jax.bench import devices, grpo
  from unirl_jax.bench.timing import summarize
  fn, (state, frozen, ref, exp), model, c = grpo.abstract_update(config)
  t0 = time.perf_counter()
  opt_state = random_like(state["opt_state"], jax.random.PRNGKey(0), zeros=True)  # AdamW moments 0, as at step 0
  state, frozen, ref, exp = random_like(({**state, "opt_state": None}, frozen, ref, exp), jax.random.PRNGKey(0))
  state["opt_state"] = opt_state
  # Group advantages, the real sigma schedule, a full-length caption (no padding).
  cond = dataclasses.replace(exp.dm.condition, mask=jax.numpy.ones_like(exp.dm.condition.mask))
  exp = dataclasses.replace(exp, advantages=jax.numpy.asarray(np.linspace(-1, 1, c.rows), jax.numpy.float32),
                            schedule=c.dm.schedule(), dm=dataclasses.replace(exp.dm, condition=cond))
  jax.block_until_ready((state, frozen, ref, exp))
  fill_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = fn.lower(state, frozen, ref, exp).compile()
  compile_s = time.perf_counter() - t0
  mem = grpo.memory_analysis(compiled)
  log(f"  update compiled in {compile_s:.1f} s (random weights in {fill_s:.1f} s); memory_analysis {mem}")
  times = []
  for i in range(repeats + 1):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, frozen, ref, exp))
    if i:  # the first run warms up
      times.append(time.perf_counter() - t0)
  t = summarize(times)
  traced = None
  if trace_dir:  # one more update under the profiler: where its device time goes
    from unirl_jax.bench import trace_summary
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      state, metrics = jax.block_until_ready(compiled(state, frozen, ref, exp))
    traced = trace_summary.summarize(trace_dir)
    log(trace_summary.format_summary(traced))
  cfg = model.config
  lh = c.image_size // cfg.vae.spatial_compression_ratio
  fl = grpo.phase_flops(cfg, c, c.rows, c.max_text_len, (lh, lh), False)["update"]
  peak_flops, _ = devices.peak()
  r = grpo._finish(t, fl, peak_flops, {"compile_s": compile_s, "memory_analysis": mem})
  log(f"  update {t['median_s'] * 1e3:.1f} ms")
  peak = devices.peak_memory_bytes()
  on_accel = devices.memory_stats() is not None  # on CPU the peak is the process's RSS: no fit to report
  return {"update": r, "peak_memory_bytes": peak, "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
          "fits_80gb": peak <= H100_BYTES if on_accel else None, "fits_141gb": peak <= H200_BYTES if on_accel else None,
          "trajectories": c.rows, "image_size": c.image_size, "micro_batch": c.train.micro_batch or c.rows,
          "sde_steps": c.dm.steps, "device_memory_stats": devices.memory_stats(), "trace": traced}


def grpo_step(config, repeats: int, log=print) -> dict:
  """The trainer's own GRPO step phases (rollout, reward, update, step) at the real t2i size (bench/grpo.run);
  its flax init and per-phase compiles take minutes at real size on a GPU, hence not in the default sections."""
  from unirl_jax import run_config
  from unirl_jax.bench import devices, grpo
  from unirl_jax.rl.trainer import GRPOTrainer
  run_cfg = run_config.load(config)
  with tempfile.TemporaryDirectory() as wd:
    t0 = time.perf_counter()
    trainer = GRPOTrainer(run_cfg, wd)
    init_s = time.perf_counter() - t0
    log(f"  trainer built in {init_s:.1f} s")
    phases = grpo.run(trainer, repeats, log=log)
  return {"phases": phases, "init_s": init_s, "peak_memory_bytes": phases.pop("peak_memory_bytes")}


def torch_step(config, repeats: int, log=print) -> dict:
  """The whole t2i GRPO step against the PyTorch reference step at `config` (default configs/bench/mid.py), both
  in strict fp32 on the device (unirl_jax.bench.torch_step; diffusers must be installed)."""
  from unirl_jax.bench import torch_step as ts
  if config is None:
    from configs.bench import mid
    config = mid.get_config()
  return ts.compare_step(config, repeats, log=log)


def summary(out: dict) -> str:
  d, lines = out["device"], []
  lines.append(f"device: {d['device_kind']} x{d['device_count']} (datasheet bf16 {_f(d['peak_bf16_flops'], 1e-12)} "
               f"TFLOP/s, HBM {_f(d['peak_hbm_bytes_per_s'], 1e-12)} TB/s); jax {out['versions']['jax']}")
  lines += [f"{name}: FAILED (see the log)" for name in out.get("errors", {})]
  m = out.get("matmul")
  if m:
    lines.append(f"bf16 matmul {m['n']}^3: {m['flops_per_s'] / 1e12:.3g} TFLOP/s measured")
  for r in out.get("lm_decode", []):
    lines.append(f"LM decode, {r['rows']} rows x {r['new_tokens']} tokens after {r['prompt_tokens']}: "
                 f"{r['median_s'] * 1e3:.0f} ms, {r['tokens_per_s']:.0f} tokens/s, "
                 f"{_f(r['hbm_roofline_frac'], 100)}% of the HBM roofline (target >= 60%)")
  dm = out.get("dm_update")
  if dm:
    u = dm["update"]
    lines.append(f"DM update, {dm['image_size']} px, {dm['trajectories']} trajectories x {dm['sde_steps']} SDE steps in "
                 f"micro-batches of {dm['micro_batch']}: {u['median_s']:.2f} s, MFU {_f(u.get('mfu'), 100)}% "
                 f"(target >= 45%), compiled in {u['compile_s']:.0f} s")
    lines.append(f"peak device memory {_f(dm['peak_memory_bytes'], 1 / 2 ** 30)} GiB: fits 80 GB "
                 f"{dm['fits_80gb']}, fits 141 GB {dm['fits_141gb']}")
  ts = out.get("torch_step")
  if ts:
    lines.append(f"torch step ({ts['trajectories']} trajectories, fp32, torch on {ts['torch_device']}): JAX/torch "
                 + ", ".join(f"{k} {v:.2f}" for k, v in ts["ratio"].items()))
  st = out.get("grpo_step")
  if st:
    lines.append("GRPO step phases: " + ", ".join(f"{k} {v['median_s']:.2f} s" for k, v in st["phases"].items()
                                                  if isinstance(v, dict) and "median_s" in v))
  return "\n".join(lines)


def _f(x, scale=1.0):
  return "-" if x is None else f"{x * scale:.3g}"


def run(config, repeats: int = 3, sections=SECTIONS, log=print, save=lambda out: None,
        trace_dir: str | None = None, torch_config=None) -> dict:
  """Each section in turn; one that fails records its error and the rest still run (`save` after each)."""
  import traceback
  import jax
  from unirl_jax.bench import devices
  out = {"device": devices.describe(), "versions": devices.versions(), "commit": devices.commit(),
         "config": json.loads(config.to_json_best_effort())}
  log(f"device: {out['device']['device_kind']} x{out['device']['device_count']}")
  on_accel = jax.devices()[0].platform != "cpu"
  fns = {"matmul": lambda: matmul_rate(8192 if on_accel else 256, 20),
         "lm_decode": lambda: lm_decode(config, repeats, out["device"]["peak_hbm_bytes_per_s"], log),
         "dm_update": lambda: dm_update(config, repeats, log, trace_dir),
         "grpo_step": lambda: grpo_step(config, repeats, log),
         "torch_step": lambda: torch_step(torch_config, repeats, log)}
  for name in sections:
    fn = fns[name]
    t0 = time.perf_counter()
    try:
      out[name] = fn()
    except Exception as e:  # a report, not a training run: keep the other sections' numbers
      out.setdefault("errors", {})[name] = "".join(traceback.format_exception(e))[-4000:]
      log(f"{name} failed:\n{out['errors'][name]}")
    log(f"[{name}: {time.perf_counter() - t0:.0f} s]")
    save(out)
  return out


def _define_flags() -> dict:
  """The command's flags (defined only when run as a program: unirl_jax.bench's own share their names)."""
  F = {}
  F["json"] = flags.DEFINE_string("json", None, "write every number to this JSON file")
  F["config"] = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "..", "..", "configs", "bench", "unirl_zero_t2i.py"),
      "a bench config (configs/bench/*.py): its model preset, sizes and settings", lock_config=True)
  F["repeats"] = flags.DEFINE_integer("repeats", 3, "timed repeats per phase")
  F["sections"] = flags.DEFINE_multi_enum(
      "section", list(SECTIONS), list(SECTIONS) + ["grpo_step"],
      "what to run (repeat the flag); grpo_step: the trainer's whole step, slow to build")
  F["trace"] = flags.DEFINE_string("trace", None, "trace one more DM update with jax.profiler into this dir and "
                                   "print where its device time goes (unirl_jax.bench.trace_summary)")
  F["cache"] = flags.DEFINE_string(
      "compilation_cache", os.path.join(tempfile.gettempdir(), "unirl_jax_xla_cache"),
      "persistent XLA cache: the bench's update and the trainer's step compile once")
  return F


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax
  if FLAGS['cache'].value:
    jax.config.update("jax_compilation_cache_dir", FLAGS['cache'].value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  t0 = time.perf_counter()

  def save(out):
    out["wall_s"] = time.perf_counter() - t0
    if FLAGS['json'].value:
      with open(FLAGS['json'].value, "w") as f:
        json.dump(out, f, indent=1)

  out = run(FLAGS['config'].value, FLAGS['repeats'].value, tuple(FLAGS['sections'].value), save=save,
            trace_dir=FLAGS['trace'].value)
  print(summary(out))
  print(f"wall {out['wall_s']:.0f} s" + (f"; wrote {FLAGS['json'].value}" if FLAGS['json'].value else ""))
  if out.get("errors"):
    raise SystemExit(f"sections failed: {sorted(out['errors'])}")


if __name__ == "__main__":
  FLAGS = _define_flags()
  app.run(main)
