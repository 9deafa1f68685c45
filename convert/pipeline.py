"""HF/diffusers directory <-> self-contained Orbax directory, staged so nothing half-written is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil


from convert import qwen2_5_vl as qwen_table
from convert.safetensors_io import SafetensorsDir, save_file
from convert.table import ConversionError, flatten, to_hf, to_params
from unirl_jax import checkpoint

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
META = "unirl_jax.json"


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


def _copy_side_files(src: str, dst: str, skip=("config.json", META)) -> None:
  """Tokenizer, processor, chat template, generation config: everything that is not weights."""
  for name in os.listdir(src):
    path = os.path.join(src, name)
    if (os.path.isfile(path) and not name.endswith(WEIGHT_SUFFIXES) and name not in skip
        and not name.endswith(".index.json")):
      shutil.copy2(path, os.path.join(dst, name))


def import_qwen2_5_vl(src: str, dst: str, dtype: str = "float32", overwrite: bool = False) -> str:
  """`python -m convert qwen2_5_vl`: HF Qwen2.5-VL directory -> Orbax params + config + tokenizer files."""
  from unirl_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, abstract_params
  cfg = Qwen2_5_VLConfig.from_hf(src)
  reader = SafetensorsDir(src)
  expected = {k: v.shape for k, v in flatten(abstract_params(cfg)).items()}
  params = to_params(reader.keys(), reader.get, qwen_table.RULES, expected, qwen_table.np_dtype(dtype),
                     skip=qwen_table.skip_key(cfg), rename=qwen_table.canonical_key)
  with staged_dir(dst, overwrite) as tmp:
    checkpoint.save_params(os.path.join(tmp, "params"), params)
    shutil.copy2(os.path.join(src, "config.json"), os.path.join(tmp, "config.json"))
    _copy_side_files(src, tmp)
    with open(os.path.join(tmp, META), "w") as f:
      json.dump({"kind": "qwen2_5_vl", "param_dtype": dtype}, f)
  return dst


def export_qwen2_5_vl(src: str, dst: str, dtype: str | None = None, overwrite: bool = False,
                      max_shard_bytes: int = 5 * 2**30) -> str:
  """`python -m convert export qwen2_5_vl`: Orbax directory -> safetensors that transformers loads."""
  from unirl_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
  cfg = Qwen2_5_VLConfig.from_hf(src)
  params = checkpoint.restore_params(os.path.join(src, "params"), as_numpy=True)
  out_dtype = qwen_table.np_dtype(dtype) if dtype else None
  tensors = to_hf(params, qwen_table.RULES, qwen_table.hf_shape(cfg), out_dtype)
  with staged_dir(dst, overwrite) as tmp:
    write_sharded(tensors, tmp, max_shard_bytes)
    shutil.copy2(os.path.join(src, "config.json"), os.path.join(tmp, "config.json"))
    _copy_side_files(src, tmp)
  return dst


def write_sharded(tensors: dict, directory: str, max_shard_bytes: int) -> None:
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
    save_file(shards[0], os.path.join(directory, "model.safetensors"), {"format": "pt"})
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    save_file(shard, os.path.join(directory, name), {"format": "pt"})
    weight_map.update({k: name for k in shard})
  total = sum(v.nbytes for v in tensors.values())
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


IMPORTERS = {"qwen2_5_vl": import_qwen2_5_vl}
EXPORTERS = {"qwen2_5_vl": export_qwen2_5_vl}
__all__ = ["ConversionError", "IMPORTERS", "EXPORTERS", "staged_dir"]
