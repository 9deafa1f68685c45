"""`python -m unirl_jax.eval --ckpt DIR --benchmark geneval --prompts FILE.jsonl [--seeds 4] [--out DIR]`
(editing: `--benchmark edit --data EDITS.jsonl --clip CLIP_DIR`, unirl_jax.eval_edit; reasoning:
`--benchmark reasoning --data QUESTIONS.jsonl [--seeds K]`, unirl_jax.eval_reason).

GenEval on a unified checkpoint: every prompt record (GenEval metadata: tag, include, exclude) generated with
`--seeds` seeds as `python -m unirl_jax.generate` does, scored from the built-in shapes detector's detections
(`rewards.geneval`): per tag the mean partial credit (the training reward), the exact-count accuracy and
GenEval's accuracy; overall, the mean over tags (GenEval's convention). Writes DIR/results.json, one line per
image in DIR/images.jsonl, and the images, so a trained and an untrained checkpoint can be compared.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import numpy as np

BENCHMARKS = ("geneval", "edit", "reasoning")


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m unirl_jax.eval", description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True, help="unified checkpoint dir, or a training run's workdir (its final/)")
  p.add_argument("--benchmark", choices=BENCHMARKS, default="geneval")
  p.add_argument("--prompts", "--data", dest="prompts", required=True,
                 help="geneval: JSONL of GenEval records (python -m unirl_jax.data.shapes); edit: edit records "
                      "(.jsonl/.parquet, python -m unirl_jax.data.shape_edits); reasoning: question records "
                      "(.jsonl/.parquet, python -m unirl_jax.data.synthetic_questions)")
  p.add_argument("--out", required=True, help="directory for results.json, images.jsonl and the images")
  p.add_argument("--seeds", type=int, default=4, help="images per prompt (reasoning: K sampled completions)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--cfg", type=float, help="text guidance (default: geneval 3.5, edit 3.0 as the RL rollout)")
  p.add_argument("--ref-cfg", type=float, help="edit: reference guidance (default 1.0, as the RL rollout)")
  p.add_argument("--vit-size", type=int, default=56,
                 help="edit: the side the LM sees the source at (UniRL: 672); reasoning: an image question's")
  p.add_argument("--literal-vision-end", action="store_true",
                 help="edit: the original RL prompt's `<vision_end>` as text (a checkpoint trained with it)")
  p.add_argument("--clip", help="edit: the CLIP dir scoring direction and cycle (python -m convert clip, or "
                                 "python -m unirl_jax.clip_fit)")
  p.add_argument("--shift", type=float, default=3.0)
  p.add_argument("--batch", type=int, default=8, help="prompts per sampler call")
  p.add_argument("--size", type=int, help="image side (default: the DiT's sample size)")
  from unirl_jax.data import prompts as prompt_lib
  r = p.add_argument_group("reasoning")
  r.add_argument("--max-new-tokens", type=int, default=256)
  r.add_argument("--temperature", type=float, default=1.0, help="the K samples' (pass@1 is greedy)")
  r.add_argument("--top-k", type=int, default=50)
  r.add_argument("--top-p", type=float, default=1.0)
  r.add_argument("--template", default=prompt_lib.REASON, help="the user turn; {question} is the question")
  r.add_argument("--system", default=prompt_lib.SYSTEM)
  return p.parse_args(argv)


def summarize(rows: list[dict]) -> dict:
  """Per-image rows {tag, score, strict_correct, correct} -> per-tag means and the mean over tags."""
  by_tag = collections.defaultdict(list)
  for r in rows:
    by_tag[r["tag"]].append(r)
  tags = {t: {"n": len(rs), "score": float(np.mean([r["score"] for r in rs])),
              "strict_accuracy": float(np.mean([r["strict_correct"] for r in rs])),
              "accuracy": float(np.mean([r["correct"] for r in rs]))} for t, rs in sorted(by_tag.items())}
  overall = {k: float(np.mean([v[k] for v in tags.values()])) for k in ("score", "strict_accuracy", "accuracy")}
  return {"tags": tags, "overall": overall, "images": len(rows)}


def write_results(out: str, rows: list[dict], summary: dict, rows_file: str = "images.jsonl") -> None:
  """OUT/images.jsonl (one row per image; reasoning: completions.jsonl, one per question) and OUT/results.json
  (the summary), for every benchmark."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, rows_file), "w") as fh:
    fh.writelines(json.dumps(r) + "\n" for r in rows)
  with open(os.path.join(out, "results.json"), "w") as fh:
    json.dump(summary, fh, indent=1)


def main(argv=None) -> int:
  a = parse_args(argv)
  if a.benchmark == "geneval":
    return geneval_main(a)
  from unirl_jax import eval_edit, eval_reason, generate
  bench = eval_edit if a.benchmark == "edit" else eval_reason
  try:
    a.ckpt = generate.resolve_ckpt(a.ckpt)
    job = bench.prepare(a)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return bench.run(a, *job)


def geneval_main(a) -> int:
  from unirl_jax import generate
  from unirl_jax.data import prompts as prompt_lib
  from unirl_jax.models import unified
  try:
    a.ckpt = generate.resolve_ckpt(a.ckpt)
    a.cfg = 3.5 if a.cfg is None else a.cfg
    records = prompt_lib.read_prompt_file(a.prompts)
    missing = [i for i, r in enumerate(records) if "tag" not in r.metadata or "include" not in r.metadata]
    if missing:
      raise ValueError(f"{a.prompts}: record {missing[0] + 1} has no GenEval 'tag'/'include' metadata")
    if a.seeds < 1 or a.batch < 1 or a.steps < 1:
      raise ValueError(f"--seeds, --batch and --steps must be >= 1 (got {a.seeds}, {a.batch}, {a.steps})")
    with open(os.path.join(a.ckpt, "unified.json")) as f:
      cfg = unified.config_from_dict(json.load(f))
    size = generate.validate(
        argparse.Namespace(size=a.size, edit=None, reflect=False, steps=a.steps, seeds=a.seeds), cfg)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  import jax
  from PIL import Image

  from unirl_jax import chat
  from unirl_jax.data.pipeline import to_uint8
  from unirl_jax.rewards import geneval
  from unirl_jax.rewards.shapes import detect
  t0 = time.perf_counter()
  model, params = unified.load(a.ckpt)
  tok = chat.load_tokenizer(a.ckpt)
  f = model.config.vae.spatial_compression_ratio
  noise = generate.initial_noise(range(a.seed, a.seed + a.seeds), (size // f, size // f, model.config.vae.latent_channels))
  run = generate.sampler(model.config, "t2i", None, a.steps, a.shift, a.cfg, None)
  os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
  rows = []
  length = max(len(tok(prompt_lib.t2i(r.text), add_special_tokens=False)["input_ids"]) for r in records)
  for start in range(0, len(records), a.batch):
    batch = records[start:start + a.batch]
    texts = [r.text for r in batch] + [batch[-1].text] * (a.batch - len(batch))  # one compiled shape
    ids, mask = prompt_lib.encode(tok, [prompt_lib.t2i(t) for t in texts], length, None)
    images = to_uint8(jax.device_get(run(params, ids, mask, None, None, None, noise)))
    for i, rec in enumerate(batch):
      for s in range(a.seeds):
        img = images[i * a.seeds + s]
        res = geneval.evaluate(detect(img), {**rec.metadata, "prompt": rec.text})
        name = f"images/{start + i:05d}_{s}.png"
        Image.fromarray(img).save(os.path.join(a.out, name))
        rows.append({"prompt": rec.text, "tag": rec.metadata["tag"], "seed": a.seed + s, "image": name,
                     "score": res.score, "strict_correct": res.strict_correct, "correct": res.correct,
                     "reasons": list(res.reasons)})
  summary = {**summarize(rows), "ckpt": a.ckpt, "prompts": a.prompts, "seeds": a.seeds, "steps": a.steps,
             "cfg": a.cfg, "detector": "shapes", "seconds": time.perf_counter() - t0}
  write_results(a.out, rows, summary)
  print(f"{'tag':14s} {'n':>4s} {'score':>7s} {'strict':>7s} {'geneval':>7s}")
  for t, v in summary["tags"].items():
    print(f"{t:14s} {v['n']:4d} {v['score']:7.3f} {v['strict_accuracy']:7.3f} {v['accuracy']:7.3f}")
  o = summary["overall"]
  print(f"{'overall':14s} {len(rows):4d} {o['score']:7.3f} {o['strict_accuracy']:7.3f} {o['accuracy']:7.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
