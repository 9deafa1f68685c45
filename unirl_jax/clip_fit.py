"""A tiny CLIP fitted contrastively to captioned shape scenes, so the CLIP rewards (edit direction, cycle
similarity) mean something offline, as the shapes detector does for GenEval.

`python -m unirl_jax.clip_fit --out DIR [--steps 1500]` writes DIR in the layout of `python -m convert clip`
(config.json, params/, a word-level tokenizer over the shapes vocabulary, a CLIP image processor), which a run's
`clip_rewards` or `rewards.serve --clip DIR` loads like a converted OpenAI CLIP.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unirl_jax.models import clip

# The default training noise: up to ~55/255 in pixels. Fitted on clean scenes only, the CLIP scored a copy of the
# source with std-20 noise 0.20 in image similarity and its direction like an attempted edit (docs/results.md).
NOISE = 0.8


def word_tokenizer(words, text: clip.TextConfig):
  """A transformers fast tokenizer: whitespace words -> ids, framed by CLIP's bos/eos (ids from `text`)."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  vocab = {"<pad>": text.pad_token_id, "<unk>": 1, "<bos>": text.bos_token_id, "<eos>": text.eos_token_id}
  free = [i for i in range(text.vocab_size) if i not in vocab.values()]
  words = sorted(set(words) - set(vocab))
  if len(words) > len(free):
    raise ValueError(f"{len(words)} words do not fit a {text.vocab_size}-token vocabulary")
  vocab.update(zip(words, free))
  tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.Whitespace()
  tk.post_processor = processors.TemplateProcessing(
      single="<bos> $A <eos>", special_tokens=[("<bos>", text.bos_token_id), ("<eos>", text.eos_token_id)])
  return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                 unk_token="<unk>")


def shapes_vocabulary() -> list[str]:
  from unirl_jax.data import shape_edits, shapes
  words = {"a", "photo", "of", "and", "on", "the", "two", "three", "four", "left", "right", "above", "below"}
  words |= set(shapes.SHAPES) | {s + "s" for s in shapes.SHAPES} | set(shapes.COLORS)
  return sorted(words | set(shape_edits.COLUMNS) | set(shape_edits.SIZES))


def shapes_config() -> clip.CLIPConfig:
  """32 px scenes in 4 px patches, 2-layer width-64 towers, the shapes vocabulary."""
  n = len(shapes_vocabulary()) + 4
  text = clip.TextConfig(64, 128, 2, 4, vocab_size=n, max_position_embeddings=32, bos_token_id=n - 2,
                         eos_token_id=n - 1, pad_token_id=0)
  return clip.CLIPConfig(text=text, vision=clip.VisionConfig(64, 128, 2, 4, image_size=32, patch_size=4),
                         projection_dim=64)


def contrastive_loss(model: clip.CLIP, params, pixels, ids, mask) -> jax.Array:
  """CLIP's symmetric cross-entropy over the batch's image-caption similarities (scaled by exp(logit_scale))."""
  img = clip.normalize(model.apply({"params": params}, pixels, method="image_features"))
  txt = clip.normalize(model.apply({"params": params}, ids, mask, method="text_features"))
  logits = jnp.exp(params["logit_scale"].astype(jnp.float32)) * img @ txt.T
  labels = jnp.arange(logits.shape[0])
  ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()
  return (ce(logits) + ce(logits.T)) / 2


def augment(pixels, key, noise: float):
  """Each image plus Gaussian noise of its own std, drawn uniformly from [0, noise) (normalised pixel units)."""
  k_std, k_noise = jax.random.split(key)
  std = jax.random.uniform(k_std, (pixels.shape[0],) + (1,) * (pixels.ndim - 1)) * noise
  return pixels + std * jax.random.normal(k_noise, pixels.shape, pixels.dtype)


def fit(cfg: clip.CLIPConfig, pixels: np.ndarray, ids: np.ndarray, mask: np.ndarray, steps: int, batch: int = 64,
        lr: float = 3e-4, seed: int = 0, log_every: int = 0, noise: float = 0.0):
  """Adam on the contrastive loss over random batches -> (params, [loss per step]). noise > 0: each image of a
  batch gets `augment`'s pixel noise, so the rewards read the scene, not the sampler's speckle."""
  model = clip.CLIP(cfg)
  params = clip.init_params(cfg, jax.random.PRNGKey(seed))
  opt = optax.adamw(optax.cosine_decay_schedule(lr, steps, 0.1), weight_decay=0.0)
  state = opt.init(params)

  @jax.jit
  def step(params, state, x, i, m, key):
    if noise > 0:
      x = augment(x, key, noise)
    loss, g = jax.value_and_grad(lambda p: contrastive_loss(model, p, x, i, m))(params)
    updates, state = opt.update(g, state, params)
    return optax.apply_updates(params, updates), state, loss

  rs = np.random.RandomState(seed)
  losses = []
  t0 = time.perf_counter()
  for s in range(steps):
    idx = rs.choice(len(pixels), batch, replace=False)
    params, state, loss = step(params, state, pixels[idx], ids[idx], mask[idx], jax.random.PRNGKey(seed * 100003 + s))
    losses.append(loss)  # a device scalar: no host sync per step
    if log_every and (s + 1) % log_every == 0:
      print(f"clip fit {s + 1:5d}  loss {float(jnp.mean(jnp.stack(losses[-log_every:]))):.4f}  "
            f"{time.perf_counter() - t0:.0f}s", flush=True)
  return params, [float(x) for x in jax.device_get(losses)]


def write_processors(out: str, cfg: clip.CLIPConfig, tokenizer) -> None:
  """The tokenizer and a CLIP image processor at the vision tower's size (resize + centre crop, CLIP's norm)."""
  from transformers import CLIPImageProcessorPil
  s = cfg.vision.image_size
  tokenizer.save_pretrained(out)
  CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s}).save_pretrained(out)


def save(out: str, cfg: clip.CLIPConfig, params, tokenizer, overwrite: bool = False) -> str:
  """A `python -m convert clip`-layout dir: params/, config.json, the tokenizer and a CLIP image processor."""
  from unirl_jax import checkpoint
  from unirl_jax.convert.pipeline import META, staged_dir
  with staged_dir(out, overwrite) as tmp:
    checkpoint.save_params(os.path.join(tmp, "params"), jax.device_get(params))
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(cfg.to_hf_dict(), f, indent=1)
    with open(os.path.join(tmp, META), "w") as f:
      json.dump({"kind": "clip", "param_dtype": "float32"}, f)
    write_processors(tmp, cfg, tokenizer)
  return out


def shapes_data(n: int, size: int, seed: int = 0) -> tuple[list, list[str]]:
  """n captioned scenes: both sides of the shapes edits (one or two objects, every attribute named)."""
  from unirl_jax.data import shape_edits
  images, captions = [], []
  for _, src, dst, _, _ in shape_edits.records((n + 1) // 2, seed):
    for objs in (src, dst):
      images.append(np.asarray(shape_edits.draw(objs, size)))
      captions.append(shape_edits.caption(objs))
  return images[:n], captions[:n]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.clip_fit", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--n", type=int, default=4096, help="captioned scenes to fit on")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--noise", type=float, default=NOISE,
                 help="largest std of the per-image pixel noise in training (normalised units; 0: clean scenes)")
  p.add_argument("--overwrite", action="store_true")
  a = p.parse_args(argv)
  cfg = shapes_config()
  tok = word_tokenizer(shapes_vocabulary(), cfg.text)
  images, captions = shapes_data(a.n, cfg.vision.image_size, a.seed)
  params, _ = fit(cfg, *inputs(cfg, tok, images, captions), a.steps, a.batch, seed=a.seed, log_every=100,
                  noise=a.noise)
  print(f"clip: {save(a.out, cfg, params, tok, a.overwrite)}")
  return 0


def inputs(cfg: clip.CLIPConfig, tokenizer, images, captions):
  """Pixels, ids and mask exactly as the CLIP rewards compute them (`rewards.clip.Preprocessor`)."""
  import tempfile

  from unirl_jax.rewards.clip import Preprocessor
  with tempfile.TemporaryDirectory() as d:
    write_processors(d, cfg, tokenizer)
    prep = Preprocessor(d, cfg.text.max_position_embeddings)
    ids, mask = prep.text(captions)
    return prep.pixels(np.stack(images)), ids, mask


if __name__ == "__main__":
  sys.exit(main())
