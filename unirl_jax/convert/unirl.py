"""`python -m convert unirl`: a UniRL PyTorch checkpoint <-> a unified Orbax dir, through one composed key table.

A UniRL (`blip3oQwenForCausalLM`) folder holds the Qwen2.5-VL keys plus `model.{t2i,i2i}_queries`,
`model.down_projector.*` (connector), `model.dit.*` (diffusers SANA + the ref branch) and
`model.gen_vision_tower.autoencoder.*` (diffusers DC-AE). Its config.json describes the LM
only; the DiT/VAE configs default to the SANA-1600M / DC-AE f32c32 presets the original loads from the hub.

`--lm/--dit/--vae` instead assembles a fresh unified checkpoint from separately converted parts: new connector,
N(0, 1) queries and (if missing) the DiT's reference branch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np

from unirl_jax.convert import connector as connector_rules
from unirl_jax.convert import dc_ae as dc_ae_rules
from unirl_jax.convert import qwen2_5_vl as qwen_rules
from unirl_jax.convert import sana as sana_rules
from unirl_jax.convert.pipeline import DTYPES, META, copy_side_files, read_meta, staged_dir, write_sharded
from unirl_jax.convert.safetensors_io import SafetensorsDir
from unirl_jax.convert.table import ConversionError, Rule, default_hf_shape, flatten, to_hf, to_params

DIT = "model.dit."
VAE = "model.gen_vision_tower.autoencoder."
CONNECTOR = "model.down_projector."
SOURCE_CONFIG = "unirl_config.json"  # the source folder's config.json, kept for the way back
UNIRL_VOCAB = 151668


def prefixed(rules: list[Rule], hf: str, path: str) -> list[Rule]:
  return [Rule(hf + r.hf, path + r.path, r.transform) for r in rules]


def rules(cfg) -> list[Rule]:
  """The whole UniRL table: each part's own table under its UniRL key prefix and its params sub-tree."""
  return [*prefixed(qwen_rules.RULES, "", "lm/"),
          Rule("model.t2i_queries", "t2i_queries"), Rule("model.i2i_queries", "i2i_queries"),
          *connector_rules.rules(CONNECTOR, "connector/"),
          *prefixed(sana_rules.rules(cfg.dit), DIT, "dit/"),
          *prefixed(dc_ae_rules.rules(cfg.vae), VAE, "vae/")]


def skip(cfg):
  lm, vae = qwen_rules.skip_key(cfg.lm), dc_ae_rules.SPEC.skip(cfg.vae)
  return lambda key: lm(key) or (key.startswith(VAE) and vae(key[len(VAE):]))


def hf_shape(cfg):
  parts = {"lm/": qwen_rules.hf_shape(cfg.lm), "dit/": sana_rules.SPEC.hf_shape(cfg.dit),
           "vae/": dc_ae_rules.SPEC.hf_shape(cfg.vae)}

  def shape(rule: Rule, row_shape: tuple) -> tuple:
    for prefix, fn in parts.items():
      if rule.path.startswith(prefix):
        return fn(rule, row_shape)
    return default_hf_shape(rule, row_shape)

  return shape


def sized_connector(width: int, caption_channels: int, **kw):
  """UniRL's connector preset at this LM width and DiT caption width (SwiGLU hidden = 2x width, as the preset)."""
  from unirl_jax.models.connector import unirl_connector
  return unirl_connector(**{"hidden_size": width, "intermediate_size": 2 * width, "out_dim": caption_channels, **kw})


def source_config(src: str, shapes: dict, dit_config=None, vae_config=None):
  """UnifiedConfig of a UniRL folder: the LM from its config.json, DiT/VAE from presets or the given configs.

  The connector's depth, heads and FFN width are read from its tensors (the original fixes them by
  defaults); its input/output widths follow the LM and the DiT and are checked against the tensors.
  """
  from unirl_jax.models import dc_ae, sana, unified
  from unirl_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
  lm = Qwen2_5_VLConfig.from_hf(src)
  dit = sana.SanaConfig.from_diffusers(dit_config) if dit_config else sana.sana_1600m()
  vae = dc_ae.DCAEConfig.from_diffusers(vae_config) if vae_config else dc_ae.dc_ae_f32c32_sana()
  width = lm.text.hidden_size
  kw = {}
  rx = re.compile(re.escape(CONNECTOR) + r"layers\.(\d+)\.norm1\.weight")
  layers = [int(m.group(1)) for k in shapes if (m := rx.fullmatch(k))]
  if layers:
    kw["num_layers"] = max(layers) + 1
  head = shapes.get(f"{CONNECTOR}layers.0.attn.q_norm.weight")
  if head and head[0] and width % head[0] == 0:
    kw["num_heads"] = width // head[0]
  if w1 := shapes.get(f"{CONNECTOR}layers.0.ffn.w1.weight"):
    kw["intermediate_size"] = w1[0]
  conn = sized_connector(width, dit.caption_channels, **kw)
  queries = shapes.get("model.t2i_queries", (1, 256))
  return unified.UnifiedConfig(lm=lm, connector=conn, dit=dit.replace(ref_branch=True), vae=vae,
                               num_queries=int(queries[1]) if len(queries) == 3 else 256)


def _check_dst(dst: str, overwrite: bool) -> None:
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)) and not overwrite:
    raise FileExistsError(f"destination {dst} exists and is not empty (pass --overwrite to replace it)")


def _with_hint(e: Exception, dit_config, vae_config) -> str:
  """Points at --dit-config/--vae-config when a defaulted preset may be why the checkpoint does not fit."""
  msg = str(e)
  hints = [f"the {name} is read as {preset}: pass {flag} for another one"
           for name, preset, flag, given, prefix in (("DiT", "SANA-1600M", "--dit-config", dit_config, DIT),
                                                     ("VAE", "DC-AE f32c32", "--vae-config", vae_config, VAE))
           if not given and (prefix in msg or (not isinstance(e, ConversionError) and name.lower() in msg.lower()))]
  return msg + "".join(f" ({h})" for h in hints)


def import_unirl(src: str, dst: str, dtype: str = "float32", dit_config=None, vae_config=None,
                 overwrite: bool = False) -> str:
  """A UniRL safetensors folder (single or sharded) -> a unified dir that `unified.load` reads."""
  from unirl_jax.models import unified
  _check_dst(dst, overwrite)
  reader = SafetensorsDir(src)
  try:
    cfg = source_config(src, {k: reader.shape(k) for k in reader.keys()}, dit_config, vae_config)
    cfg = unified.with_execution(cfg, param_dtype=dtype)
    expected = {k: v.shape for k, v in flatten(unified.UnifiedModel(cfg).abstract_params()).items()}
    params = to_params(reader.keys(), reader.get, rules(cfg), expected, DTYPES[dtype], skip=skip(cfg),
                       rename=qwen_rules.canonical_key)
  except ValueError as e:  # ConversionError included
    raise type(e)(_with_hint(e, dit_config, vae_config)) from None
  with tempfile.TemporaryDirectory() as side:
    copy_side_files(src, side)
    shutil.copy2(os.path.join(src, "config.json"), os.path.join(side, SOURCE_CONFIG))
    return unified.save(dst, cfg, params, side_files_from=side, overwrite=overwrite)


def export_unirl(src: str, dst: str, dtype=None, overwrite: bool = False, max_shard_bytes: int = 5 * 2**30) -> str:
  """A unified dir -> a UniRL-layout safetensors folder (Qwen keys in the transformers 4.51 layout)."""
  from unirl_jax import checkpoint
  from unirl_jax.models import unified
  meta = read_meta(src)
  if meta.get("kind") != "unirl":
    raise ValueError(f"{src} holds a {meta.get('kind')!r} checkpoint, not 'unirl'")
  _check_dst(dst, overwrite)
  with open(os.path.join(src, "unified.json")) as f:
    cfg = unified.config_from_dict(json.load(f))
  params = checkpoint.restore_params(os.path.join(src, "params"), as_numpy=True)
  tensors = to_hf(params, rules(cfg), hf_shape(cfg), DTYPES[dtype] if dtype else None)
  tensors.update({VAE + k: v for k, v in dc_ae_rules.SPEC.export_extra(cfg.vae).items()})
  with staged_dir(dst, overwrite) as tmp:
    write_sharded(tensors, tmp, max_shard_bytes)
    if os.path.exists(os.path.join(src, SOURCE_CONFIG)):
      shutil.copy2(os.path.join(src, SOURCE_CONFIG), os.path.join(tmp, "config.json"))
    else:
      with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(cfg.lm.to_hf_dict(), f, indent=1)
    copy_side_files(src, tmp, skip=("config.json", META, "unified.json", SOURCE_CONFIG))
  return dst


def _expect_kind(path: str, kind: str) -> None:
  got = read_meta(path).get("kind")
  if got != kind:
    raise ValueError(f"{path} holds a {got!r} checkpoint, not {kind!r}")


def shrink_vocab(lm_cfg, lm_params: dict, rows: int, log=print):
  """Keeps the first `rows` embedding (and untied head) rows, as UniRL's resize_token_embeddings does."""
  have = lm_cfg.text.vocab_size
  if rows > have:
    raise ValueError(f"--vocab-size {rows} exceeds the LM's {have} rows (only shrinking is supported)")
  log(f"note: truncating the LM vocabulary from {have} to {rows} rows")
  lm = dict(lm_params)
  text = dict(lm["language_model"])
  text["embed_tokens"] = {"embedding": text["embed_tokens"]["embedding"][:rows]}
  lm["language_model"] = text
  if "lm_head" in lm:
    lm["lm_head"] = {**lm["lm_head"], "kernel": lm["lm_head"]["kernel"][:, :rows]}
  return lm_cfg.replace(text=dataclasses.replace(lm_cfg.text, vocab_size=rows)), lm


def assemble(lm_dir: str, dit_dir: str, vae_dir: str, dst: str, seed: int = 0, num_queries: int = 256,
             vocab_size=None, dtype: str = "float32", overwrite: bool = False, log=print) -> str:
  """Converted Qwen2.5-VL + SANA + DC-AE dirs -> a unified dir with a fresh connector and queries."""
  import jax
  from unirl_jax.models import dc_ae, qwen2_5_vl, sana, unified
  _check_dst(dst, overwrite)
  for path, kind in ((lm_dir, "qwen2_5_vl"), (dit_dir, "sana"), (vae_dir, "dc_ae")):
    _expect_kind(path, kind)
  lm_model, lm = qwen2_5_vl.load(lm_dir)
  dit_model, dit = sana.load(dit_dir)
  vae_model, vae = dc_ae.load(vae_dir)
  lm_cfg = lm_model.config
  if vocab_size is not None and vocab_size != lm_cfg.text.vocab_size:
    lm_cfg, lm = shrink_vocab(lm_cfg, lm, vocab_size, log)
  elif lm_cfg.text.vocab_size > UNIRL_VOCAB:
    log(f"note: keeping the LM's {lm_cfg.text.vocab_size}-row vocabulary (UniRL checkpoints have {UNIRL_VOCAB}: "
        f"pass --vocab-size {UNIRL_VOCAB} to truncate)")
  cfg = unified.UnifiedConfig(lm=lm_cfg, connector=sized_connector(lm_cfg.text.hidden_size,
                                                                   dit_model.config.caption_channels),
                              dit=dit_model.config.replace(ref_branch=True), vae=vae_model.config,
                              num_queries=num_queries)
  cfg = unified.with_execution(cfg, param_dtype=dtype)
  if not dit_model.config.ref_branch:
    log("note: the DiT has no reference branch; adding one (ref_patch_embed = patch_embed, ref_linear = 0)")
  params = unified.UnifiedModel(cfg).init_params(jax.random.PRNGKey(seed), lm=lm, dit=dit, vae=vae)
  params = jax.tree.map(lambda x: np.asarray(x, DTYPES[dtype]), params)
  return unified.save(dst, cfg, params, side_files_from=lm_dir, overwrite=overwrite)


def main(argv, export: bool = False) -> int:
  """`python -m convert [export] unirl ...` (argv without the kind)."""
  prog = "python -m convert " + ("export unirl" if export else "unirl")
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--src", required=export, help="UniRL folder" if not export else "unified dir")
  p.add_argument("--dst", required=True)
  p.add_argument("--dtype", choices=tuple(DTYPES), default=None if export else "float32")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
  if not export:
    p.add_argument("--dit-config", help="diffusers SanaTransformer2DModel config.json (or its dir); default "
                   "SANA-1600M")
    p.add_argument("--vae-config", help="diffusers AutoencoderDC config.json (or its dir); default DC-AE f32c32")
    p.add_argument("--lm", help="assemble: converted qwen2_5_vl dir (its tokenizer files are copied)")
    p.add_argument("--dit", help="assemble: converted sana dir")
    p.add_argument("--vae", help="assemble: converted dc_ae dir")
    p.add_argument("--seed", type=int, default=0, help="assemble: init seed of the connector and queries")
    p.add_argument("--num-queries", type=int, default=256)
    p.add_argument("--vocab-size", type=int, help="assemble: truncate the LM vocabulary to this many rows")
  a = p.parse_args(argv)
  try:
    if export:
      out = export_unirl(a.src, a.dst, a.dtype, a.overwrite)
    else:
      parts = [a.lm, a.dit, a.vae]
      if a.src and (any(parts) or a.vocab_size is not None):
        raise ValueError("give either --src (a UniRL folder) or --lm/--dit/--vae [--vocab-size] (parts to "
                         "assemble), not both")
      if any(parts) and (a.dit_config or a.vae_config):
        raise ValueError("--dit-config/--vae-config apply to --src; assembled parts carry their own configs")
      if a.src:
        out = import_unirl(a.src, a.dst, a.dtype, a.dit_config, a.vae_config, a.overwrite)
      elif all(parts):
        if a.num_queries < 1:
          raise ValueError(f"--num-queries must be positive, got {a.num_queries}")
        out = assemble(a.lm, a.dit, a.vae, a.dst, a.seed, a.num_queries, a.vocab_size, a.dtype, a.overwrite)
      else:
        raise ValueError("give --src (a UniRL folder), or all of --lm, --dit and --vae")
  except (ConversionError, FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out}")
  return 0
