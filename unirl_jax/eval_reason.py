"""`python -m unirl_jax.eval --benchmark reasoning --ckpt DIR --data QUESTIONS.jsonl --out DIR [--seeds K]`.

The reasoning scenarios' scores on held-out question records (unirl_jax.data.questions), with the training
rewards' rules (unirl_jax.rewards.reasoning): pass@1 = the accuracy of the greedy completion, mean@K = the mean
accuracy of K sampled completions (`--temperature`, `--top-k`, `--top-p`), and the format rate of each, overall
and per record `kind`. Prompts as the task builds them (`--template`, `--system`, `--vit-size` for image
questions). Writes DIR/results.json and DIR/completions.jsonl (one line per question).
"""

from __future__ import annotations

import collections
import json
import os
import time

import numpy as np

KEYS = ("pass@1", "mean@k", "format", "format@k")


def summarize(rows: list[dict]) -> dict:
  """Per-question rows -> the means of KEYS overall and per kind."""
  by_kind = collections.defaultdict(list)
  for r in rows:
    by_kind[r["kind"]].append(r)
  mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in KEYS}
  return {"overall": mean(rows), "kinds": {k: {"n": len(rs), **mean(rs)} for k, rs in sorted(by_kind.items())},
          "questions": len(rows)}


def prepare(a) -> tuple:
  """Checks the flags and reads the questions before anything loads -> (records, cfg)."""
  from unirl_jax.data import questions
  from unirl_jax.data.records import DataError
  from unirl_jax.models import unified
  if a.seeds < 1 or a.batch < 1 or a.max_new_tokens < 1:
    raise ValueError(f"--seeds, --batch and --max-new-tokens must be >= 1 (got {a.seeds}, {a.batch}, "
                     f"{a.max_new_tokens})")
  if a.temperature <= 0:
    raise ValueError(f"--temperature must be > 0 (pass@1 is greedy already), got {a.temperature}")
  if "{question}" not in a.template:
    raise ValueError(f"--template {a.template!r} has no {{question}} field")
  try:
    records = questions.read_question_file(a.prompts)
  except DataError as e:
    raise ValueError(str(e)) from None
  if len({"image" in r.metadata for r in records}) > 1:
    raise ValueError(f"{a.prompts}: the questions must all carry an image or none")
  with open(os.path.join(a.ckpt, "unified.json")) as f:
    cfg = unified.config_from_dict(json.load(f))
  unit = cfg.lm.vision.patch_size * cfg.lm.vision.spatial_merge_size
  if "image" in records[0].metadata and (a.vit_size <= 0 or a.vit_size % unit):
    raise ValueError(f"--vit-size {a.vit_size} must be a positive multiple of {unit} (the ViT's patch x merge)")
  return records, cfg


def run(a, records, cfg) -> int:
  """a: the parsed `unirl_jax.eval` flags (ckpt resolved), and what `prepare` returned."""
  import jax

  from unirl_jax import chat, rewards
  from unirl_jax.data.pipeline import ImageSpec
  from unirl_jax.eval import write_results
  from unirl_jax.models import unified
  from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
  from unirl_jax.rewards import RewardInputs
  from unirl_jax.rl.losses import completion_mask
  from unirl_jax.scenarios.reason import decode, prompt_texts, question_prompts

  t0 = time.perf_counter()
  model, params = unified.load(a.ckpt)
  tok = chat.load_tokenizer(a.ckpt)
  lmc = cfg.lm
  v = lmc.vision
  spec = ImageSpec(a.vit_size, a.vit_size, v.patch_size, v.spatial_merge_size) \
      if "image" in records[0].metadata else None
  special = dict(max_new_tokens=a.max_new_tokens, eos_token_ids=tuple(lmc.eos_token_id), pad_token_id=lmc.pad_token_id)
  greedy = Sampler(model.lm, SamplingConfig(greedy=True, **special))
  sampled = Sampler(model.lm, SamplingConfig(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, **special))
  length = max(len(tok(t, add_special_tokens=False)["input_ids"])
               for t in prompt_texts(records, a.template, a.system, spec))  # one compiled prompt length

  def complete(sampler, recs, k: int, rng):
    ids, mask, pv = question_prompts(tok, recs, a.template, a.system, spec, length, None)
    ids, mask = np.repeat(ids, k, axis=0), np.repeat(mask, k, axis=0)
    grid = None
    if pv is not None:
      pv = np.repeat(pv, k, axis=0).reshape(-1, pv.shape[-1])
      grid = np.asarray([spec.vit_grid] * len(ids))
    out = jax.device_get(sampler(params["lm"], ids, mask, pv, grid, rng=rng))
    return decode(tok, out["tokens"], completion_mask(out["tokens"], lmc.eos_token_id))[0]

  def score(recs, texts, k: int):
    x = RewardInputs(None, [r.text for r in recs for _ in range(k)], texts,
                     [r.metadata for r in recs for _ in range(k)])
    return rewards.get("accuracy")(x).reshape(-1, k), rewards.get("think_format")(x).reshape(-1, k)

  rows = []
  for start in range(0, len(records), a.batch):
    batch = records[start:start + a.batch]
    padded = batch + [batch[-1]] * (a.batch - len(batch))  # one compiled shape
    rng = jax.random.fold_in(jax.random.PRNGKey(a.seed), start)
    g_text = complete(greedy, padded, 1, rng)
    s_text = complete(sampled, padded, a.seeds, rng)
    g_acc, g_fmt = score(padded, g_text, 1)
    s_acc, s_fmt = score(padded, s_text, a.seeds)
    for i, rec in enumerate(batch):
      rows.append({"question": rec.text, "answer": rec.metadata["answer"], "kind": rec.metadata.get("kind", "all"),
                   "origin": rec.metadata["origin"], "greedy": g_text[i],
                   "samples": s_text[i * a.seeds:(i + 1) * a.seeds], "pass@1": float(g_acc[i, 0]),
                   "mean@k": float(s_acc[i].mean()), "format": float(g_fmt[i, 0]), "format@k": float(s_fmt[i].mean())})
  summary = {**summarize(rows), "ckpt": a.ckpt, "data": a.prompts, "k": a.seeds, "temperature": a.temperature,
             "top_k": a.top_k, "top_p": a.top_p, "max_new_tokens": a.max_new_tokens, "template": a.template,
             "system": a.system, "vit_size": a.vit_size if spec is not None else None,
             "seconds": time.perf_counter() - t0}
  write_results(a.out, rows, summary, rows_file="completions.jsonl")
  print(f"{'kind':10s} {'n':>4s} {'pass@1':>7s} {'mean@k':>7s} {'format':>7s} {'fmt@k':>7s}")
  for k, s in list(summary["kinds"].items()) + [("overall", {"n": len(rows), **summary["overall"]})]:
    print(f"{k:10s} {s['n']:4d} " + " ".join(f"{s[x]:7.3f}" for x in KEYS))
  return 0
