"""grain pipelines for flow-matching pretraining: records -> tokenised prompts + images -> fixed-shape batches.

Text-to-image and editing records form two streams, each shuffled, repeated and batched on its own (every
batch has one task, so each task compiles once), then interleaved by weight. The iterator's `get_state` /
`set_state` make a resumed run read exactly what an unbroken one would have.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import grain
import jax
import numpy as np
from flax import struct
from PIL import Image

from unirl_jax.data import prompts
from unirl_jax.data.records import EditRecord, Record, T2IRecord, open_image


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  size: int  # generated/target images, square (UniRL: 1024)
  vit_size: int  # the source image as the LM sees it (UniRL: 672 -> 576 tokens)
  patch: int = 14
  merge: int = 2

  @property
  def vit_grid(self) -> tuple[int, int, int]:
    g = self.vit_size // self.patch
    return (1, g, g)

  @property
  def vit_tokens(self) -> int:
    return (self.vit_size // self.patch) ** 2 // self.merge**2


@struct.dataclass
class PretrainBatch:
  """One pretraining batch, a single task: text-to-image rows, or edit rows that add the source image (for the
  ViT and the DiT's reference latents). Leaves are numpy arrays from the pipeline, jax arrays in the step."""

  input_ids: jax.Array  # (B, T) left-padded prompt ids
  attention_mask: jax.Array  # (B, T)
  images: jax.Array  # (B, H, W, 3) targets in [-1, 1]
  pixel_values: Optional[jax.Array] = None  # (B * patches, C*T*P*P) ViT patches of the sources (edit)
  src_images: Optional[jax.Array] = None  # (B, H, W, 3) sources in [-1, 1] (edit)

  @property
  def edit(self) -> bool:
    return self.pixel_values is not None

  @property
  def task(self) -> str:
    return "edit" if self.edit else "t2i"


def square(img: Image.Image, size: int) -> Image.Image:
  """Bicubic resize of the short side to `size`, then a centre crop (UniRL's preprocessing)."""
  img = img.convert("RGB")
  w, h = img.size
  s = size / min(w, h)
  img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
  w, h = img.size
  left, top = (w - size) // 2, (h - size) // 2
  return img.crop((left, top, left + size, top + size))


def to_unit_range(img: Image.Image) -> np.ndarray:
  """uint8 RGB -> float32 in [-1, 1], (H, W, 3)."""
  return np.asarray(img, np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] -> uint8, as UniRL's (x / 2 + 0.5).clamp(0, 1) then x 255, rounded."""
  x = np.clip(np.asarray(images, np.float32) / 2 + 0.5, 0, 1)
  return np.round(x * 255).astype(np.uint8)


def vit_processor(spec: ImageSpec):
  """Qwen2-VL's image processor pinned to vit_size² (a square image keeps its size: one grid for all)."""
  from transformers import Qwen2VLImageProcessorPil
  px = spec.vit_size**2
  return Qwen2VLImageProcessorPil(min_pixels=px, max_pixels=px, patch_size=spec.patch, merge_size=spec.merge)


def edit_texts(instructions, spec: ImageSpec, literal_vision_end: bool = False) -> list[str]:
  """RL/inference edit prompts (`prompts.edit`) with the image's `<|image_pad|>` expanded for vit_size²."""
  return [prompts.edit(i, literal_vision_end=literal_vision_end).replace(
      "<|image_pad|>", "<|image_pad|>" * spec.vit_tokens) for i in instructions]


def vit_patches(images, spec: ImageSpec, vit) -> np.ndarray:
  """PIL images -> their ViT patches at vit_size², (n, patches, C·T·P·P) float32; `vit`: `vit_processor`."""
  pv = np.asarray(vit(images=[square(im, spec.vit_size) for im in images], return_tensors="np")["pixel_values"],
                  np.float32)
  return pv.reshape(len(images), -1, pv.shape[-1])


class Preprocessor:
  """One record -> a dict of numpy arrays with fixed shapes."""

  def __init__(self, tokenizer, spec: ImageSpec, max_text_len: int, pad_id: int):
    self.tok, self.spec, self.max_len, self.pad_id = tokenizer, spec, max_text_len, pad_id
    self.vit = vit_processor(spec)

  def _ids(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids = self.tok(text, add_special_tokens=False)["input_ids"][:self.max_len]  # the original truncates too
    n = len(ids)
    out = np.full((self.max_len,), self.pad_id, np.int32)
    mask = np.zeros((self.max_len,), np.int32)
    out[self.max_len - n:], mask[self.max_len - n:] = ids, 1  # left padding
    return out, mask

  def __call__(self, rec: Record) -> dict:
    size = self.spec.size
    if isinstance(rec, T2IRecord):
      ids, mask = self._ids(prompts.t2i(rec.caption, pretrain=True))
      return {"input_ids": ids, "attention_mask": mask, "images": to_unit_range(square(open_image(rec.image, rec.origin),
                                                                                          size))}
    src = open_image(rec.source, rec.origin)
    text = prompts.edit(rec.instruction, pretrain=True).replace(
        "<|image_pad|>", "<|image_pad|>" * self.spec.vit_tokens)
    ids, mask = self._ids(text)
    if int((ids == self.tok.convert_tokens_to_ids("<|image_pad|>")).sum()) != self.spec.vit_tokens:
      raise ValueError(f"{rec.origin}: max_text_len {self.max_len} cuts the image tokens of the edit prompt")
    vit = self.vit(images=[square(src, self.spec.vit_size)], return_tensors="np")
    return {"input_ids": ids, "attention_mask": mask,
            "images": to_unit_range(square(open_image(rec.edited, rec.origin), size)),
            "src_images": to_unit_range(square(src, size)),
            "pixel_values": np.asarray(vit["pixel_values"], np.float32)}


def _stack(examples) -> PretrainBatch:
  out = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k != "pixel_values"}
  if "pixel_values" in examples[0]:
    out["pixel_values"] = np.concatenate([e["pixel_values"] for e in examples])  # (B * patches, C*T*P*P)
  return PretrainBatch(**out)


def make_dataset(records: list[Record], pre: Preprocessor, batch_size: int, seed: int,
                 edit_weight: Optional[float] = None) -> grain.MapDataset:
  """An infinite, deterministic MapDataset of batches; `edit_weight` (default: the edit records' share)."""
  by_task = {"t2i": [r for r in records if isinstance(r, T2IRecord)],
             "edit": [r for r in records if isinstance(r, EditRecord)]}
  if edit_weight is not None and not 0 <= edit_weight <= 1:
    raise ValueError(f"data.edit_weight {edit_weight} not in [0, 1] (or < 0 in the config: by record count)")
  streams, weights = [], []
  for i, (task, recs) in enumerate(by_task.items()):
    share = None if edit_weight is None else (edit_weight if task == "edit" else 1 - edit_weight)
    if not recs or share == 0:  # data.edit_weight 1 or 0: one task only
      continue
    if len(recs) < batch_size:
      raise ValueError(f"{len(recs)} {task} records are fewer than batch_size {batch_size}")
    ds = (grain.MapDataset.source(recs).shuffle(seed=seed + i).repeat().map(pre)
          .batch(batch_size, drop_remainder=True, batch_fn=_stack))
    streams.append(ds)
    weights.append(len(recs) / len(records) if share is None else share)
  if not streams:
    raise ValueError(f"data.edit_weight {edit_weight} leaves no records: the sources hold "
                     f"{len(by_task['t2i'])} text-to-image and {len(by_task['edit'])} edit records")
  return streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights=weights)
