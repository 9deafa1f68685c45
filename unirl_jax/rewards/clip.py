"""CLIP rewards on the device, batched and jitted (docs/algorithms.md; the original's editing rewards):
text-image score (PickScore's scaling optional), directional similarity, image similarity. `reward(kind, ckpt)`
makes one a reward fn over `RewardInputs` (a run's `clip_rewards`, or `rewards.serve --clip`)."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models import clip

COS_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps
PICKSCORE_DIVISOR = 26.0  # the original's PickScore reward: logit_scale.exp() * cos / 26


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """torch's `cosine_similarity` over the last axis: each side divided by max(‖·‖, eps), so a zero vector
  (e.g. a no-op edit's image direction) scores 0."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), COS_EPS)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), COS_EPS)
  return jnp.sum((a / na) * (b / nb), axis=-1)


class Scorer:
  """A CLIP (from `clip.load`) and its jitted unit-norm embeddings; every score is (B,) float32."""

  def __init__(self, model: clip.CLIP, params):
    self.model, self.params = model, params
    self._image = jax.jit(lambda p, x: clip.normalize(model.apply({"params": p}, x, method="image_features")))
    self._text = jax.jit(lambda p, i, m: clip.normalize(model.apply({"params": p}, i, m, method="text_features")))

  def image_embeds(self, pixel_values) -> jax.Array:
    """(B, 3, S, S) processor pixels -> Î (B, projection_dim), unit norm."""
    return self._image(self.params, pixel_values)

  def text_embeds(self, input_ids, attention_mask) -> jax.Array:
    """(B, T) ids and mask -> T̂ (B, projection_dim), unit norm."""
    return self._text(self.params, input_ids, attention_mask)

  def text_image(self, pixel_values, input_ids, attention_mask, pickscore: bool = False) -> jax.Array:
    """cos(Î, T̂); with `pickscore`, exp(logit_scale)·cos / 26 (the original's PickScore reward)."""
    s = jnp.sum(self.image_embeds(pixel_values) * self.text_embeds(input_ids, attention_mask), axis=-1)
    if pickscore:
      s = jnp.exp(self.params["logit_scale"].astype(jnp.float32)) * s / PICKSCORE_DIVISOR
    return s

  def direction(self, src_pixels, edit_pixels, src_ids, src_mask, tgt_ids, tgt_mask) -> jax.Array:
    """The edit reward: cos(Î_edit − Î_src, T̂_tgt − T̂_src) (source caption -> target caption)."""
    d_img = self.image_embeds(edit_pixels) - self.image_embeds(src_pixels)
    d_txt = self.text_embeds(tgt_ids, tgt_mask) - self.text_embeds(src_ids, src_mask)
    return cosine(d_img, d_txt)

  def image_similarity(self, a_pixels, b_pixels) -> jax.Array:
    """The cycle reward: cos(Î_a, Î_b) (reconstruction vs source)."""
    return cosine(self.image_embeds(a_pixels), self.image_embeds(b_pixels))

  def cycle_gain(self, recon_pixels, edit_pixels, src_pixels) -> jax.Array:
    """cos(Î_recon, Î_src) − cos(Î_edit, Î_src), the source embedded once."""
    src = self.image_embeds(src_pixels)
    return cosine(self.image_embeds(recon_pixels), src) - cosine(self.image_embeds(edit_pixels), src)


class Preprocessor:
  """uint8 images and captions -> CLIP inputs with transformers' PIL CLIP image processor and the checkpoint's
  tokenizer (both read from a `python -m convert clip` dir, which keeps the source's processor files)."""

  def __init__(self, path: str, max_length: int = 77):
    from transformers import AutoTokenizer, CLIPImageProcessorPil
    self.images = CLIPImageProcessorPil.from_pretrained(path)
    self.tok = AutoTokenizer.from_pretrained(path)
    self.max_length = max_length

  def pixels(self, images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, S, S) float32 (resize the short side, centre crop, normalise)."""
    from PIL import Image
    out = self.images(images=[Image.fromarray(np.asarray(x, np.uint8)) for x in images], return_tensors="np")
    return np.asarray(out["pixel_values"], np.float32)

  def text(self, captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Captions -> (ids, mask), padded and truncated to max_length (77, as the original)."""
    enc = self.tok(list(captions), padding="max_length", truncation=True, max_length=self.max_length,
                   return_tensors="np")
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)


# The CLIP rewards a run or a server can name, with what each reads from `RewardInputs`.
KINDS = {
    "clip_score": "cos(Î, T̂) of each image and its prompt",
    "pickscore": "PickScore's exp(logit_scale)·cos(Î, T̂) / 26 of each image and its prompt",
    "clip_direction": "cos(Î_edit − Î_src, T̂_tgt − T̂_src): images vs sources, metadata caption, target_caption",
    "clip_image_similarity": "cos(Î_recon, Î_src): reconstructions vs sources (the cycle reward)",
    "clip_cycle_gain": "cos(Î_recon, Î_src) − cos(Î_edit, Î_src): what the reconstruction brought back",
    "clip_reverse_direction": "cos(Î_recon − Î_edit, T̂_src − T̂_tgt): the reverse edit's own direction",
}
EDIT_CAPTIONS = ("caption", "target_caption")  # the original's edit columns: source and edited-image captions


def from_config(items) -> dict:
  """A run's `clip_rewards` ((kind, dir), ...) -> {kind: reward fn}, each dir loaded once."""
  out = {}
  for kind, path in items:
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"clip_rewards.{kind}: {path!r} has no config.json (write the dir with "
                              "`python -m convert clip --src HF_DIR --dst OUT_DIR`)")
    out[kind] = reward(kind, path)
  return out


@functools.lru_cache(maxsize=None)
def _load(ckpt: str) -> tuple[Scorer, Preprocessor]:
  """One model per checkpoint dir, shared by every reward that names it."""
  model, params = clip.load(ckpt)
  return Scorer(model, params), Preprocessor(ckpt, model.config.text.max_position_embeddings)


def reward(kind: str, ckpt: str, chunk: int = 64):
  """The CLIP reward `kind` (one of `KINDS`) from a `python -m convert clip` dir: fn(RewardInputs) -> (N,) float32,
  computed `chunk` rows at a time (the last chunk padded, so one compiled shape per reward)."""
  if kind not in KINDS:
    raise ValueError(f"CLIP reward {kind!r} not one of {sorted(KINDS)}")
  scorer, prep = _load(ckpt)

  def batched(fn, *arrays):
    n = len(arrays[0])
    out = []
    for start in range(0, n, chunk):
      part = [a[start:start + chunk] for a in arrays]
      pad = chunk - len(part[0]) if n > chunk else 0
      part = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a for a in part]
      out.append(np.asarray(fn(*part), np.float32)[:len(part[0]) - pad])
    return np.concatenate(out)

  def captions(inputs) -> tuple[list, list]:
    meta = inputs.need("metadata", kind)
    for i, m in enumerate(meta):
      missing = [k for k in EDIT_CAPTIONS if not isinstance((m or {}).get(k), str)]
      if missing:
        raise ValueError(f"reward {kind!r} needs each row's metadata {EDIT_CAPTIONS} (the edit record's source "
                         f"and target captions); row {i} has no {missing[0]!r}")
    return [m["caption"] for m in meta], [m["target_caption"] for m in meta]

  def fn(inputs) -> np.ndarray:
    if kind in ("clip_score", "pickscore"):
      ids, mask = prep.text(inputs.need("prompts", kind))
      return batched(lambda x, i, m: scorer.text_image(x, i, m, pickscore=kind == "pickscore"),
                     prep.pixels(inputs.images), ids, mask)
    src = prep.pixels(inputs.need("sources", kind))
    if kind == "clip_image_similarity":
      return batched(scorer.image_similarity, prep.pixels(inputs.need("reconstructions", kind)), src)
    if kind == "clip_cycle_gain":
      return batched(scorer.cycle_gain, prep.pixels(inputs.need("reconstructions", kind)), prep.pixels(inputs.images),
                     src)
    (s_ids, s_mask), (t_ids, t_mask) = (prep.text(c) for c in captions(inputs))
    if kind == "clip_reverse_direction":  # the reconstruction as an edit of the edit, target caption -> source's
      return batched(scorer.direction, prep.pixels(inputs.images), prep.pixels(inputs.need("reconstructions", kind)),
                     t_ids, t_mask, s_ids, s_mask)
    return batched(scorer.direction, src, prep.pixels(inputs.images), s_ids, s_mask, t_ids, t_mask)

  fn.__name__ = kind
  return fn
