"""Bad inputs fail with an error that names the culprit (a file, line/row, key or setting), raised by project code.

One table: each case is a trigger (given a fresh tmp dir), the expected exception type and a regex that its
message must match. The exception must also be raised from a frame of this project (`unirl_jax/` or
`convert/`), not from deep inside jax / orbax / pyarrow / json.
"""

from __future__ import annotations

import json
import os
import re
from unittest import mock

import numpy as np
import pytest

from unirl_jax import run_config
from unirl_jax.checkpoint import CheckpointMismatch
from unirl_jax.convert.table import ConversionError
from unirl_jax.data.records import DataError

ConfigError = run_config.ConfigError
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT_DIRS = tuple(os.path.join(ROOT, d) + os.sep for d in ("unirl_jax", "convert"))
DIST_ENV = ("UNIRL_COORDINATOR", "UNIRL_NUM_PROCESSES", "UNIRL_PROCESS_ID", "SLURM_NTASKS", "SLURM_JOB_ID",
            "TPU_WORKER_HOSTNAMES")


# ---------------------------------------------------------------------------------------------------- 1. configs

def load(d):
  return lambda tmp: run_config.load(d)


def parse(*flags):
  def go(tmp):
    from unirl_jax import train
    return train.parse(["train", *flags])
  return go


def mesh_shape(n_devices, **sizes):
  def go(tmp):
    from unirl_jax.sharding import MeshConfig, mesh_shape
    return mesh_shape(MeshConfig(**sizes), n_devices)
  return go


def dist(env=None, **settings):
  def go(tmp):
    from unirl_jax.distributed import DistributedSettings, settings_from_env
    clean = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    with mock.patch.dict(os.environ, {**clean, **(env or {})}, clear=True):
      return settings_from_env(DistributedSettings(**settings))
  return go


def launch(cmd, nproc):
  def go(tmp):
    from unirl_jax.launch import launch
    return launch(cmd, nproc)
  return go


# ---------------------------------------------------------------------------------------------------- 2. converters

def sana_source(tmp, edit=None, weights=True, config=True):
  """A tiny diffusers SANA folder written with numpy alone: config.json and every key of the SANA key table at its
  HF shape (no torch, no model built; only the param shapes are traced). `edit(tensors)` changes the tensors."""
  from safetensors.numpy import save_file
  from unirl_jax.convert import sana as sana_convert
  from unirl_jax.convert.table import default_hf_shape, flatten
  from unirl_jax.models import sana_config
  from unirl_jax.models.sana import abstract_params
  cfg = sana_config.tiny()
  src = tmp / "sana_src"
  src.mkdir()
  if config:
    (src / "config.json").write_text(json.dumps(cfg.to_diffusers_dict()))
  if weights:
    expected = {k: v.shape for k, v in flatten(abstract_params(cfg)).items()}
    tensors = {}
    for rule in sana_convert.rules(cfg):
      if rule.path not in expected:
        continue
      shape = expected[rule.path]
      rows = range(shape[0]) if rule.stacked else [None]
      for i in rows:
        hf = default_hf_shape(rule, shape[1:] if rule.stacked else shape)
        tensors[rule.hf.format(i=i)] = np.full(hf, 0.5, np.float32)
    save_file(edit(tensors) if edit else tensors, str(src / "diffusion_pytorch_model.safetensors"))
  return src


def convert_sana(edit=None, cut=None, **kw):
  """Imports the tiny SANA folder (after `edit` of its tensors and, with `cut(size)`, its file cut to that many
  bytes) with the real `python -m convert sana` path."""
  def go(tmp):
    from unirl_jax.convert.pipeline import import_kind
    src = sana_source(tmp, edit, **kw)
    if cut is not None:
      f = src / "diffusion_pytorch_model.safetensors"
      data = f.read_bytes()
      f.write_bytes(data[:cut(len(data))])
    return import_kind("sana", str(src), str(tmp / "out"))
  return go


def convert_cli_sana(edit=None, cut=None):
  """`python -m convert sana` itself: a bad file must end as `error: ...` and exit status 2, not a traceback;
  re-raised here as a ConversionError carrying what it printed."""
  def go(tmp):
    import contextlib
    import io
    from convert.__main__ import main
    src = sana_source(tmp, edit)
    if cut is not None:
      f = src / "diffusion_pytorch_model.safetensors"
      data = f.read_bytes()
      f.write_bytes(data[:cut(len(data))])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      rc = main(["sana", "--src", str(src), "--dst", str(tmp / "out")])
    if rc != 0:
      raise ConversionError(f"exit {rc}: {err.getvalue()}")
  return go


def drop(key):
  return lambda t: {k: v for k, v in t.items() if k != key}


def put(key, value):
  return lambda t: {**t, key: value}


def retype(key, dtype):
  return lambda t: {**t, key: t[key].astype(dtype)}


# ---------------------------------------------------------------------------------------------------- 3. data records

def write(tmp, name, text: str | bytes):
  p = tmp / name
  p.parent.mkdir(parents=True, exist_ok=True)
  (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
  return str(p)


def png(tmp, name="a.png"):
  from PIL import Image
  p = tmp / name
  Image.new("RGB", (4, 4), (255, 0, 0)).save(p)
  return str(p)


def jsonl(*rows):
  return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def manifest(*rows, name="m.jsonl", image=True):
  def go(tmp):
    from unirl_jax.data.records import read_sources
    if image:
      png(tmp)
    return read_sources([write(tmp, name, jsonl(*rows))])
  return go


def sources(spec_of):
  def go(tmp):
    from unirl_jax.data.records import read_sources
    return read_sources([spec_of(tmp)])
  return go


def tar_shards(content: bytes, kind="t2i"):
  def go(tmp):
    from unirl_jax.data.sources import TarShards
    return TarShards(write(tmp, "shard-00000.tar", content), kind)
  return go


def questions(name, text, image=False):
  def go(tmp):
    from unirl_jax.data.questions import read_question_file
    if image:
      png(tmp)
      write(tmp, "bad.png", b"not an image")
    return read_question_file(write(tmp, name, text))
  return go


EDIT = {"image": "a.png", "prompt": "make it blue", "reverse_prompt": "make it red", "caption": "a red square",
        "target_caption": "a blue square"}


def edits(name, text, make_image=True):
  def go(tmp):
    from unirl_jax.data.edits import read_edit_file
    if make_image:
      png(tmp)
      write(tmp, "bad.png", b"not an image")
    return read_edit_file(write(tmp, name, text))
  return go


# ---------------------------------------------------------------------------------------------------- 4. checkpoints

def restore_params(target_of, saved=None):
  def go(tmp):
    import jax
    from unirl_jax import checkpoint
    saved_tree = saved if saved is not None else {"a": np.zeros((2, 3), np.float32), "b": {"c": np.ones(4, np.int32)}}
    checkpoint.save_params(str(tmp / "params"), saved_tree)
    S = jax.ShapeDtypeStruct
    return checkpoint.restore_params(str(tmp / "params"), target_of(S))
  return go


def restore_missing_dir(tmp):
  from unirl_jax import checkpoint
  return checkpoint.restore_params(str(tmp / "nothing_here"))


def train_restore(target_of, latest=False):
  """Saves a small train state at step 1, then restores it (`restore`, or with `latest` `restore_latest`, which
  compares the saved tree with the wanted one first) into the abstract state `target_of(ShapeDtypeStruct)`."""
  def go(tmp):
    import jax
    import jax.numpy as jnp
    from unirl_jax import checkpoint
    ckpts = checkpoint.TrainCheckpoints(str(tmp / "ckpt"), async_save=False)
    try:
      ckpts.save(1, {"w": jnp.zeros((2, 3)), "opt": {"mu": jnp.zeros(3)}}, extra={"pos": 3}, force=True)
      ckpts.wait()
      target = target_of(jax.ShapeDtypeStruct)
      return ckpts.restore_latest(target, log=lambda m: None) if latest else ckpts.restore(target)
    finally:
      ckpts.close()
  return go


def unified_load(files):
  def go(tmp):
    from unirl_jax.models import unified
    d = tmp / "unified_ckpt"
    d.mkdir()
    for name, content in files(unified).items():
      (d / name).write_text(content if isinstance(content, str) else json.dumps(content))
    if (tmp / "params_tree").exists():
      import shutil
      shutil.move(str(tmp / "params_tree"), str(d / "params"))
    return unified.load(str(d))
  return go


def unified_load_params(params):
  """A unified dir whose config is `unified.tiny()` but whose params are `params` (another model's)."""
  def go(tmp):
    from unirl_jax import checkpoint
    checkpoint.save_params(str(tmp / "params_tree"), params)
    return unified_load(lambda u: {"unified.json": u.config_to_dict(u.tiny()),
                                   "unirl_jax.json": {"kind": "unirl", "param_dtype": "float32"}})(tmp)
  return go


def case(case_id, trigger, exc, pattern):
  return pytest.param(trigger, exc, pattern, id=case_id)


F32 = np.float32
TRUNCATED = lambda n: n - 7  # the last tensor (transformer_blocks.1.scale_shift_table) loses 7 bytes  # noqa: E731
HEADER_CUT = lambda n: 20  # the header's JSON cut mid-way  # noqa: E731
TOO_SHORT = lambda n: 4  # not even the 8-byte header length  # noqa: E731

CASES = [
    # 1. configs ----------------------------------------------------------------------------------------------
    case("cfg-unknown-nested-key", load({"optim": {"lrr": 1}}), ConfigError,
         r"unknown setting 'optim\.lrr'; did you mean 'optim\.lr'"),
    case("cfg-unknown-top-key", load({"promts": ["a"]}), ConfigError,
         r"unknown setting 'promts'; did you mean 'prompts'"),
    case("cfg-unknown-deep-key", load({"dm": {"nope_at_all": 1}}), ConfigError, r"unknown setting 'dm\.nope_at_all'"),
    case("cfg-type-int-as-str", load({"group_size": "8"}), ConfigError, r"group_size must be int, got '8'"),
    case("cfg-type-bool-as-int", load({"seed": True}), ConfigError, r"seed must be int, got True"),
    case("cfg-type-float-as-str", load({"optim": {"lr": "fast"}}), ConfigError, r"optim\.lr must be float"),
    case("cfg-type-section-as-scalar", load({"optim": 3}), ConfigError, r"optim must be a section"),
    case("cfg-type-list-as-int", load({"train": {"trainable": 3}}), ConfigError, r"train\.trainable must be a list"),
    case("cfg-type-optional-str", load({"model": {"frozen_dtype": 16}}), ConfigError, r"model\.frozen_dtype: 16"),
    case("cfg-enum-mode", load({"mode": "sft"}), ConfigError, r"mode 'sft' not one of"),
    case("cfg-enum-text-pad", load({"text_pad": "longst"}), ConfigError, r"text_pad 'longst'"),
    case("cfg-enum-data-mix", load({"mode": "pretrain", "data": {"mix": "row"}}), ConfigError, r"data\.mix 'row'"),
    case("cfg-enum-data-synthetic", load({"mode": "pretrain", "data": {"synthetic": "circles"}}), ConfigError,
         r"data\.synthetic 'circles'"),
    case("cfg-enum-distributed-mode", load({"distributed": {"mode": "yes"}}), ConfigError,
         r"distributed\.mode 'yes' not one of"),
    case("cfg-enum-schedule", load({"optim": {"schedule": "cos"}}), ConfigError, r"optim\.schedule 'cos'"),
    case("cfg-enum-remat", load({"model": {"remat": "ful"}}), ConfigError, r"model\.remat\.\w+ 'ful'"),
    case("cfg-enum-remat-submodel", load({"model": {"remat": {"vit": "full"}}}), ConfigError,
         r"model\.remat: unknown sub-model.*'vit'"),
    case("cfg-enum-kernels", load({"model": {"kernels": "gpu"}}), ConfigError, r"model\.kernels 'gpu'"),
    case("cfg-value-group-size", load({"group_size": 0}), ConfigError, r"group_size must be >= 1, got 0"),
    case("cfg-value-reward-weight", load({"reward": "jpeg_compressibility:x"}), ConfigError,
         r"weight 'x' of 'jpeg_compressibility' is not a number"),
    case("cfg-value-remote-reward-url", load({"remote_rewards": {"pick": "ftp://h"}}), ConfigError,
         r"remote_rewards\.pick: give an http\(s\) url"),
    case("cfg-value-clip-reward-kind", load({"clip_rewards": {"clip_nope": "d"}}), ConfigError,
         r"clip_rewards\.clip_nope: not a CLIP reward"),
    case("cfg-mesh-zero-size", load({"mesh": {"fsdp": 0}}), ConfigError, r"mesh\.fsdp"),
    case("cfg-mesh-two-wildcards", load({"mesh": {"data": -1, "fsdp": -1}}), ConfigError, r"mesh\.(data|fsdp)"),
    case("mesh-not-divisible", mesh_shape(8, data=-1, fsdp=3), ValueError,
         r"mesh MeshConfig\(data=-1, fsdp=3, tensor=1\): 8 devices not divisible by 3"),
    case("mesh-too-many-devices", mesh_shape(8, data=4, fsdp=4), ValueError, r"needs 16 devices, 8 available"),
    case("mesh-zero-size", mesh_shape(8, fsdp=0), ValueError, r"mesh\.fsdp=0: a mesh size is a positive number"),
    case("mesh-two-wildcards", mesh_shape(8, data=-1, tensor=-1), ValueError,
         r"mesh\.data, mesh\.tensor are all -1: at most one axis"),
    case("train-flag-misspelled", parse("--config.misspelled=1"), ConfigError, r"unknown setting 'misspelled'"),
    case("train-flag-nested-misspelled", parse("--config.optim.lrr=1"), ConfigError,
         r"unknown setting 'optim\.lrr'; did you mean 'optim\.lr'"),
    case("train-flag-bad-value", parse("--config.group_size=abc"), ConfigError,
         r"flag --config\.group_size=abc: invalid literal for int\(\) with base 10: 'abc'$"),
    case("train-flag-bad-enum", parse("--config.text_pad=longst"), ConfigError, r"text_pad 'longst'"),
    case("train-config-file-missing", parse("--config=/nonexistent/cfg.py"), ConfigError, r"/nonexistent/cfg\.py"),
    case("train-extra-argument", parse("stray"), ConfigError, r"unexpected arguments: \['stray'\]"),
    case("dist-partial-settings", dist(coordinator="h:1"), ValueError,
         r"give all of coordinator, num_processes and process_id.*coordinator='h:1'"),
    case("dist-partial-env", dist({"UNIRL_NUM_PROCESSES": "2"}), ValueError, r"UNIRL_COORDINATOR"),
    case("dist-process-id-range", dist(coordinator="h:1", num_processes=2, process_id=2), ValueError,
         r"process_id 2 is not in \[0, num_processes=2\)"),
    case("dist-env-not-a-number", dist({"UNIRL_NUM_PROCESSES": "two"}), ValueError, r"UNIRL_NUM_PROCESSES"),
    case("launch-no-command", launch([], 2), ValueError, r"no command: give it after `--`"),
    case("launch-nproc-zero", launch(["true"], 0), ValueError, r"--nproc must be >= 1, got 0"),

    # 2. converters (the tiny SANA through `python -m convert sana`'s import_kind) -------------------------------
    case("conv-missing-key", convert_sana(drop("proj_out.bias")), ConversionError, r"missing keys: 'proj_out\.bias'"),
    case("conv-missing-stacked-key", convert_sana(drop("transformer_blocks.1.scale_shift_table")), ConversionError,
         r"missing keys: 'transformer_blocks\.1\.scale_shift_table'"),
    case("conv-unexpected-key", convert_sana(put("extra.weight", np.zeros(3, F32))), ConversionError,
         r"unexpected keys \(no param for them\): 'extra\.weight'"),
    case("conv-extra-layer", convert_sana(put("transformer_blocks.2.scale_shift_table", np.zeros((6, 16), F32))),
         ConversionError, r"'transformer_blocks\.2\.scale_shift_table': layer 2 but the model has 2 layers"),
    case("conv-wrong-shape", convert_sana(put("proj_out.weight", np.zeros((5, 5), F32))), ConversionError,
         r"key 'proj_out\.weight': checkpoint shape \(5, 5\) but the model expects"),
    case("conv-wrong-dtype-int", convert_sana(retype("proj_out.weight", np.int32)), ConversionError,
         r"proj_out\.weight.*int32"),
    case("conv-wrong-dtype-bool", convert_sana(retype("caption_norm.weight", np.bool_)), ConversionError,
         r"caption_norm\.weight.*bool"),
    case("conv-truncated-data", convert_sana(cut=TRUNCATED), ValueError, r"diffusion_pytorch_model\.safetensors"),
    case("conv-truncated-header", convert_sana(cut=HEADER_CUT), ValueError, r"diffusion_pytorch_model\.safetensors"),
    case("conv-not-safetensors", convert_sana(cut=TOO_SHORT), ValueError, r"diffusion_pytorch_model\.safetensors"),
    case("conv-cli-truncated-data", convert_cli_sana(cut=TRUNCATED), ConversionError,
         r"exit 2: error: .*diffusion_pytorch_model\.safetensors"),
    case("conv-cli-not-safetensors", convert_cli_sana(cut=TOO_SHORT), ConversionError,
         r"exit 2: error: .*diffusion_pytorch_model\.safetensors"),
    case("conv-cli-missing-key", convert_cli_sana(drop("proj_out.bias")), ConversionError,
         r"exit 2: error: missing keys: 'proj_out\.bias'"),
    case("conv-no-weights", convert_sana(weights=False), FileNotFoundError, r"no \.safetensors weights in .*sana_src"),
    case("conv-no-config", convert_sana(config=False), FileNotFoundError, r"sana_src/config\.json"),

    # 3. data records ----------------------------------------------------------------------------------------------
    case("manifest-not-json", manifest({"caption": "x", "image": "a.png"}, "{not json"), DataError,
         r"m\.jsonl:2: not valid JSON"),
    case("manifest-not-object", manifest("[1, 2]"), DataError, r"m\.jsonl:1: expected a JSON object"),
    case("manifest-missing-field", manifest({"type": "t2i", "image": "a.png"}), DataError,
         r"m\.jsonl:1: missing field 'caption' or 'prompt' or 'text'"),
    case("manifest-missing-edit-field", manifest({"type": "edit", "source": "a.png", "instruction": "x"}), DataError,
         r"m\.jsonl:1: missing field 'edited' or 'edited_img'"),
    case("manifest-missing-image", manifest({"caption": "x", "image": "nope.png"}), DataError,
         r"m\.jsonl:1: image file not found: .*nope\.png"),
    case("manifest-unknown-type", manifest({"type": "video", "caption": "x"}), DataError,
         r"m\.jsonl:1: unknown record type 'video'"),
    case("manifest-bad-chat-role", manifest({"type": "chat", "messages": [{"role": "bot", "content": "x"}]}),
         DataError, r"m\.jsonl:1: messages\[0\] must be"),
    case("manifest-file-missing", sources(lambda tmp: str(tmp / "none.jsonl")), FileNotFoundError, r"none\.jsonl"),
    case("sources-bad-spec", sources(lambda tmp: "data.csv"), DataError, r"data source 'data\.csv': expected"),
    case("sources-bad-parquet", sources(lambda tmp: "t2i:" + write(tmp, "x.parquet", b"not parquet at all")),
         DataError, r"x\.parquet"),
    case("sources-bad-parquet-streamed", lambda tmp: __import__("unirl_jax.data.sources").data.sources.ParquetRows(
        write(tmp, "x.parquet", b"not parquet at all"), "t2i"), DataError, r"x\.parquet: not a readable parquet"),
    case("tar-not-a-tar", tar_shards(b"this is not a tar file" * 40), DataError,
         r"shard-00000\.tar: not a readable tar shard"),
    case("tar-empty-file", tar_shards(b""), DataError, r"shard-00000\.tar"),
    case("tar-bad-kind", tar_shards(b"", kind="video"), DataError, r"kind 'video' not 't2i' or 'edit'"),
    case("tar-no-match", sources(lambda tmp: f"t2i:{tmp}/none-{{00000..00001}}.tar"), DataError,
         r"none-\{00000\.\.00001\}\.tar.*2 missing"),
    case("questions-no-answer", questions("q.jsonl", jsonl({"question": "1+1?", "answer": "2"}, {"question": "x"})),
         DataError, r"q\.jsonl:2: no answer"),
    case("questions-not-json", questions("q.jsonl", "{oops\n"), DataError, r"q\.jsonl:1: not JSON"),
    case("questions-empty-question", questions("q.jsonl", jsonl({"question": " ", "answer": "2"})), DataError,
         r"q\.jsonl:1: the question must be non-empty text"),
    case("questions-two-images",
         questions("q.jsonl", jsonl({"question": "x", "answer": "1", "images": ["a.png", "a.png"]}), image=True),
         DataError, r"q\.jsonl:1: 2 images"),
    case("questions-missing-image", questions("q.jsonl", jsonl({"question": "x", "answer": "1", "image": "no.png"})),
         DataError, r"q\.jsonl:1: image file not found: .*no\.png"),
    case("questions-unreadable-image",
         questions("q.jsonl", jsonl({"question": "x", "answer": "1", "image": "bad.png"}), image=True),
         DataError, r"q\.jsonl:1: unreadable image .*bad\.png"),
    case("questions-wrong-extension", questions("q.csv", "question,answer\n"), DataError,
         r"question file '.*q\.csv': expected \.jsonl or \.parquet"),
    case("questions-file-missing", lambda tmp: __import__("unirl_jax.data.questions").data.questions
         .read_question_file(str(tmp / "none.jsonl")), FileNotFoundError, r"question file '.*none\.jsonl'"),
    case("questions-bad-parquet", questions("q.parquet", b"not parquet at all"), DataError, r"q\.parquet"),
    case("edits-missing-field", edits("e.jsonl", jsonl({"image": "a.png", "prompt": "x"})), DataError,
         r"e\.jsonl:1: missing field 'reverse_prompt'"),
    case("edits-empty-text", edits("e.jsonl", jsonl({**EDIT, "caption": ""})), DataError,
         r"e\.jsonl:1: field 'caption' must be non-empty text"),
    case("edits-not-object", edits("e.jsonl", "3\n"), DataError, r"e\.jsonl:1: expected a JSON object"),
    case("edits-missing-image", edits("e.jsonl", jsonl({**EDIT, "image": "gone.png"})), DataError,
         r"e\.jsonl:1: image file not found: .*gone\.png"),
    case("edits-unreadable-image", edits("e.jsonl", jsonl(EDIT, {**EDIT, "image": "bad.png"})), DataError,
         r"e\.jsonl:2: unreadable image .*bad\.png"),
    case("edits-image-not-a-path", edits("e.jsonl", jsonl({**EDIT, "image": 7})), DataError,
         r"e\.jsonl:1: image field is neither a path nor bytes \(int\)"),

    # 4. checkpoints ---------------------------------------------------------------------------------------------
    case("restore-params-wrong-shape", restore_params(lambda S: {"a": S((3, 2), F32), "b": {"c": S((4,), np.int32)}}),
         ValueError, r"'?a'?.*\(2, 3\).*\(3, 2\)|'?a'?.*\(3, 2\).*\(2, 3\)"),
    case("restore-params-missing-key",
         restore_params(lambda S: {"a": S((2, 3), F32), "b": {"c": S((4,), np.int32)}, "d": S((1,), F32)}),
         ValueError, r"params in .* do not fit the model: d: not in the checkpoint"),
    case("restore-params-extra-saved-key", restore_params(lambda S: {"a": S((2, 3), F32)}), ValueError, r"'?b'?"),
    case("restore-params-no-dir", restore_missing_dir, FileNotFoundError, r"nothing_here"),
    case("train-restore-wrong-shape",
         train_restore(lambda S: {"w": S((4, 3), np.float32), "opt": {"mu": S((3,), np.float32)}}), ValueError,
         r"'?w'?.*\(2, 3\).*\(4, 3\)|'?w'?.*\(4, 3\).*\(2, 3\)"),
    case("train-restore-missing-key",
         train_restore(lambda S: {"w": S((2, 3), np.float32), "opt": {"mu": S((3,), np.float32), "nu": S((3,),
                                                                                                        np.float32)}}),
         ValueError, r"nu"),
    case("train-restore-latest-wrong-shape",
         train_restore(lambda S: {"w": S((4, 3), np.float32), "opt": {"mu": S((3,), np.float32)}}, latest=True),
         CheckpointMismatch, r"checkpoint step 1 in .*ckpt was written by another config.*w: shape \(2, 3\) saved, "
                             r"\(4, 3\) wanted"),
    case("train-restore-latest-missing-key",
         train_restore(lambda S: {"w": S((2, 3), np.float32), "opt": {"mu": S((3,), np.float32), "nu": S((3,),
                                                                                                        np.float32)}},
                       latest=True), CheckpointMismatch, r"ckpt was written by another config.*opt/nu: not in the "
                                                         r"checkpoint"),
    case("train-restore-latest-wrong-dtype",
         train_restore(lambda S: {"w": S((2, 3), np.int32), "opt": {"mu": S((3,), np.float32)}}, latest=True),
         CheckpointMismatch, r"w: dtype float32 saved, int32 wanted"),
    case("train-restore-no-checkpoint", lambda tmp: __import__("unirl_jax.checkpoint").checkpoint.TrainCheckpoints(
        str(tmp / "empty"), async_save=False).restore({}), FileNotFoundError, r"no checkpoint in .*empty"),
    case("unified-no-config", unified_load(lambda u: {}), FileNotFoundError, r"unified_ckpt has no unified\.json"),
    case("unified-bad-config", unified_load(lambda u: {"unified.json": {"lm": {}}}), ValueError,
         r"unified\.json"),
    case("unified-params-from-another-model", unified_load_params({"lm": {"x": np.zeros(2, F32)}}), ValueError,
         r"unified_ckpt/params.*lm/x"),
    case("unified-no-meta", unified_load(lambda u: {"unified.json": u.config_to_dict(u.tiny())}), FileNotFoundError,
         r"unified_ckpt/unirl_jax\.json"),
]


def _raised_in_project(exc: BaseException) -> str:
  """The file of the innermost frame that raised `exc`."""
  tb = exc.__traceback__
  while tb.tb_next is not None:
    tb = tb.tb_next
  return tb.tb_frame.f_code.co_filename


@pytest.mark.parametrize("trigger, exc, pattern", CASES)
def test_bad_input_names_the_culprit(trigger, exc, pattern, tmp_path):
  with pytest.raises(exc) as info:
    trigger(tmp_path)
  message = str(info.value)
  assert re.search(pattern, message), f"{type(info.value).__name__}: {message[:500]}\ndoes not match {pattern!r}"
  where = _raised_in_project(info.value)
  assert where.startswith(PROJECT_DIRS) or where == __file__, f"raised in {where}, not in project code"
