"""One chat turn with Qwen2.5-VL: `python -m unirl_jax.chat [--ckpt DIR] [--prompt TEXT] [--image PATH] ...`.

Without --ckpt it runs a CPU demo: a tiny random Qwen2.5-VL over the real 151936-token vocabulary, the offline
Qwen2 tokenizer and, unless --image is given, a synthetic gradient image, so every stage (chat template, image
processor, vision tower, prefill, decode) runs in a few seconds. The completion is gibberish by construction.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

DEMO_MAX_PIXELS = 28 * 28 * 64


def demo_config():
  """`tiny()` with the real vocabulary size and the real special-token ids."""
  from unirl_jax.models.qwen2_5_vl import tiny
  return tiny(text=dataclasses.replace(tiny().text, vocab_size=151936), image_token_id=151655,
              video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
              bos_token_id=151643, eos_token_id=(151645,), pad_token_id=151643)


def gradient_image(width: int = 112, height: int = 84):
  """A small RGB colour gradient (PIL image)."""
  from PIL import Image
  x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
  y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
  rgb = np.stack([x, y, 255 - (x + y) / 2], axis=-1)
  return Image.fromarray(rgb.astype(np.uint8), "RGB")


def load_tokenizer(ckpt=None):
  from unirl_jax import tokenizer as tok_lib
  return tok_lib.load(ckpt)


def image_processor(ckpt=None, max_pixels=None):
  from transformers import Qwen2VLImageProcessorPil
  kw = {} if max_pixels is None else {"max_pixels": max_pixels, "min_pixels": min(56 * 56, max_pixels)}
  if ckpt and os.path.exists(os.path.join(ckpt, "preprocessor_config.json")):
    return Qwen2VLImageProcessorPil.from_pretrained(ckpt, **kw)
  return Qwen2VLImageProcessorPil(**kw)


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog="python -m unirl_jax.chat", description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", help="converted checkpoint dir (config.json + params/); default: random tiny demo")
  p.add_argument("--prompt", default="Describe this image.")
  p.add_argument("--image", help="image file; the demo uses a synthetic gradient when omitted")
  p.add_argument("--no-image", action="store_true", help="text-only turn")
  p.add_argument("--max-new-tokens", type=int, default=32)
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--greedy", action="store_true")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-pixels", type=int, default=None,
                 help=f"image processor pixel budget (demo default {DEMO_MAX_PIXELS})")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  from unirl_jax import tokenizer as tok_lib
  from unirl_jax.models import qwen2_5_vl
  from unirl_jax.models.qwen2_5_vl.model import Qwen2_5_VL
  from unirl_jax.models.qwen2_5_vl.sampling import generate

  rng = jax.random.PRNGKey(args.seed)
  if args.ckpt:
    model, params = qwen2_5_vl.load(args.ckpt)
    max_pixels = args.max_pixels
  else:
    model = Qwen2_5_VL(demo_config())
    params = qwen2_5_vl.init_params(model.config, jax.random.fold_in(rng, 1))
    max_pixels = args.max_pixels or DEMO_MAX_PIXELS
  cfg = model.config
  tok = load_tokenizer(args.ckpt)

  image = None
  if not args.no_image:
    if args.image:
      from PIL import Image
      image = Image.open(args.image).convert("RGB")
    elif not args.ckpt:
      image = gradient_image()
  content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": args.prompt}]
  prompt = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
  pixel_values = grid = None
  text = prompt
  if image is not None:
    out = image_processor(args.ckpt, max_pixels)(images=[image], return_tensors="np")
    pixel_values, grid = np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"])
    text = tok_lib.expand_image_tokens(prompt, grid, cfg.vision.spatial_merge_size)
  enc = tok([text], return_tensors="np", add_special_tokens=False)
  sampling = dict(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                  max_new_tokens=args.max_new_tokens)

  def run():
    t0 = time.perf_counter()
    res = jax.device_get(generate(model, params, enc["input_ids"], enc["attention_mask"], pixel_values, grid,
                                  rng=jax.random.fold_in(rng, 2), **sampling))
    return res, time.perf_counter() - t0

  res, t_first = run()
  res, t_second = run()
  n = int(res["lengths"][0])
  ids = [int(i) for i in res["tokens"][0, :n]]
  mean_logp = float(np.mean(res["logprobs"][0, :n])) if n else float("nan")
  print(f"model: {args.ckpt or 'tiny random demo (real vocabulary)'}; prompt tokens: {enc['input_ids'].shape[1]}"
        + (f"; image grid {tuple(int(v) for v in grid[0])}" if grid is not None else ""))
  print("--- prompt ---")
  print(prompt, end="" if prompt.endswith("\n") else "\n")
  print("--- completion ---")
  print(tok.decode(ids, skip_special_tokens=True))
  print(f"token ids: {ids[:64]}" + (f" ... ({n - 64} more)" if n > 64 else ""))
  print("---")
  print(f"new tokens: {n}; mean log-prob per token: {mean_logp:.4f}")
  print(f"time: first call (compile + run) {t_first:.2f}s, second call {t_second:.2f}s "
        f"({n / max(t_second, 1e-9):.1f} new tokens/s, prefill included)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
