"""`python -m unirl_jax.bench --config configs/bench/X.py [--json OUT.json] [--compare torch|torch-step] [--compile_only]`.

Times a GRPO step and each phase (warm-up excluded, compile time apart, median and spread over
`config.bench.repeats`), with analytic FLOPs, achieved FLOP/s and MFU against the device's bf16 peak.
`--compare torch` times the same component configs with the same weights in transformers/diffusers after
checking both sides compute the same outputs; `--compare torch-step` times the whole t2i GRPO step and each of its
phases against the PyTorch reference step (unirl_jax.bench.torch_step) after checking both give the same loss and
gradient on the same trajectories. `--compile_only` lowers and compiles the update on abstract
shapes (no weights: a real-size step on any host) and reports compile time and memory analysis; with
`--config.model.kernels=accelerator` it compiles the layers a GPU/TPU runs rather than the CPU forms.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "bench", "tiny.py"),
                                          "a bench config (configs/bench/*.py)", lock_config=True)
_JSON = flags.DEFINE_string("json", None, "write every number to this JSON file")
_COMPARE = flags.DEFINE_enum("compare", None, ["torch", "torch-step"],
                             "torch: also time the PyTorch component references; torch-step: the whole t2i GRPO "
                             "step against the PyTorch reference step, phase by phase, same weights")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "only lower + compile the update on abstract shapes")


def _fmt(x, scale=1.0, unit=""):
  return "-" if x is None else f"{x * scale:.3g}{unit}"


def table(phases: dict) -> str:
  rows = ["phase          median ms   spread   compile s   GFLOP/s      MFU   throughput"]
  for name, r in phases.items():
    if not isinstance(r, dict):
      continue
    thr = ", ".join(f"{r[k]:.4g} {k.replace('_per_s', '/s')}" for k in
                    ("tokens_per_s", "denoise_steps_per_s", "images_per_s") if k in r)
    rows.append(f"{name:13s} {r['median_s'] * 1e3:10.2f} {r['spread']:8.2f} {_fmt(r.get('compile_s')):>11s} "
                f"{_fmt(r.get('flops_per_s'), 1e-9):>9s} {_fmt(r.get('mfu'), 100, '%'):>8s}   {thr}")
  return "\n".join(rows)


def run(config, compare: str | None = None, compile_only: bool = False, log=print) -> dict:
  from unirl_jax import run_config
  from unirl_jax.bench import devices, grpo
  out = {"device": devices.describe(), "versions": devices.versions(), "commit": devices.commit(),
         "config": json.loads(config.to_json_best_effort())}
  log(f"device: {out['device']['device_kind']} x{out['device']['device_count']}")
  if compile_only:
    out["compile_only"] = grpo.compile_update(config)
    log(f"update: lowered in {out['compile_only']['lower_s']:.1f} s, compiled in "
        f"{out['compile_only']['compile_s']:.1f} s; memory_analysis {out['compile_only']['memory_analysis']}")
    return out
  if compare == "torch-step":  # its own trainer, on the torch reference's converted weights
    from unirl_jax.bench import torch_step
    out["compare_torch_step"] = r = torch_step.compare_step(config, config.bench.repeats, log=log)
    out["step_ratio"] = r["step_ratio"]
    log(torch_step.format_table(r))
    return out
  from unirl_jax.rl.trainer import GRPOTrainer
  run_cfg = run_config.load(config)
  with tempfile.TemporaryDirectory() as wd:
    trainer = GRPOTrainer(run_cfg, wd)
    out["phases"] = grpo.run(trainer, run_cfg.bench.repeats, log=log)
  out["peak_memory_bytes"] = out["phases"].pop("peak_memory_bytes")
  log(table(out["phases"]))
  if compare == "torch":
    from unirl_jax.bench import torch_compare
    out["compare_torch"] = torch_compare.compare_all(compare_spec(config))
    log(torch_compare.format_table(out["compare_torch"]))
  return out


def compare_spec(config) -> dict:
  """The unified model's own component configs at the bench's batch sizes (SANA without UniRL's reference
  branch, which diffusers lacks)."""
  from unirl_jax import run_config, train_state
  from unirl_jax.models import unified
  config = run_config.load(config)
  knobs = {**train_state.execution_knobs(config.model), "dtype": "float32"}
  cfg = unified.with_execution(getattr(unified, config.model.init.split(":", 1)[1])(), **knobs)
  rows = config.rows
  lh = config.image_size // cfg.vae.spatial_compression_ratio
  b = config.bench
  return {"sana": (cfg.dit.replace(ref_branch=False), rows, (lh, lh), cfg.num_queries),
          "dc_ae": (cfg.vae, rows, (lh, lh)),
          "qwen": (cfg.lm, b.compare_lm_batch, config.max_text_len, b.new_tokens),
          "repeats": b.repeats}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  out = run(_CONFIG.value, _COMPARE.value, _COMPILE_ONLY.value)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(out, f, indent=1)
    print(f"wrote {_JSON.value}")


if __name__ == "__main__":
  app.run(main)
