"""HF/diffusers directory <-> self-contained Orbax directory, staged so nothing half-written is left behind.

Each model kind is a `ModelSpec`: how to read its config, its key table, and where its weights live.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from typing import Any, Callable, Optional

import ml_dtypes
import numpy as np

from unirl_jax.convert.safetensors_io import SafetensorsDir, save_file
from unirl_jax.convert.table import ConversionError, Rule, default_hf_shape, flatten, to_hf, to_params
from unirl_jax import checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
META = "unirl_jax.json"
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  kind: str
  config: Callable[[str, Optional[list], dict], Any]  # (dir, tensor keys on import, meta on export) -> config
  abstract_params: Callable[[Any], Any]
  rules: Callable[[Any], list[Rule]]
  weights_name: str = "model.safetensors"
  subdir: Optional[str] = None  # inside a diffusers pipeline folder (e.g. "transformer")
  rename: Callable[[str], str] = lambda k: k
  skip: Callable[[Any], Callable[[str], bool]] = lambda cfg: (lambda k: False)
  hf_shape: Callable[[Any], Callable] = lambda cfg: default_hf_shape
  meta: Callable[[Any], dict] = lambda cfg: {}
  export_extra: Callable[[Any], dict] = lambda cfg: {}  # tensors with no param (e.g. BN step counters)

  def weights_dir(self, src: str) -> str:
    if self.subdir and os.path.isdir(os.path.join(src, self.subdir)):
      return os.path.join(src, self.subdir)
    if not os.path.isdir(src):
      raise FileNotFoundError(f"source {src} is not a directory")
    return src


@contextlib.contextmanager
def staged_dir(dst: str, overwrite: bool = False):
  """Yields a scratch dir beside `dst`; renamed onto `dst` only if the block succeeds."""
  dst = os.path.abspath(dst)
  if os.path.exists(dst) and os.listdir(dst) and not overwrite:
    raise FileExistsError(f"destination {dst} exists and is not empty (pass --overwrite to replace it)")
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(dst)}.partial-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if os.path.exists(dst):
    shutil.rmtree(dst)
  os.replace(tmp, dst)


def copy_side_files(src: str, dst: str, skip=("config.json", META)) -> None:
  """Tokenizer, processor, chat template, generation config: everything that is not weights."""
  for name in os.listdir(src):
    path = os.path.join(src, name)
    if (os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and name not in skip
        and not name.endswith(".index.json")):
      shutil.copy2(path, os.path.join(dst, name))


def import_model(spec: ModelSpec, src: str, dst: str, dtype: str = "float32", overwrite: bool = False,
                 variant: Optional[str] = None) -> str:
  """HF/diffusers weights (optionally one `variant`, e.g. "bf16") -> DST/{params/, config.json, unirl_jax.json}."""
  wdir = spec.weights_dir(src)
  reader = SafetensorsDir(wdir, variant)
  cfg = spec.config(wdir, reader.keys(), {})
  expected = {k: v.shape for k, v in flatten(spec.abstract_params(cfg)).items()}
  params = to_params(reader.keys(), reader.get, spec.rules(cfg), expected, DTYPES[dtype], skip=spec.skip(cfg),
                     rename=spec.rename)
  with staged_dir(dst, overwrite) as tmp:
    checkpoint.save_params(os.path.join(tmp, "params"), params)
    shutil.copy2(os.path.join(wdir, "config.json"), os.path.join(tmp, "config.json"))
    copy_side_files(wdir, tmp)
    with open(os.path.join(tmp, META), "w") as f:
      json.dump({"kind": spec.kind, "param_dtype": dtype, **spec.meta(cfg)}, f)
  return dst


def read_meta(path: str) -> dict:
  meta = os.path.join(path, META)
  if not os.path.exists(meta):
    raise FileNotFoundError(f"{path} has no {META}: not a directory written by `python -m convert`")
  with open(meta) as f:
    return json.load(f)


def export_model(spec: ModelSpec, src: str, dst: str, dtype: Optional[str] = None, overwrite: bool = False,
                 max_shard_bytes: int = 5 * 2**30) -> str:
  """A converted directory -> safetensors (sharded past `max_shard_bytes`) that from_pretrained loads."""
  meta = read_meta(src)
  if meta.get("kind") != spec.kind:
    raise ValueError(f"{src} holds a {meta.get('kind')!r} checkpoint, not {spec.kind!r}")
  cfg = spec.config(src, None, meta)
  params = checkpoint.restore_params(os.path.join(src, "params"), as_numpy=True)
  tensors = to_hf(params, spec.rules(cfg), spec.hf_shape(cfg), DTYPES[dtype] if dtype else None)
  tensors.update(spec.export_extra(cfg))
  with staged_dir(dst, overwrite) as tmp:
    write_sharded(tensors, tmp, max_shard_bytes, spec.weights_name)
    shutil.copy2(os.path.join(src, "config.json"), os.path.join(tmp, "config.json"))
    copy_side_files(src, tmp)
  return dst


def write_sharded(tensors: dict, directory: str, max_shard_bytes: int, name: str = "model.safetensors") -> None:
  shards, cur, size = [], {}, 0
  for k in sorted(tensors):
    v = tensors[k]
    if cur and size + v.nbytes > max_shard_bytes:
      shards.append(cur)
      cur, size = {}, 0
    cur[k] = v
    size += v.nbytes
  shards.append(cur)
  if len(shards) == 1:
    save_file(shards[0], os.path.join(directory, name), {"format": "pt"})
    return
  stem = name[:-len(".safetensors")]
  weight_map = {}
  for i, shard in enumerate(shards):
    fname = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(directory, fname), {"format": "pt"})
    weight_map.update({k: fname for k in shard})
  total = sum(v.nbytes for v in tensors.values())
  with open(os.path.join(directory, f"{name}.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def _specs() -> dict[str, ModelSpec]:
  from unirl_jax.convert import clip, dc_ae, qwen2_5_vl, sana
  return {s.kind: s for s in (qwen2_5_vl.SPEC, sana.SPEC, dc_ae.SPEC, clip.SPEC)}


def import_kind(kind: str, src: str, dst: str, **kw) -> str:
  return import_model(_specs()[kind], src, dst, **kw)


def export_kind(kind: str, src: str, dst: str, **kw) -> str:
  return export_model(_specs()[kind], src, dst, **kw)


def kinds() -> list[str]:
  return sorted(_specs())


def import_qwen2_5_vl(src, dst, **kw):
  return import_kind("qwen2_5_vl", src, dst, **kw)


def export_qwen2_5_vl(src, dst, **kw):
  return export_kind("qwen2_5_vl", src, dst, **kw)


__all__ = ["ConversionError", "ModelSpec", "import_model", "export_model", "staged_dir", "write_sharded"]
