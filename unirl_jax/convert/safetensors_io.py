"""Safetensors reading (bf16 included, one tensor at a time) and writing, with numpy only."""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Iterator

import ml_dtypes
import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsFile:
  """One .safetensors file; `get(key)` reads that tensor alone (a plain read, so the process holds no more
  of the file than the tensor in hand)."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
      if not 2 <= n <= size - 8:
        raise ValueError(f"{path}: not a safetensors file (its {size} bytes hold no valid header)")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
      raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    self.header = header
    self._offset = 8 + n
    for key, info in header.items():
      try:
        start, end = info["data_offsets"]
        shape, dtype = info["shape"], info["dtype"]
      except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: tensor {key!r} has a malformed header entry {info!r}") from None
      if end > size - self._offset:
        raise ValueError(f"{path}: truncated: tensor {key!r} ends at byte {self._offset + end} of a "
                         f"{size}-byte file")
      if dtype in _DTYPES and end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize:
        raise ValueError(f"{path}: tensor {key!r} holds {end - start} bytes, not the {dtype} {tuple(shape)} its "
                         f"header says")

  def keys(self) -> list[str]:
    return list(self.header)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.header[key]["shape"])

  def get(self, key: str) -> np.ndarray:
    info = self.header[key]
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]])
    if end == start:
      return np.zeros(info["shape"], dtype)
    count = (end - start) // dtype.itemsize
    return np.fromfile(self.path, dtype=dtype, count=count, offset=self._offset + start).reshape(info["shape"])


_SHARD = r"(-\d{5}-of-\d{5})?"


def weight_files(path: str, variant: str | None = None) -> list[str]:
  """The safetensors files of a model folder: one file, an index's shards, or one `variant` (e.g. "bf16").

  Without a variant, files named like `x.bf16.safetensors` are ignored when plain ones exist; a folder that
  holds only variants must name one.
  """
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no such directory: {path}")
  names = sorted(os.listdir(path))
  v = re.escape(variant) if variant else None
  index_rx = rf".+\.safetensors\.index\.{v}\.json" if v else r".+\.safetensors\.index\.json"
  file_rx = rf"[^.]+(\.{v}{_SHARD}|{_SHARD}\.{v})\.safetensors" if v else rf"[^.]+{_SHARD}\.safetensors"
  indexes = [n for n in names if re.fullmatch(index_rx, n)]
  if len(indexes) > 1:
    raise ValueError(f"{path} holds several weight indexes {indexes}")
  if indexes:
    with open(os.path.join(path, indexes[0])) as f:
      return sorted({os.path.join(path, fn) for fn in json.load(f)["weight_map"].values()})
  files = [os.path.join(path, n) for n in names if re.fullmatch(file_rx, n)]
  if not files:
    variants = sorted({m.group(1) for n in names if (m := re.fullmatch(r"[^.]+\.([^.-]+)(-.*)?\.safetensors", n))})
    hint = f" (it holds variants {variants}: pass one with --variant)" if variants and not variant else ""
    raise FileNotFoundError(f"no {variant + ' ' if variant else ''}.safetensors weights in {path}{hint}")
  return files


class SafetensorsDir:
  """All tensors of a model folder (see `weight_files`), read one at a time."""

  def __init__(self, path: str, variant: str | None = None):
    self.files = [SafetensorsFile(p) for p in weight_files(path, variant)]
    self._where = {}
    for f in self.files:
      for k in f.keys():
        if k in self._where:
          raise ValueError(f"tensor {k!r} appears in both {self._where[k].path} and {f.path}")
        self._where[k] = f

  def keys(self) -> list[str]:
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    return self._where[key].shape(key)

  def get(self, key: str) -> np.ndarray:
    return self._where[key].get(key)

  def items(self) -> Iterator[tuple[str, np.ndarray]]:
    for k in self.keys():
      yield k, self.get(k)


def save_file(tensors: dict, path: str, metadata: dict | None = None) -> None:
  """Writes tensors in key order; bf16 arrays (ml_dtypes) are stored as BF16.

  Values may be arrays or lazy tensors (anything with shape, dtype and `__array__`): the header is built
  from shapes alone and each tensor is materialised only while it is written.
  """
  header, offset = {}, 0
  for k, v in tensors.items():
    nbytes = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
    header[k] = {"dtype": _NAMES[np.dtype(v.dtype)], "shape": list(v.shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for k, v in tensors.items():
      a = np.asarray(np.asarray(v), order="C")  # (ascontiguousarray would turn 0-d into 1-d)
      if a.shape != tuple(header[k]["shape"]) or a.dtype != np.dtype(v.dtype):
        raise ValueError(f"tensor {k!r} materialised as {a.shape} {a.dtype}, declared {v.shape} {v.dtype}")
      f.write(a.tobytes())
