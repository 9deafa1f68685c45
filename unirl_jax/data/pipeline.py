"""grain pipelines for pretraining: records -> tokenised prompts + images -> fixed-shape batches.

Text-to-image, editing and chat (LM supervision) records form one stream per task, each shuffled, repeated and
batched on its own (every batch has one task, so each task compiles once), then interleaved by weight. The iterator's `get_state` /
`set_state` make a resumed run read exactly what an unbroken one would have.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import grain
import jax
import numpy as np
from flax import struct
from PIL import Image

from unirl_jax.data import prompts
from unirl_jax.data.records import ChatRecord, DataError, EditRecord, Record, T2IRecord, open_image
from unirl_jax.data.sources import Concat

TASKS = ("t2i", "edit", "chat")


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
  """One pretraining batch, a single task: text-to-image rows, edit rows that add the source image (for the
  ViT and the DiT's reference latents), or chat rows (LM supervision: `target_mask` marks the assistant tokens;
  an image, when the records have one, in `pixel_values`). Leaves are numpy arrays from the pipeline, jax arrays
  in the step."""

  input_ids: jax.Array  # (B, T) left-padded prompt ids (chat: the whole dialogue)
  attention_mask: jax.Array  # (B, T)
  images: Optional[jax.Array] = None  # (B, H, W, 3) targets in [-1, 1] (t2i, edit)
  pixel_values: Optional[jax.Array] = None  # (B * patches, C*T*P*P) ViT patches of the sources (edit, chat)
  src_images: Optional[jax.Array] = None  # (B, H, W, 3) sources in [-1, 1] (edit)
  target_mask: Optional[jax.Array] = None  # (B, T) 1 on the tokens the LM learns to predict (chat)

  @property
  def task(self) -> str:
    return "chat" if self.target_mask is not None else "edit" if self.pixel_values is not None else "t2i"

  @property
  def edit(self) -> bool:
    return self.task == "edit"


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

  def __init__(self, tokenizer, spec: ImageSpec, max_text_len: int, pad_id: int, max_target_len: int = 0):
    self.tok, self.spec, self.max_len, self.pad_id = tokenizer, spec, max_text_len, pad_id
    self.max_target_len = max_target_len  # chat: the targets must lie in the last max_target_len tokens (0: anywhere)
    self.vit = vit_processor(spec)

  def _ids(self, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids = self.tok(text, add_special_tokens=False)["input_ids"][:self.max_len]  # the original truncates too
    n = len(ids)
    out = np.full((self.max_len,), self.pad_id, np.int32)
    mask = np.zeros((self.max_len,), np.int32)
    out[self.max_len - n:], mask[self.max_len - n:] = ids, 1  # left padding
    return out, mask

  def chat(self, rec: ChatRecord) -> dict:
    """The dialogue in Qwen's chat template (the default system turn unless it has one), left-padded to
    max_text_len; the targets are each assistant turn's tokens and its `<|im_end|>`."""
    turns = list(rec.messages)
    if turns[0][0] != "system":
      turns.insert(0, ("system", prompts.SYSTEM))
    pieces, image_done = [], rec.image is None
    for role, content in turns:
      if role == "user" and not image_done:
        content = prompts.IMAGE_BLOCK.replace("<|image_pad|>", "<|image_pad|>" * self.spec.vit_tokens) + content
        image_done = True
      if role == "assistant":
        pieces += [("<|im_start|>assistant\n", 0), (content + "<|im_end|>", 1), ("\n", 0)]
      else:
        pieces.append((f"<|im_start|>{role}\n{content}<|im_end|>\n", 0))
    ids, target = [], []
    for text, is_target in pieces:
      t = self.tok(text, add_special_tokens=False)["input_ids"]
      ids += t
      target += [is_target] * len(t)
    n = len(ids)
    if n > self.max_len:
      raise DataError(f"{rec.origin}: the dialogue has {n} tokens, more than data.max_text_len={self.max_len}")
    if self.max_target_len and n - target.index(1) > self.max_target_len:
      raise DataError(f"{rec.origin}: its first target token is {n - target.index(1)} from the end, beyond "
                      f"data.max_target_len={self.max_target_len} (the scored window): raise it, or 0 for all")
    out = {"input_ids": np.full((self.max_len,), self.pad_id, np.int32), "attention_mask":
           np.zeros((self.max_len,), np.int32), "target_mask": np.zeros((self.max_len,), np.int32)}
    for k, v in (("input_ids", ids), ("attention_mask", [1] * n), ("target_mask", target)):
      out[k][self.max_len - n:] = v  # left padding
    if rec.image is not None:
      img = square(open_image(rec.image, rec.origin), self.spec.vit_size)
      out["pixel_values"] = np.asarray(self.vit(images=[img], return_tensors="np")["pixel_values"], np.float32)
    return out

  def __call__(self, rec: Record) -> dict:
    size = self.spec.size
    if isinstance(rec, ChatRecord):
      return self.chat(rec)
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


def task_of(rec: Record) -> str:
  return "chat" if isinstance(rec, ChatRecord) else "edit" if isinstance(rec, EditRecord) else "t2i"


MIXES = ("batches", "rows")


def make_dataset(records: list[Record], pre: Preprocessor, batch_size: int, seed: int,
                 weights: Optional[dict] = None, mix: str = "batches",
                 local_rows: Optional[Callable[[int], slice]] = None) -> grain.MapDataset:
  """An infinite, deterministic MapDataset of batches from per-task streams (`records`: records and/or the
  random-access sources of `records.read_sources`), by `weights` ({task: share}, e.g.
  {"edit": 0.8, "t2i": 0.2}; a task left out or at 0 is not read; default: the record counts' shares). A chat
  stream with images and one without are two streams (one compile each).

  mix "batches": every batch holds one stream (a `PretrainBatch`), the streams interleaved by share.
  mix "rows": every batch holds share x batch_size rows of each stream (a dict stream -> `PretrainBatch`,
  one compile for all), as the original's mixed shuffle does in expectation; the row counts must be whole.

  local_rows: which rows of an n-row global batch this process reads (`Trainer.local_rows`): every process walks
  the same shuffled records and preprocesses only its block, so the global batch does not depend on the number
  of processes."""
  if mix not in MIXES:
    raise ValueError(f"data.mix {mix!r} not one of {MIXES}")
  parts: dict[str, list] = {}  # stream -> its random-access parts, in the order given
  for r in records:
    if hasattr(r, "task_key"):  # a source of many records (tar shards, streamed parquet)
      parts.setdefault(r.task_key, []).append(r)
      continue
    key = task_of(r) + ("+image" if isinstance(r, ChatRecord) and r.image is not None else "")
    ps = parts.setdefault(key, [])
    if not ps or not isinstance(ps[-1], list):
      ps.append([])
    ps[-1].append(r)
  by_task = {k: ps[0] if len(ps) == 1 else Concat(ps) for k, ps in parts.items()}
  n_records = sum(len(v) for v in by_task.values())
  if weights is not None:
    unknown = set(weights) - set(TASKS)
    if unknown or any(not 0 <= w for w in weights.values()) or not sum(weights.values()) > 0:
      raise ValueError(f"data.task_weights {dict(weights)}: give shares >= 0 (not all 0) of {TASKS}")
  streams, shares = [], []
  order = lambda kv: (TASKS.index(kv[0].split("+")[0]), kv[0])  # t2i, edit, chat: the streams' seeds stay put
  for i, (key, recs) in enumerate(sorted(by_task.items(), key=order)):
    task = key.split("+")[0]
    share = len(recs) / n_records if weights is None else weights.get(task, 0.0) * len(recs) / sum(
        len(v) for k, v in by_task.items() if k.split("+")[0] == task)
    if share == 0:  # a task weighted 0 (or left out of the weights) is not read
      continue
    rows = batch_size
    if mix == "rows":
      rows = int(round(share * batch_size))
      if abs(rows - share * batch_size) > 1e-6 or rows == 0:
        raise ValueError(f"data.mix='rows': the {key} share {share:.4g} of data.batch_size {batch_size} is "
                         f"{share * batch_size:.4g} rows; set data.task_weights (split between image and text "
                         f"chat records by their counts) or data.batch_size so that every stream gets whole rows")
    if len(recs) < rows:
      raise ValueError(f"{len(recs)} {key} records are fewer than the {rows} rows a batch takes from them")
    mine = slice(None) if local_rows is None else local_rows(rows)
    ds = (grain.MapDataset.source(recs).shuffle(seed=seed + i).repeat()
          .batch(rows, drop_remainder=True, batch_fn=list).map(lambda rs, mine=mine: _stack([pre(r) for r in rs[mine]])))
    streams.append((key, ds))
    shares.append(share)
  if not streams:
    counts = {k: len(v) for k, v in sorted(by_task.items())}
    raise ValueError(f"data.task_weights {dict(weights or {})} leaves no records: the sources hold {counts}")
  keys, datasets = zip(*streams)
  if mix == "rows":
    n = min(len(ds) for ds in datasets)  # "infinite" streams of unequal nominal lengths: zip needs one
    return grain.experimental.ZipMapDataset(parents=[ds[:n] for ds in datasets]).map(
        lambda parts: dict(zip(keys, parts)))
  return datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(list(datasets), weights=shares)
