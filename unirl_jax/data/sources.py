"""Random-access record sources for data larger than memory: WebDataset tar shards and parquet files read by
row group. Each holds an index (offsets, row-group bounds), never the data, and decodes one record per
`source[i]`, so grain's global shuffle, per-process reading and exact resume work as on an in-memory list.

Tar shards (the layout of public text-to-image sets such as text-to-image-2M): members grouped by key, the name
up to its first dot; `KEY.jpg|jpeg|png|webp` + `KEY.txt` or `KEY.json` ("caption" / "prompt" / "text") for
text-to-image; `KEY.source.EXT` + `KEY.edited.EXT` + `KEY.txt` or `KEY.json` ("instruction") for edits.
"""

from __future__ import annotations

import bisect
import collections
import glob
import json
import os
import re
import tarfile
import threading
from typing import Sequence

from unirl_jax.data.records import DataError, _make

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def expand_shards(pattern: str) -> list[str]:
  """"dir/{00000..00009}.tar" (WebDataset's brace range), a glob, or a directory of .tar files -> sorted paths."""
  m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
  if m:
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    paths = [pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():] for i in range(lo, hi + 1)]
  elif os.path.isdir(pattern):
    paths = sorted(glob.glob(os.path.join(pattern, "*.tar")))
  else:
    paths = sorted(glob.glob(pattern))
  if not paths:
    raise DataError(f"tar shards {pattern!r}: no file matches")
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise DataError(f"tar shards {pattern!r}: {len(missing)} missing, e.g. {missing[0]}")
  return paths


class Concat(Sequence):
  """Several random-access sources as one."""

  def __init__(self, parts: list):
    self.parts = list(parts)
    self.starts = [0]
    for p in self.parts:
      self.starts.append(self.starts[-1] + len(p))

  def __len__(self) -> int:
    return self.starts[-1]

  def __getitem__(self, i: int):
    if not 0 <= i < len(self):
      raise IndexError(i)
    k = bisect.bisect_right(self.starts, i) - 1
    return self.parts[k][i - self.starts[k]]


class TarShards(Sequence):
  """The records of WebDataset tar shards of one kind ("t2i" or "edit"), indexed once by their member headers."""

  def __init__(self, pattern: str, kind: str):
    if kind not in ("t2i", "edit"):
      raise DataError(f"tar shards {pattern!r}: kind {kind!r} not 't2i' or 'edit'")
    self.kind, self.paths = kind, expand_shards(pattern)
    self.index = []  # (shard, key, {ext: (offset, size)}) per record, in shard order
    for s, path in enumerate(self.paths):
      self.index += [(s, key, members) for key, members in self._scan(path)]
    if not self.index:
      raise DataError(f"tar shards {pattern!r}: no records")
    self._local = threading.local()  # one open file per shard per thread

  @staticmethod
  def _scan(path: str):
    groups: dict[str, dict] = collections.OrderedDict()
    try:
      with tarfile.open(path, "r:") as tar:
        for info in tar:
          if info.isfile():
            base = os.path.basename(info.name)
            key, _, ext = base.partition(".")
            prefix = os.path.dirname(info.name)
            groups.setdefault(os.path.join(prefix, key), {})[ext.lower()] = (info.offset_data, info.size)
          tar.members = []  # keep the index, not tarfile's member list
    except (tarfile.TarError, OSError) as e:
      raise DataError(f"{path}: not a readable tar shard ({e})") from None
    return groups.items()

  task_key = property(lambda self: self.kind)  # the pipeline's stream this source feeds

  def __len__(self) -> int:
    return len(self.index)

  def __getstate__(self):  # grain workers get a copy without the open files
    return {k: v for k, v in self.__dict__.items() if k != "_local"}

  def __setstate__(self, state):
    self.__dict__.update(state, _local=threading.local())

  def _read(self, shard: int, span: tuple[int, int]) -> bytes:
    files = self._local.__dict__.setdefault("files", {})
    if shard not in files:
      files[shard] = open(self.paths[shard], "rb")
    f = files[shard]
    f.seek(span[0])
    data = f.read(span[1])
    if len(data) != span[1]:
      raise DataError(f"{self.paths[shard]}: truncated (a member ends past the end of the file)")
    return data

  def __getitem__(self, i: int):
    shard, key, members = self.index[i]
    origin = f"{self.paths[shard]}: {key}"
    d = {}
    for ext, span in members.items():
      if ext == "json":
        try:
          meta = json.loads(self._read(shard, span))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise DataError(f"{origin}.json: not JSON ({e})") from None
        if not isinstance(meta, dict):
          raise DataError(f"{origin}.json: expected a JSON object")
        d.update({k: v for k, v in meta.items() if k not in d})
      elif ext in ("txt", "caption", "instruction"):
        d["caption" if self.kind == "t2i" else "instruction"] = self._read(shard, span).decode("utf-8").strip()
    for ext, span in members.items():
      name, _, fmt = ext.rpartition(".") if "." in ext else ("", "", ext)
      if fmt in IMAGE_EXTS:
        field = {"": "image", "source": "source", "edited": "edited"}.get(name)
        if field is not None:
          d[field] = self._read(shard, span)
    return _make(d, self.kind, origin, os.path.dirname(self.paths[shard]), check_images=False)


class ParquetRows(Sequence):
  """The rows of a parquet file of one kind, read one row group at a time (the last `cache` row groups kept)."""

  def __init__(self, path: str, kind: str, cache: int = 2):
    import pyarrow.parquet as pq
    if not os.path.exists(path):
      raise DataError(f"parquet source {path!r} does not exist")
    try:
      self._file = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a bad file)
      raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if kind not in ("t2i", "edit"):
      raise DataError(f"parquet source {path!r}: kind {kind!r} not 't2i' or 'edit'")
    self.path, self.kind, self.cache = path, kind, max(1, cache)
    meta = self._file.metadata
    self.starts = [0]
    for g in range(meta.num_row_groups):
      self.starts.append(self.starts[-1] + meta.row_group(g).num_rows)
    if not len(self):
      raise DataError(f"{path}: no rows")
    self._groups: collections.OrderedDict = collections.OrderedDict()
    self._lock = threading.Lock()

  task_key = property(lambda self: self.kind)

  def __len__(self) -> int:
    return self.starts[-1]

  def __getstate__(self):  # grain workers reopen the file
    return {k: v for k, v in self.__dict__.items() if k not in ("_file", "_groups", "_lock")}

  def __setstate__(self, state):
    import pyarrow.parquet as pq
    self.__dict__.update(state, _file=pq.ParquetFile(state["path"]), _groups=collections.OrderedDict(),
                         _lock=threading.Lock())

  def _row(self, i: int) -> dict:
    g = bisect.bisect_right(self.starts, i) - 1
    with self._lock:  # one row group read at a time, and no reader thread keeps an evicted one alive
      if g in self._groups:
        self._groups.move_to_end(g)
      else:
        self._groups[g] = self._file.read_row_group(g)
        while len(self._groups) > self.cache:
          self._groups.popitem(last=False)
      return self._groups[g].slice(i - self.starts[g], 1).to_pylist()[0]

  def __getitem__(self, i: int):
    if not 0 <= i < len(self):
      raise IndexError(i)
    d = self._row(i)
    return _make(d, self.kind, f"{self.path}: row {i}", os.path.dirname(os.path.abspath(self.path)),
                 check_images=False)


def _image_bytes(ref) -> tuple[bytes, str]:
  """(encoded bytes, extension) of a record's image: bytes as they are, a file read as it is."""
  if isinstance(ref, bytes):
    from PIL import Image
    import io
    fmt = (Image.open(io.BytesIO(ref)).format or "png").lower()
    return ref, {"jpeg": "jpg"}.get(fmt, fmt)
  with open(ref, "rb") as f:
    return f.read(), os.path.splitext(ref)[1].lstrip(".").lower() or "png"


def write_shards(records: list, out_dir: str, prefix: str, shard_size: int = 1000) -> list[str]:
  """Text-to-image or edit records (one kind) -> WebDataset shards out_dir/PREFIX-00000.tar ... of `shard_size`
  records each, in order; -> their paths. `TarShards(out_dir + "/PREFIX-*.tar", kind)` reads them back."""
  import io
  from unirl_jax.data.records import EditRecord, T2IRecord
  if shard_size < 1:
    raise ValueError(f"shard_size must be >= 1, got {shard_size}")
  os.makedirs(out_dir, exist_ok=True)
  paths = []

  def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))

  for start in range(0, len(records), shard_size):
    path = os.path.join(out_dir, f"{prefix}-{start // shard_size:05d}.tar")
    with tarfile.open(path + ".tmp", "w", format=tarfile.USTAR_FORMAT) as tar:
      for i, r in enumerate(records[start:start + shard_size], start):
        key = f"{i:08d}"
        if isinstance(r, T2IRecord):
          data, ext = _image_bytes(r.image)
          add(tar, f"{key}.{ext}", data)
          add(tar, f"{key}.json", json.dumps({"caption": r.caption}).encode())
        elif isinstance(r, EditRecord):
          for field, ref in (("source", r.source), ("edited", r.edited)):
            data, ext = _image_bytes(ref)
            add(tar, f"{key}.{field}.{ext}", data)
          add(tar, f"{key}.json", json.dumps({"instruction": r.instruction}).encode())
        else:
          raise ValueError(f"{r.origin}: only text-to-image and edit records go into tar shards")
    os.replace(path + ".tmp", path)
    paths.append(path)
  return paths
