"""`python -m unirl_jax.eval --benchmark edit --ckpt DIR --data EDITS.jsonl --clip CLIP_DIR --out DIR`.

The editing scenario's scores on held-out edit records (unirl_jax.data.edits: image, prompt, reverse_prompt,
caption, target_caption): each source edited with `--seeds` seeds as `python -m unirl_jax.generate --edit` does
(Euler, three-way CFG; by default the RL rollout's text 3.0 / reference 1.0), each edit reversed with the record's
reverse instruction, and scored with the training rewards: CLIP direction (source -> edit against caption ->
target caption) and the cycle's CLIP image similarity (reconstruction vs source), overall and per edit kind.
Writes DIR/results.json, DIR/images.jsonl, the images, and DIR/triplets.png (source | edit | reconstruction).
"""

from __future__ import annotations

import collections
import json
import os
import time

import numpy as np

EDIT_CFG, EDIT_REF_CFG = 3.0, 1.0  # the original's editing rollout


def summarize(rows: list[dict]) -> dict:
  """Per-image rows {kind, direction, cycle} -> the means overall and per kind."""
  mean = lambda rs, k: float(np.mean([r[k] for r in rs]))
  by_kind = collections.defaultdict(list)
  for r in rows:
    by_kind[r["kind"]].append(r)
  kinds = {k: {"n": len(rs), "direction": mean(rs, "direction"), "cycle": mean(rs, "cycle")}
           for k, rs in sorted(by_kind.items())}
  return {"overall": {"direction": mean(rows, "direction"), "cycle": mean(rows, "cycle")}, "kinds": kinds,
          "images": len(rows)}


def prepare(a) -> tuple:
  """Checks the flags before anything loads -> (records, cfg, size); a bad one is a ValueError naming it."""
  import argparse

  from unirl_jax import generate
  from unirl_jax.data import edits as edit_lib
  from unirl_jax.data.records import DataError
  from unirl_jax.models import unified
  if not a.clip or not os.path.exists(os.path.join(a.clip, "config.json")):
    raise ValueError(f"--benchmark edit scores with CLIP: --clip {a.clip!r} is not a CLIP dir (no config.json)")
  if a.seeds < 1 or a.batch < 1 or a.steps < 1:
    raise ValueError(f"--seeds, --batch and --steps must be >= 1 (got {a.seeds}, {a.batch}, {a.steps})")
  try:
    records = edit_lib.read_edit_file(a.prompts)
  except DataError as e:
    raise ValueError(str(e)) from None
  with open(os.path.join(a.ckpt, "unified.json")) as f:
    cfg = unified.config_from_dict(json.load(f))
  size = generate.validate(
      argparse.Namespace(size=a.size, edit=None, reflect=False, steps=a.steps, seeds=a.seeds), cfg)
  unit = cfg.lm.vision.patch_size * cfg.lm.vision.spatial_merge_size
  if a.vit_size <= 0 or a.vit_size % unit:
    raise ValueError(f"--vit-size {a.vit_size} must be a positive multiple of {unit} (the ViT's patch x merge)")
  return records, cfg, size


def run(a, records, cfg, size) -> int:
  """a: the parsed `unirl_jax.eval` flags (ckpt resolved), and what `prepare` returned."""
  import jax
  from PIL import Image

  from unirl_jax import chat, generate
  from unirl_jax.eval import write_results
  from unirl_jax.data import prompts as prompt_lib
  from unirl_jax.data.pipeline import (ImageSpec, edit_texts, square, to_uint8, to_unit_range, vit_patches,
                                       vit_processor)
  from unirl_jax.data.records import open_image
  from unirl_jax.models import unified
  from unirl_jax.rewards import RewardInputs
  from unirl_jax.rewards import clip as clip_rewards

  t0 = time.perf_counter()
  direction = clip_rewards.reward("clip_direction", a.clip)
  similarity = clip_rewards.reward("clip_image_similarity", a.clip)
  model, params = unified.load(a.ckpt)
  tok = chat.load_tokenizer(a.ckpt)
  v = cfg.lm.vision
  spec = ImageSpec(size, a.vit_size, v.patch_size, v.spatial_merge_size)
  vit = vit_processor(spec)
  f = cfg.vae.spatial_compression_ratio
  noise = generate.initial_noise(range(a.seed, a.seed + a.seeds), (size // f, size // f, cfg.vae.latent_channels))
  ref_keys = np.stack([np.asarray(jax.random.fold_in(jax.random.PRNGKey(s), 1)) for s in range(a.seed, a.seed + a.seeds)])
  scale = EDIT_CFG if a.cfg is None else a.cfg
  ref_scale = EDIT_REF_CFG if a.ref_cfg is None else a.ref_cfg
  samplers = {}

  length = max(len(tok(t, add_special_tokens=False)["input_ids"])
               for r in records for t in edit_texts([r.text, r.metadata["reverse_prompt"]], spec, a.literal_vision_end))

  def edit(instructions, images, n_seeds: int):
    """Each (instruction, PIL image) -> its `n_seeds` edits (the first n_seeds seeds), row i · n_seeds + s."""
    ids, mask = prompt_lib.encode(tok, edit_texts(instructions, spec, a.literal_vision_end), length,
                                None)
    pv = vit_patches(images, spec, vit)
    pv = pv.reshape(-1, pv.shape[-1])
    src = np.stack([to_unit_range(square(im, size)) for im in images])
    key = (len(images), n_seeds)
    if key not in samplers:
      samplers[key] = generate.sampler(cfg, "i2i", tuple(spec.vit_grid for _ in images), a.steps, a.shift, scale,
                                       ref_scale)
    return to_uint8(jax.device_get(samplers[key](params, ids, mask, pv, src, ref_keys[:n_seeds], noise[:n_seeds])))
  os.makedirs(os.path.join(a.out, "images"), exist_ok=True)
  rows, triplets = [], []
  for start in range(0, len(records), a.batch):
    batch = records[start:start + a.batch]
    batch = batch + [batch[-1]] * (a.batch - len(batch))  # one compiled shape
    sources = [open_image(r.metadata["image"], r.metadata["origin"]).convert("RGB") for r in batch]
    edited = edit([r.text for r in batch], sources, a.seeds)  # (batch * seeds)
    rev = [r.metadata["reverse_prompt"] for r in batch for _ in range(a.seeds)]
    recon = edit(rev, [Image.fromarray(x) for x in edited], 1)  # one reconstruction per edit
    src_u8 = np.repeat(np.stack([np.asarray(square(im, size)) for im in sources]), a.seeds, axis=0)
    meta = [r.metadata for r in batch for _ in range(a.seeds)]
    inputs = RewardInputs(edited, rev, None, meta, sources=src_u8, reconstructions=recon)
    d, c = direction(inputs), similarity(inputs)
    for i, rec in enumerate(batch[:len(records) - start]):
      for s in range(a.seeds):
        j = i * a.seeds + s
        names = {k: f"images/{start + i:05d}_{s}_{k}.png" for k in ("edit", "recon")}
        Image.fromarray(edited[j]).save(os.path.join(a.out, names["edit"]))
        Image.fromarray(recon[j]).save(os.path.join(a.out, names["recon"]))
        rows.append({"instruction": rec.text, "reverse_instruction": rec.metadata["reverse_prompt"],
                     "kind": rec.metadata.get("kind", "all"), "seed": a.seed + s, "origin": rec.metadata["origin"],
                     **names, "direction": float(d[j]), "cycle": float(c[j])})
        if s == 0 and len(triplets) < 16:
          triplets.append(np.concatenate([src_u8[j], edited[j], recon[j]], axis=1))
  summary = {**summarize(rows), "ckpt": a.ckpt, "data": a.prompts, "clip": a.clip, "seeds": a.seeds,
             "steps": a.steps, "cfg": scale, "ref_cfg": ref_scale, "vit_size": a.vit_size,
             "literal_vision_end": a.literal_vision_end,
             "seconds": time.perf_counter() - t0}
  write_results(a.out, rows, summary)
  Image.fromarray(np.concatenate(triplets, axis=0)).save(os.path.join(a.out, "triplets.png"))
  print(f"{'kind':10s} {'n':>4s} {'direction':>9s} {'cycle':>7s}")
  for k, s in summary["kinds"].items():
    print(f"{k:10s} {s['n']:4d} {s['direction']:9.3f} {s['cycle']:7.3f}")
  o = summary["overall"]
  print(f"{'overall':10s} {len(rows):4d} {o['direction']:9.3f} {o['cycle']:7.3f}")
  return 0
