"""A detector for the synthetic shapes domain (`data.shapes`), so the GenEval scenario runs offline: colour
segmentation against the palette, connected components, and shape classification by the IoU of a component
with each shape drawn the way `data.shapes` draws it in the same box. Registered as the rewards
"geneval_shapes" (GenEval's partial credit, `rewards.geneval`) and "geneval_shapes_correct"."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from unirl_jax.data.shapes import BACKGROUND, COLORS, SHAPES, draw_shape
from unirl_jax.rewards import geneval, register

PALETTE = np.asarray([BACKGROUND] + list(COLORS.values()), np.float32)
NAMES = ["background"] + list(COLORS)


def prototype(shape: str, h: int, w: int) -> np.ndarray:
  """(h, w) bool: `shape` drawn filling an h x w box, as data.shapes draws it."""
  img = Image.new("RGB", (w, h), (0, 0, 0))
  draw_shape(ImageDraw.Draw(img), shape, "white", (0, 0, w - 1, h - 1))
  return np.asarray(img)[..., 0] > 0


def detect(image: np.ndarray, min_area_frac: float = 0.004, max_color_dist: float = 90.0) -> dict:
  """(H, W, 3) uint8 -> {shape: [geneval.Detection]}. A pixel takes the nearest palette colour within
  `max_color_dist` (else none); each component of one colour larger than `min_area_frac` of the image is an
  object of the shape whose drawing in its box overlaps it best; confidence = that IoU x the share of its
  pixels within half the colour distance (clean drawings score ~1, blurred or ragged ones less)."""
  x = np.asarray(image, np.float32)
  dist = np.linalg.norm(x[:, :, None, :] - PALETTE[None, None], axis=-1)  # (H, W, P)
  label = dist.argmin(-1)
  near = dist.min(-1) <= max_color_dist
  out: dict = {}
  min_area = min_area_frac * label.size
  for k in range(1, len(PALETTE)):
    comps, _ = ndimage.label((label == k) & near)
    for j, sl in enumerate(ndimage.find_objects(comps), start=1):
      if sl is None:
        continue
      mask = comps[sl] == j
      if mask.sum() < min_area:
        continue
      ious = {s: float((mask & p).sum() / (mask | p).sum()) for s in SHAPES
              for p in (prototype(s, *mask.shape),)}
      shape = max(ious, key=ious.get)
      purity = float((dist[sl][..., k][mask] < max_color_dist / 2).mean())
      box = (float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop))
      out.setdefault(shape, []).append(geneval.Detection(box, ious[shape] * purity, NAMES[k]))
  return out


geneval_shapes, geneval_shapes_correct = geneval.rewards_from(detect, "geneval_shapes")
register("geneval_shapes")(geneval_shapes)
register("geneval_shapes_correct")(geneval_shapes_correct)
