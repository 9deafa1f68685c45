"""Qwen2.5-VL for conditional generation: ViT features scattered into the token embeddings, decoder, LM head."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models import layers
from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, dtype_of
from unirl_jax.models.qwen2_5_vl.rope import get_rope_index
from unirl_jax.models.qwen2_5_vl.text import TextModel
from unirl_jax.models.qwen2_5_vl.vision import VisionTower


def merge_image_embeds(inputs_embeds: jax.Array, input_ids: jax.Array, image_embeds: jax.Array,
                       image_token_id: int) -> jax.Array:
  """Writes the merged ViT tokens, in order, over the `<|image_pad|>` placeholders (masked_scatter)."""
  is_img = (input_ids == image_token_id).reshape(-1)
  if not isinstance(is_img, jax.core.Tracer):
    n_tok = int(is_img.sum())
    if n_tok != image_embeds.shape[0]:
      raise ValueError(f"Image features and image tokens do not match: {n_tok} <|image_pad|> tokens in "
                       f"input_ids, {image_embeds.shape[0]} features from pixel_values/image_grid_thw")
  src = jnp.clip(jnp.cumsum(is_img) - 1, 0, image_embeds.shape[0] - 1)
  flat = inputs_embeds.reshape(-1, inputs_embeds.shape[-1])
  flat = jnp.where(is_img[:, None], image_embeds[src].astype(flat.dtype), flat)
  return flat.reshape(inputs_embeds.shape)


class Qwen2_5_VL(nn.Module):
  """Mirrors `Qwen2_5_VLForConditionalGeneration` (images only; no video path).

  `__call__` takes the transformers forward's input names and returns (B, T, vocab) logits; with a
  `cache` it returns (logits, cache). position_ids: None computes the 3-D M-RoPE ids like
  `get_rope_index` (mask-aware); a (B, T) array gives plain 1-D positions on all three axes.
  """

  config: Qwen2_5_VLConfig

  def setup(self):
    cfg = self.config
    self.visual = VisionTower(cfg)
    self.language_model = TextModel(cfg)
    if not cfg.tie_word_embeddings:
      self.lm_head = layers.dense(cfg.text.vocab_size, ("embed", "vocab"), use_bias=False,
                                  dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype), kernels=cfg.kernels,
                                  kernel_init=nn.initializers.normal(cfg.text.initializer_range))

  def get_image_features(self, pixel_values, image_grid_thw):
    return self.visual(pixel_values, image_grid_thw)

  def embed(self, input_ids, pixel_values=None, image_grid_thw=None):
    """Token embeddings with image features in place of the placeholders: (B, T, D)."""
    x = self.language_model.embed(input_ids)
    if pixel_values is not None:
      if image_grid_thw is None:
        raise ValueError("pixel_values given without image_grid_thw")
      x = merge_image_embeds(x, input_ids, self.visual(pixel_values, image_grid_thw), self.config.image_token_id)
    return x

  def position_ids(self, input_ids, attention_mask=None, image_grid_thw=None):
    return get_rope_index(input_ids, image_grid_thw, attention_mask, self.config)[0]

  def logits(self, hidden):
    if self.config.tie_word_embeddings:
      return self.language_model.attend(hidden)
    return self.lm_head(hidden)

  def hidden_states(self, inputs_embeds, position_ids, attention_mask=None, cache=None):
    """Decoder on precomputed embeddings: last layer after the final norm, (B, T, D), and the cache."""
    if position_ids.ndim == 2:
      position_ids = jnp.broadcast_to(position_ids[None], (3,) + position_ids.shape)
    return self.language_model(inputs_embeds, position_ids, attention_mask, cache)

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               position_ids=None, cache: Optional[dict] = None, inputs_embeds=None):
    if inputs_embeds is None:
      inputs_embeds = self.embed(input_ids, pixel_values, image_grid_thw)
    if position_ids is None:
      if input_ids is None:
        raise ValueError("position_ids are required when only inputs_embeds is given")
      position_ids = self.position_ids(input_ids, attention_mask, image_grid_thw)
    hidden, cache_out = self.hidden_states(inputs_embeds, position_ids, attention_mask, cache)
    logits = self.logits(hidden)
    return logits if cache is None else (logits, cache_out)


def grid_tuple(image_grid_thw) -> Optional[tuple]:
  """A hashable form of image_grid_thw, for use as a jit static argument."""
  if image_grid_thw is None:
    return None
  return tuple(tuple(int(v) for v in row) for row in np.asarray(image_grid_thw).reshape(-1, 3))
