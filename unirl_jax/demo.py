"""`python -m unirl_jax.demo [--workdir workdir/demo]`: the GenEval-on-shapes scenario end to end on CPU.

1. The cold start (configs/pretrain_geneval_tiny.py): a tiny unified model pretrained on multi-object shape
   scenes; reused when WORKDIR/cold_start/final exists, so a second run skips it.
2. GenEval on the held-out prompts before RL (`python -m unirl_jax.eval`).
3. GRPO with the GenEval partial-credit reward (configs/t2i_geneval_tiny.py), printing progress.
4. GenEval on the same prompts and seeds after RL, and a summary: WORKDIR/summary.md (per-tag before -> after),
   WORKDIR/grpo/reward_curve.png and WORKDIR/before_after.png (the same held-out prompts and noise, before RL
   on the left, after on the right).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m unirl_jax.demo", description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default="workdir/demo")
  p.add_argument("--grpo-steps", type=int, default=0, help="GRPO steps (default: the config's)")
  p.add_argument("--pretrain-steps", type=int, default=0, help="cold-start steps (default: the config's)")
  p.add_argument("--vae-fit-steps", type=int, default=0, help="cold-start DC-AE fit steps (default: the config's)")
  p.add_argument("--grpo", action="append", default=[], metavar="KEY=VALUE",
                 help="a GRPO config override (configs/t2i_geneval_tiny.py), e.g. --grpo dm.steps=4; repeatable")
  p.add_argument("--eval-prompts", type=int, default=48, help="held-out prompts scored before and after")
  p.add_argument("--seeds", type=int, default=4, help="images per held-out prompt")
  p.add_argument("--eval-steps", type=int, default=20, help="ODE denoising steps of the evaluation")
  return p.parse_args(argv)


def _parse(config: str, overrides: list[str]):
  from unirl_jax import train
  return train.parse(["demo", f"--config={os.path.join(CONFIGS, config)}", *overrides])[0]


def _train(config: str, workdir: str, overrides: list[str]) -> None:
  from unirl_jax import train
  train.run(_parse(config, overrides), workdir)


def _eval(ckpt: str, prompts: str, out: str, seeds: int, steps: int) -> dict:
  from unirl_jax import eval as eval_lib
  argv = ["--ckpt", ckpt, "--prompts", prompts, "--out", out, "--seeds", str(seeds), "--steps", str(steps)]
  if eval_lib.main(argv):
    raise SystemExit(f"evaluation of {ckpt} failed")
  return json.load(open(os.path.join(out, "results.json")))


def before_after_grid(before: str, after: str, out: str, rows: int = 12) -> None:
  """The first seed's image of the first `rows` held-out prompts (the tags in turn), before RL (left) and after
  (right), from eval's outputs (same prompts, same noise)."""
  import numpy as np
  from PIL import Image
  recs = [json.loads(line) for line in open(os.path.join(before, "images.jsonl"))]
  first_seed = min(r["seed"] for r in recs)
  names = [r["image"] for r in recs if r["seed"] == first_seed][:rows]
  load = lambda d, n: np.asarray(Image.open(os.path.join(d, n)).convert("RGB"))
  pairs = []
  for n in names:
    b, f = load(before, n), load(after, n)
    pairs.append(np.concatenate([b, np.full((b.shape[0], 2, 3), 255, np.uint8), f], axis=1))
  Image.fromarray(np.concatenate(pairs, axis=0)).save(out)


def summary_table(before: dict, after: dict) -> str:
  """Per tag and overall: partial credit (the training reward), strict accuracy (exact counts), GenEval's."""
  keys = ("score", "strict_accuracy", "accuracy")
  lines = ["| tag | partial credit before -> after | strict before -> after | GenEval accuracy before -> after |",
           "|---|---|---|---|"]
  rows = [(tag, before["tags"][tag], after["tags"][tag]) for tag in sorted(before["tags"])]
  for tag, b, a in rows + [("**overall**", before["overall"], after["overall"])]:
    lines.append(f"| {tag} | " + " | ".join(f"{b[k]:.3f} -> {a[k]:.3f}" for k in keys) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  from unirl_jax import run_config
  try:
    return _main(parse_args(argv))
  except run_config.ConfigError as e:  # e.g. --grpo dm.stepz=3: one line naming the key, as train's CLI
    print(f"error: {e}", file=sys.stderr)
    return 2


def _main(a) -> int:
  t0 = time.perf_counter()
  cold, grpo = os.path.join(a.workdir, "cold_start"), os.path.join(a.workdir, "grpo")
  data = os.path.join(cold, "synthetic_data")
  overrides = [f"--config.model.init={os.path.join(cold, 'final')}",
               f"--config.prompt_file={os.path.join(data, 'train_prompts.jsonl')}"]
  if a.grpo_steps:
    overrides.append(f"--config.train.total_steps={a.grpo_steps}")
  overrides += [f"--config.{kv}" for kv in a.grpo]
  _parse("t2i_geneval_tiny.py", overrides)  # a bad override fails now, not after the cold start
  if os.path.exists(os.path.join(cold, "final", "unified.json")):
    print(f"[1/4] cold start: reusing {cold}/final")
  else:
    print(f"[1/4] cold start: pretraining a tiny unified model on shape scenes into {cold}")
    steps = [f"--config.train.total_steps={a.pretrain_steps}"] if a.pretrain_steps else []
    steps += [f"--config.model.vae_fit_steps={a.vae_fit_steps}"] if a.vae_fit_steps else []
    _train("pretrain_geneval_tiny.py", cold, steps)
  held_out = os.path.join(a.workdir, "eval_prompts.jsonl")
  with open(os.path.join(data, "eval_prompts.jsonl")) as f, open(held_out, "w") as out:
    out.writelines(f.readlines()[:a.eval_prompts])
  print(f"[2/4] GenEval before RL ({a.eval_prompts} held-out prompts x {a.seeds} seeds)")
  before = _eval(os.path.join(cold, "final"), held_out, os.path.join(a.workdir, "eval_before"), a.seeds, a.eval_steps)
  print("[3/4] GRPO with the GenEval reward (configs/t2i_geneval_tiny.py)")
  _train("t2i_geneval_tiny.py", grpo, overrides)
  print("[4/4] GenEval after RL")
  after = _eval(os.path.join(grpo, "final"), held_out, os.path.join(a.workdir, "eval_after"), a.seeds, a.eval_steps)
  before_after_grid(os.path.join(a.workdir, "eval_before"), os.path.join(a.workdir, "eval_after"),
                    os.path.join(a.workdir, "before_after.png"))
  table = summary_table(before, after)
  with open(os.path.join(a.workdir, "summary.md"), "w") as f:
    f.write(f"{table}\n\nwall time {time.perf_counter() - t0:.0f} s\n")
  print(f"\n{table}\n\nreward curve {grpo}/reward_curve.png, samples {grpo}/samples/, "
        f"before/after {a.workdir}/before_after.png ({time.perf_counter() - t0:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
