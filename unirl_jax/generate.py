"""Text-to-image and editing with a unified checkpoint: `python -m unirl_jax.generate --ckpt DIR --prompt TEXT ...`.

Text-to-image: the prompt in UniRL's inference chat format -> LM + t2i queries -> connector -> two-way CFG
(null = zeros) Euler sampling over the shift-3 flow-matching schedule -> DC-AE decode. Editing (`--edit SRC`):
the LM also sees SRC through the vision tower at --vit-size² (UniRL: 672², 576 tokens), the DiT gets its noisy
VAE latents 0.8·z + 0.2·ε as the reference, and guidance is three-way (--cfg text, --ref-cfg reference).

Reflection (`--reflect`): image 1 from the prompt, then the LM sees it at --vit-size² with the prompt and
judges it greedily (`<judge>yes|no</judge>`, docs/scenarios.md); after a no, image 2 from its revised prompt
(`<answer>`; the prompt again without one). The grid then has one row per (prompt, seed): image 1, final image;
OUT with .json holds each row's judge text, judgement and revision.

Several prompts and/or seeds give a grid: one row per prompt, one column per seed. Seed s draws the initial
latents as normal(PRNGKey(s), (H/f, W/f, C)), the editing reference noise from fold_in(PRNGKey(s), 1) and
reflection's image-2 latents from fold_in(PRNGKey(s), 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from unirl_jax.data.pipeline import square, to_uint8, to_unit_range

UNIRL_VIT_SIZE = 672


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m unirl_jax.generate", description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True,
                 help="unified checkpoint dir (`python -m convert unirl`), or a training run's workdir (its final/)")
  p.add_argument("--prompt", action="append", required=True, help="caption, or edit instruction; repeatable")
  p.add_argument("--edit", metavar="SRC", help="source image to edit")
  p.add_argument("--reflect", action="store_true", help="judge image 1 with the LM and regenerate after a no")
  p.add_argument("--max-new-tokens", type=int, default=256, help="the judge's token budget (--reflect)")
  p.add_argument("--out", required=True, help="PNG to write")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--cfg", type=float, default=3.5, help="text guidance scale")
  p.add_argument("--ref-cfg", type=float, default=1.2, help="reference guidance scale (editing)")
  p.add_argument("--shift", type=float, default=3.0, help="flow-matching schedule shift")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--seeds", type=int, default=1, help="images per prompt, seeds seed..seed+N-1")
  p.add_argument("--size", type=int, help="output side in pixels (default: the DiT's sample size)")
  p.add_argument("--vit-size", type=int, default=UNIRL_VIT_SIZE, help="side of the image the LM sees (editing)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
  return p.parse_args(argv)




def tile(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
  """(rows * cols, H, W, 3) in row-major order -> one (rows * H, cols * W, 3) grid."""
  _, h, w, c = images.shape
  return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def initial_noise(seeds, shape: tuple):
  import jax
  return np.stack([np.asarray(jax.random.normal(jax.random.PRNGKey(s), shape)) for s in seeds])


def sampler(cfg, task: str, grid, steps: int, shift: float, scale: float, ref_scale):
  """One jitted function (params, ids, mask, pixel_values, src, ref_keys, noise) -> images in [-1, 1], row
  p · seeds + s for prompt p and seed s: the caption K/V of every CFG branch once
  (`UnifiedModel.guidance_context`), then the Euler loop. Editing: `src` (1 or prompts, H, W, 3) in [-1, 1], its
  reference noise drawn per seed from `ref_keys` (seeds, 2)."""
  import jax
  import jax.numpy as jnp

  from unirl_jax.diffusion.sampler import Guidance, euler_sample
  from unirl_jax.diffusion.schedule import FlowMatchSchedule
  from unirl_jax.models.unified import UnifiedModel
  model = UnifiedModel(cfg)
  sigmas, timesteps = FlowMatchSchedule(shift=shift).set_timesteps(steps)
  guidance = Guidance(scale, ref_scale if task == "i2i" else None)
  grid = None if grid is None else np.asarray(grid)

  @jax.jit
  def run(params, ids, mask, pixel_values, src, ref_keys, noise):
    cond = model.condition(params, ids, mask, pixel_values, grid, task=task)
    per_prompt = noise.shape[0]
    cond = jnp.repeat(cond, per_prompt, axis=0)  # row p * seeds + s
    ref = None
    if src is not None:  # one source for every prompt, or one per prompt
      z = model.encode(params, src)
      ref = jax.vmap(lambda zi: jax.vmap(lambda k: model.noisy_reference(zi, k))(ref_keys))(z)  # (n, seeds, ...)
      ref = jnp.broadcast_to(ref, (ids.shape[0],) + ref.shape[1:]).reshape((-1,) + ref.shape[2:])
    ctx = model.guidance_context(params["dit"], cond, guidance)
    velocity = model.guided_velocity(params["dit"], ctx, guidance, ref_latents=ref)
    x = euler_sample(velocity, jnp.tile(noise, (ids.shape[0], 1, 1, 1)), sigmas, timesteps)
    return model.decode(params, x).astype(jnp.float32)

  return run


def tokenize(tok, texts):
  tok.padding_side = "left"
  enc = tok(list(texts), padding=True, return_tensors="np", add_special_tokens=False)
  return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


def edit_inputs(ckpt: str, cfg, path: str, instructions, vit_size: int, size: int):
  """Prompts with the source's image tokens, its pixel values (one copy per prompt), grid, and VAE input."""
  from PIL import Image

  from unirl_jax import chat, tokenizer as tok_lib
  from unirl_jax.data import prompts
  image = Image.open(path)
  proc = chat.image_processor(ckpt, max_pixels=vit_size * vit_size)
  out = proc(images=[square(image, vit_size)], return_tensors="np")
  pv, grid = np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"])
  texts = [tok_lib.expand_image_tokens(prompts.edit(i), grid, cfg.lm.vision.spatial_merge_size) for i in instructions]
  n = len(instructions)
  src = to_unit_range(square(image, size))[None]
  return texts, np.concatenate([pv] * n), np.repeat(grid, n, axis=0), src


def resolve_ckpt(path: str) -> str:
  """A unified checkpoint dir, or a training workdir holding one in final/ (written when a run completes)."""
  for cand in (path, os.path.join(path, "final")):
    if os.path.exists(os.path.join(cand, "unified.json")):
      return cand
  if os.path.isdir(os.path.join(path, "checkpoints")):
    raise FileNotFoundError(f"{path} is a training workdir without final/ (the run has not completed; it writes "
                            f"final/ at its last step)")
  raise FileNotFoundError(f"{path} has no unified.json (write one with `python -m convert unirl`) and no final/")


def validate(args, cfg) -> int:
  """-> the output size; raises ValueError on a bad flag."""
  f = cfg.vae.spatial_compression_ratio * cfg.dit.patch_size
  size = args.size or cfg.dit.sample_size * cfg.vae.spatial_compression_ratio
  if size <= 0 or size % f:
    raise ValueError(f"--size {size} must be a positive multiple of {f} (the VAE's spatial compression "
                     f"{cfg.vae.spatial_compression_ratio} x the DiT's patch size {cfg.dit.patch_size})")
  v = cfg.lm.vision
  unit = v.patch_size * v.spatial_merge_size
  if args.edit and args.reflect:
    raise ValueError("--reflect and --edit do not combine")
  if args.reflect and args.max_new_tokens < 1:
    raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
  if (args.edit or args.reflect) and (args.vit_size <= 0 or args.vit_size % unit):
    raise ValueError(f"--vit-size {args.vit_size} must be a positive multiple of {unit} (the ViT's patch x merge)")
  if args.steps < 1 or args.seeds < 1:
    raise ValueError(f"--steps and --seeds must be >= 1 (got {args.steps}, {args.seeds})")
  if args.edit and not os.path.isfile(args.edit):
    raise FileNotFoundError(f"--edit {args.edit}: no such file")
  return size


def main(argv=None) -> int:
  args = parse_args(argv)
  from unirl_jax.models import unified
  try:
    args.ckpt = resolve_ckpt(args.ckpt)
    with open(os.path.join(args.ckpt, "unified.json")) as f:
      size = validate(args, unified.config_from_dict(json.load(f)))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  import jax

  from unirl_jax import chat
  from unirl_jax.data import prompts
  from unirl_jax.models.qwen2_5_vl import grid_tuple
  t0 = time.perf_counter()
  model, params = unified.load(args.ckpt, dtype=args.dtype)
  cfg = model.config
  tok = chat.load_tokenizer(args.ckpt)
  pv = grid = src = ref_keys = None
  if args.edit:
    try:
      texts, pv, grid, src = edit_inputs(args.ckpt, cfg, args.edit, args.prompt, args.vit_size, size)
    except OSError as e:
      print(f"error: --edit {args.edit}: {e}", file=sys.stderr)
      return 2
  else:
    texts = [prompts.t2i(p) for p in args.prompt]
  ids, mask = tokenize(tok, texts)
  if ids.max() >= cfg.lm.text.vocab_size:
    print(f"error: token id {ids.max()} outside the LM's {cfg.lm.text.vocab_size}-row vocabulary (the checkpoint "
          "needs its own tokenizer files)", file=sys.stderr)
    return 2
  seeds = range(args.seed, args.seed + args.seeds)
  f = cfg.vae.spatial_compression_ratio
  noise = initial_noise(seeds, (size // f, size // f, cfg.vae.latent_channels))
  if args.edit:
    ref_keys = np.stack([np.asarray(jax.random.fold_in(jax.random.PRNGKey(s), 1)) for s in seeds])
  run = sampler(cfg, "i2i" if args.edit else "t2i", grid_tuple(grid), args.steps, args.shift, args.cfg,
                args.ref_cfg if args.edit else None)
  images = to_uint8(jax.device_get(run(params, ids, mask, pv, src, ref_keys, noise)))
  out = tile(images, len(args.prompt), args.seeds)
  from PIL import Image
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  if args.reflect:
    rows = reflect(args, model, params, tok, run, images, seeds, noise.shape[1:])
    out = tile(np.stack([x for r in rows for x in (r.pop("image_1"), r.pop("final"))]), len(rows), 2)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
      json.dump(rows, f, indent=1)
  Image.fromarray(out).save(args.out)
  print(f"wrote {args.out}: {out.shape[1]}x{out.shape[0]} ({len(args.prompt)} prompt(s) x {args.seeds} seed(s), "
        f"{args.steps} steps, {time.perf_counter() - t0:.1f}s)")
  return 0


def judge_fn(model, tok, max_new_tokens: int):
  """The greedy judge: (lm params, ids, mask, pixel values, grids) -> completion texts."""
  import jax

  from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
  lmc = model.config.lm
  sampler = Sampler(model.lm, SamplingConfig(greedy=True, max_new_tokens=max_new_tokens,
                                             eos_token_ids=tuple(lmc.eos_token_id), pad_token_id=lmc.pad_token_id))

  def judge(lm_params, ids, mask, pv, grids):
    out = jax.device_get(sampler(lm_params, ids, mask, pv, grids, rng=jax.random.PRNGKey(0)))
    return tok.batch_decode([t[:n] for t, n in zip(out["tokens"], out["lengths"])], skip_special_tokens=True)

  return judge


def reflect(args, model, params, tok, run, first: np.ndarray, seeds, latent_shape) -> list[dict]:
  """Judge each image 1 (row p · seeds + s) and regenerate after a no; -> one dict per row with both images."""
  import jax
  from PIL import Image

  from unirl_jax import chat, tokenizer as tok_lib
  from unirl_jax.data import prompts
  from unirl_jax.scenarios.reflect import second_prompts
  seeds = list(seeds)
  texts = [p for p in args.prompt for _ in seeds]
  proc = chat.image_processor(args.ckpt, max_pixels=args.vit_size * args.vit_size)
  enc = proc(images=[square(Image.fromarray(x), args.vit_size) for x in first], return_tensors="np")
  pv, grid = np.asarray(enc["pixel_values"], np.float32), np.asarray(enc["image_grid_thw"])
  merge = model.config.lm.vision.spatial_merge_size
  ids, mask = tokenize(tok, [tok_lib.expand_image_tokens(prompts.reflect(t), grid[i:i + 1], merge)
                             for i, t in enumerate(texts)])
  completions = judge_fn(model, tok, args.max_new_tokens)(params["lm"], ids, mask, pv, grid)
  second, judgements, revised = second_prompts(texts, completions)
  final = first.copy()
  if revised.any():
    noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(s), 2), latent_shape))
                      for s in seeds])
    ids2, mask2 = tokenize(tok, [prompts.t2i(t) for t in second])  # one padded length: one compile for all calls
    for j, s in enumerate(seeds):  # one call per seed: each row its own revised prompt
      rows = [p * len(seeds) + j for p in range(len(args.prompt))]
      images = to_uint8(jax.device_get(run(params, ids2[rows], mask2[rows], None, None, None, noise[j:j + 1])))
      for k, r in enumerate(rows):
        if revised[r]:
          final[r] = images[k]
  return [{"prompt": texts[r], "seed": seeds[r % len(seeds)], "judge": completions[r],
           "judgement": {1: "yes", 0: "no"}.get(int(judgements[r]), "unparsed"),
           "second_prompt": second[r] if revised[r] else None, "image_1": first[r], "final": final[r]}
          for r in range(len(texts))]


if __name__ == "__main__":
  sys.exit(main())
