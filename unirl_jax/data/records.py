"""Training records from JSONL manifests and parquet files, with errors that name the file and line.

Manifest lines (image paths relative to the manifest):
  {"type": "t2i", "image": "img/0.png", "caption": "a red circle"}
  {"type": "edit", "source": "img/0.png", "edited": "img/0_e.png", "instruction": "make it blue"}
Parquet columns: t2i `image` (bytes or {"bytes", "path"}) + `caption` (or `prompt`); edit `src_img`,
`edited_img` + `instruction` (or OmniEdit's `edited_prompt_list`, whose last entry is used).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Iterable, Iterator, Optional, Union

import numpy as np
from PIL import Image

ImageRef = Union[str, bytes]  # a file path or encoded image bytes


class DataError(ValueError):
  """A bad record; the message starts with `file:line` (or `file: row N`)."""


@dataclasses.dataclass(frozen=True)
class T2IRecord:
  caption: str
  image: ImageRef
  origin: str  # "file:line", for error messages


@dataclasses.dataclass(frozen=True)
class EditRecord:
  instruction: str
  source: ImageRef
  edited: ImageRef
  origin: str


@dataclasses.dataclass(frozen=True)
class ChatRecord:
  """LM supervision: a dialogue whose assistant turns are the targets, with an optional image shown before the
  first user turn's text."""

  messages: tuple  # ((role, content), ...), roles system / user / assistant
  image: Optional[ImageRef]
  origin: str


Record = Union[T2IRecord, EditRecord, ChatRecord]
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass
class ReadStats:
  read: int = 0
  skipped: int = 0
  reasons: list = dataclasses.field(default_factory=list)  # the first few skip messages


def open_image(ref: ImageRef, origin: str) -> Image.Image:
  """Decodes an image as RGB, or raises DataError naming the record."""
  try:
    img = Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref)
    img.load()
    return img.convert("RGB")
  except Exception as e:  # PIL raises many kinds for unreadable files
    what = "image bytes" if isinstance(ref, bytes) else repr(ref)
    raise DataError(f"{origin}: unreadable image {what}: {e}") from e


def image_field(v, origin: str, base: str, check: bool) -> ImageRef:
  if isinstance(v, dict):
    v = v.get("bytes") or v.get("path")
  if isinstance(v, (bytes, bytearray)):
    return bytes(v)
  if not isinstance(v, str) or not v:
    raise DataError(f"{origin}: image field is neither a path nor bytes ({type(v).__name__})")
  path = v if os.path.isabs(v) else os.path.join(base, v)
  if not os.path.exists(path):
    raise DataError(f"{origin}: image file not found: {path}")
  if check:
    open_image(path, origin)
  return path


def read_parquet_table(path: str):
  """A whole parquet file as a pyarrow Table; a missing or unreadable file is a DataError naming it."""
  import pyarrow.parquet as pq
  if not os.path.exists(path):
    raise DataError(f"parquet file {path!r} does not exist")
  try:
    return pq.read_table(path)
  except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a bad file)
    raise DataError(f"{path}: not a readable parquet file ({e})") from None


def iter_file_rows(path: str, what: str) -> Iterator[tuple[str, dict]]:
  """(origin, object) per record of a .jsonl or .parquet file of `what` records ("edit", "question"); a line that
  is not a JSON object is a DataError naming it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what} file {path!r} does not exist")
  if path.endswith(".parquet"):
    for i, d in enumerate(read_parquet_table(path).to_pylist()):
      yield f"{path}: row {i}", d
  elif path.endswith(".jsonl"):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          d = json.loads(line)
        except json.JSONDecodeError as e:
          raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(d, dict):
          raise DataError(f"{path}:{n}: expected a JSON object")
        yield f"{path}:{n}", d
  else:
    raise DataError(f"{what} file {path!r}: expected .jsonl or .parquet")


def _field(d: dict, names: tuple[str, ...], origin: str):
  for n in names:
    if d.get(n) is not None:
      return d[n]
  raise DataError(f"{origin}: missing field {' or '.join(repr(n) for n in names)}")


def _make(d: dict, kind: str, origin: str, base: str, check_images: bool) -> Record:
  if kind == "t2i":
    caption = _field(d, ("caption", "prompt", "text"), origin)
    return T2IRecord(str(caption), image_field(_field(d, ("image", "jpg", "png"), origin), origin, base,
                                                check_images), origin)
  if kind == "edit":
    instr = _field(d, ("instruction", "edited_prompt_list"), origin)
    if isinstance(instr, (list, tuple, np.ndarray)):
      if len(instr) == 0:
        raise DataError(f"{origin}: empty edited_prompt_list")
      instr = instr[-1]
    src = image_field(_field(d, ("source", "src_img"), origin), origin, base, check_images)
    edited = image_field(_field(d, ("edited", "edited_img"), origin), origin, base, check_images)
    return EditRecord(str(instr), src, edited, origin)
  if kind == "chat":
    msgs = d.get("messages")
    if not isinstance(msgs, list) or not msgs:
      raise DataError(f"{origin}: a chat record needs a non-empty list 'messages' of {{role, content}}")
    out = []
    for i, m in enumerate(msgs):
      if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
        raise DataError(f"{origin}: messages[{i}] must be {{'role': one of {ROLES}, 'content': text}}, got {m!r}")
      out.append((m["role"], m["content"]))
    if not any(r == "assistant" for r, _ in out):
      raise DataError(f"{origin}: a chat record needs an assistant message (the supervised tokens)")
    if not any(r == "user" for r, _ in out):
      raise DataError(f"{origin}: a chat record needs a user message")
    image = d.get("image")
    image = None if image is None else image_field(image, origin, base, check_images)
    return ChatRecord(tuple(out), image, origin)
  raise DataError(f"{origin}: unknown record type {kind!r} (expected 't2i', 'edit' or 'chat')")


def _collect(rows: Iterable[tuple[str, callable]], skip_bad: bool, stats: ReadStats) -> list[Record]:
  out = []
  for origin, make in rows:
    try:
      out.append(make())
      stats.read += 1
    except DataError as e:
      if not skip_bad:
        raise
      stats.skipped += 1
      if len(stats.reasons) < 10:
        stats.reasons.append(str(e))
  return out


def read_manifest(path: str, skip_bad: bool = False, stats: Optional[ReadStats] = None) -> list[Record]:
  """Records of a JSONL manifest. With skip_bad, bad lines (and undecodable images) are skipped and counted."""
  stats = stats if stats is not None else ReadStats()
  base = os.path.dirname(os.path.abspath(path))

  def rows():
    with open(path) as f:
      for i, line in enumerate(f, 1):
        if not line.strip():
          continue
        origin = f"{path}:{i}"

        def make(line=line, origin=origin):
          try:
            d = json.loads(line)
          except json.JSONDecodeError as e:
            raise DataError(f"{origin}: not valid JSON: {e}") from e
          if not isinstance(d, dict):
            raise DataError(f"{origin}: expected a JSON object")
          return _make(d, d.get("type", "t2i"), origin, base, check_images=skip_bad)

        yield origin, make

  return _collect(rows(), skip_bad, stats)


def read_parquet(path: str, kind: str, skip_bad: bool = False, stats: Optional[ReadStats] = None) -> list[Record]:
  """Records of a parquet file of `kind` ("t2i" or "edit"), one per row."""
  stats = stats if stats is not None else ReadStats()
  table = read_parquet_table(path)
  base = os.path.dirname(os.path.abspath(path))
  rows = ((f"{path}: row {i}", lambda d=d, i=i: _make(d, kind, f"{path}: row {i}", base, check_images=skip_bad))
          for i, d in enumerate(table.to_pylist()))
  return _collect(rows, skip_bad, stats)


def read_sources(sources: Iterable[str], skip_bad: bool = False, stream: bool = False) -> tuple[list, ReadStats]:
  """`sources`: manifest paths (*.jsonl), "t2i:PATH.parquet" / "edit:PATH.parquet", or "t2i:SHARDS" /
  "edit:SHARDS" WebDataset tar shards ("dir/{00000..00009}.tar", a glob, or a dir of .tar files).

  Manifests (and parquet unless `stream`) are read and checked at once: -> records. Tar shards, and parquet with
  `stream`, are indexed, not read (`unirl_jax.data.sources`): -> one random-access source each in the list,
  whose bad records stop the run when reached, naming file and row."""
  from unirl_jax.data import sources as sources_lib
  stats = ReadStats()
  out: list = []
  for src in sources:
    kind, _, path = src.partition(":") if not src.endswith(".jsonl") else ("", "", src)
    if src.endswith(".jsonl"):
      out += read_manifest(src, skip_bad, stats)
    elif kind in ("t2i", "edit") and path.endswith(".parquet"):
      out += [sources_lib.ParquetRows(path, kind)] if stream else read_parquet(path, kind, skip_bad, stats)
    elif kind in ("t2i", "edit") and (".tar" in path or os.path.isdir(path)):
      out.append(sources_lib.TarShards(path, kind))
    else:
      raise DataError(f"data source {src!r}: expected a .jsonl manifest, or 't2i:'/'edit:' + a .parquet path or "
                      f"tar shards")
  streamed = [s for s in out if hasattr(s, "task_key")]
  if streamed and skip_bad:
    raise DataError(f"data.skip_bad checks every record at load, which tar shards and streamed parquet are not "
                    f"(a bad record there stops the run naming it): drop skip_bad or those sources")
  if not out:
    raise DataError(f"no usable records in {list(sources)} ({stats.skipped} skipped)")
  return out, stats
