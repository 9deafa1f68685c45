"""CLIP rewards on the device, batched and jitted (docs/algorithms.md; the original's editing rewards):
text-image score (PickScore's scaling optional), directional similarity, image similarity."""

from __future__ import annotations

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
