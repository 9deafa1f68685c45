"""JPEG compressibility / incompressibility (UniRL's sanity experiment): size in KB of the image saved at quality 95."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from unirl_jax.rewards import RewardInputs, register


def jpeg_kb(images: np.ndarray, quality: int = 95) -> np.ndarray:
  out = np.empty((len(images),), np.float32)
  for i, img in enumerate(np.asarray(images, np.uint8)):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    out[i] = buf.tell() / 1000.0
  return out


@register("jpeg_compressibility")
def jpeg_compressibility(inputs: RewardInputs) -> np.ndarray:
  """−KB/500: smaller files score higher."""
  return -jpeg_kb(inputs.images) / 500.0


@register("jpeg_incompressibility")
def jpeg_incompressibility(inputs: RewardInputs) -> np.ndarray:
  """KB: larger files score higher."""
  return jpeg_kb(inputs.images)
