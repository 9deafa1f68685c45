"""HF <-> Orbax conversion of Qwen2.5-VL: bit-exact round trip, both key layouts, clear errors, no partial output."""

import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch

from unirl_jax.convert.pipeline import export_qwen2_5_vl, import_qwen2_5_vl, write_sharded
from unirl_jax.convert.safetensors_io import SafetensorsDir, save_file
from unirl_jax.convert.table import ConversionError
from unirl_jax.models import qwen2_5_vl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tensors(path):
  r = SafetensorsDir(path)
  return {k: np.array(r.get(k)) for k in r.keys()}


def copy_with(src, dst, edit):
  """A copy of an HF dir whose tensors went through `edit(dict) -> dict`."""
  shutil.copytree(src, dst)
  t = edit(tensors(src))
  os.remove(os.path.join(dst, "model.safetensors"))
  save_file(t, os.path.join(dst, "model.safetensors"))
  return str(dst)


def test_round_trip_is_bit_exact(hf_dir, jax_dir, tmp_path):
  out = export_qwen2_5_vl(jax_dir, str(tmp_path / "hf"))
  a, b = tensors(hf_dir), tensors(out)
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert os.path.exists(os.path.join(out, "config.json"))


def test_exported_dir_loads_in_transformers(hf_model, jax_dir, tmp_path):
  from transformers import Qwen2_5_VLForConditionalGeneration
  out = export_qwen2_5_vl(jax_dir, str(tmp_path / "hf"), max_shard_bytes=20_000)  # sharded + index json
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  m = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
  ids = torch.tensor([[5, 6, 7, 8]])
  with torch.no_grad():
    np.testing.assert_array_equal(m(input_ids=ids).logits.numpy(), hf_model(input_ids=ids).logits.numpy())


def test_in_memory_key_layout_and_sharded_input(hf_dir, jax_dir, tmp_path):
  """transformers' in-memory names (model.language_model.*, model.visual.*) over several shard files."""
  src = tmp_path / "v5"
  shutil.copytree(hf_dir, src)
  os.remove(src / "model.safetensors")
  renamed = {k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else "model." + k: v
             for k, v in tensors(hf_dir).items()}
  write_sharded(renamed, str(src), max_shard_bytes=30_000)
  assert len([n for n in os.listdir(src) if n.endswith(".safetensors")]) > 1
  out = import_qwen2_5_vl(str(src), str(tmp_path / "jax"))
  _, p1 = qwen2_5_vl.load(out)
  _, p2 = qwen2_5_vl.load(jax_dir)
  for x, y in zip(*(map(np.asarray, __import__("jax").tree.leaves(p)) for p in (p1, p2))):
    np.testing.assert_array_equal(x, y)


def test_untied_lm_head(tmp_path):
  from conftest import save_tiny_hf
  src = save_tiny_hf(tmp_path / "untied", seed=1, tie_word_embeddings=False)
  assert "lm_head.weight" in tensors(src)
  out = import_qwen2_5_vl(str(src), str(tmp_path / "jax"))
  model, params = qwen2_5_vl.load(out)
  assert "lm_head" in params and not model.config.tie_word_embeddings
  back = export_qwen2_5_vl(out, str(tmp_path / "back"))
  np.testing.assert_array_equal(tensors(back)["lm_head.weight"], tensors(src)["lm_head.weight"])
  # Untied but lm_head.weight missing: an error naming it.
  bad = copy_with(src, tmp_path / "nohead", lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
  with pytest.raises(ConversionError, match="missing keys: 'lm_head.weight'"):
    import_qwen2_5_vl(bad, str(tmp_path / "x"))


def test_bf16_source_and_target(hf_dir, tmp_path):
  src = copy_with(hf_dir, tmp_path / "bf16", lambda t: {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()})
  out = import_qwen2_5_vl(src, str(tmp_path / "jax"), dtype="bfloat16")
  model, params = qwen2_5_vl.load(out)
  emb = params["language_model"]["embed_tokens"]["embedding"]
  assert emb.dtype == np.dtype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(np.asarray(emb), tensors(src)["model.embed_tokens.weight"])
  back = export_qwen2_5_vl(out, str(tmp_path / "back"))
  for k, v in tensors(src).items():
    np.testing.assert_array_equal(tensors(back)[k], v)


@pytest.mark.parametrize("edit,pattern", [
    (lambda t: {k: v for k, v in t.items() if k != "model.layers.1.mlp.up_proj.weight"},
     r"missing keys: 'model.layers.1.mlp.up_proj.weight'"),
    (lambda t: {**t, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)},
     r"unexpected keys .*'model.layers.0.mlp.extra.weight'"),
    (lambda t: {**t, "model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)},
     r"key 'model.layers.0.self_attn.k_proj.weight': checkpoint shape \(16, 64\) but the model expects "
     r"\(32, 64\)"),
    (lambda t: {**t, "model.layers.7.input_layernorm.weight": np.ones(64, np.float32)},
     r"key 'model.layers.7.input_layernorm.weight': layer 7 but the model has 2 layers"),
    (lambda t: {**t, "visual.patch_embed.proj.weight": np.zeros((32, 3, 2, 14, 13), np.float32)},
     r"key 'visual.patch_embed.proj.weight': checkpoint shape \(32, 3, 2, 14, 13\)"),
])
def test_bad_keys_are_named_and_nothing_is_written(hf_dir, tmp_path, edit, pattern):
  src = copy_with(hf_dir, tmp_path / "bad", edit)
  dst = tmp_path / "out"
  with pytest.raises(ConversionError, match=pattern):
    import_qwen2_5_vl(src, str(dst))
  assert not dst.exists()
  assert not [n for n in os.listdir(tmp_path) if "partial" in n]


def test_failure_while_writing_leaves_nothing(hf_dir, tmp_path, monkeypatch):
  from unirl_jax import checkpoint
  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(checkpoint, "save_params", boom)
  with pytest.raises(OSError):
    import_qwen2_5_vl(hf_dir, str(tmp_path / "out"))
  assert os.listdir(tmp_path) == []


def test_existing_destination_is_not_overwritten(hf_dir, tmp_path):
  dst = tmp_path / "out"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    import_qwen2_5_vl(hf_dir, str(dst))
  assert (dst / "keep.txt").read_text() == "mine"


def test_output_is_self_contained(hf_dir, jax_dir):
  names = set(os.listdir(jax_dir))
  assert {"config.json", "params", "generation_config.json"} <= names
  assert not [n for n in names if n.endswith(".safetensors")]
  with open(os.path.join(jax_dir, "unirl_jax.json")) as f:
    assert json.load(f) == {"kind": "qwen2_5_vl", "param_dtype": "float32"}


def test_command_line(hf_dir, tmp_path):
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  run = lambda *a: subprocess.run([sys.executable, "-m", "convert", *a], cwd=ROOT, env=env, capture_output=True,
                                  text=True)
  r = run("qwen2_5_vl", "--src", hf_dir, "--dst", str(tmp_path / "jax"), "--dtype", "float32")
  assert r.returncode == 0, r.stderr
  r = run("export", "qwen2_5_vl", "--src", str(tmp_path / "jax"), "--dst", str(tmp_path / "hf"))
  assert r.returncode == 0, r.stderr
  assert sorted(tensors(str(tmp_path / "hf"))) == sorted(tensors(hf_dir))
  r = run("qwen2_5_vl", "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "y"))
  assert r.returncode == 2 and "error:" in r.stderr
