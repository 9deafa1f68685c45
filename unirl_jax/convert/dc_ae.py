"""DC-AE: diffusers `AutoencoderDC` safetensors <-> Orbax params, as one key table read in both directions.

The table is a template per block kind, laid out over the blocks that the config builds (`encoder_blocks`,
`decoder_blocks`). Batch-norm running statistics are params (`mean`, `var`); torch's `num_batches_tracked`
counter (unused in eval mode) is dropped on import and written back as 0 on export.
"""

from __future__ import annotations

import numpy as np

from unirl_jax.convert.pipeline import ModelSpec, export_model, import_model
from unirl_jax.convert.table import CONV1X1_LINEAR, CONV2D, IDENTITY, LINEAR, Rule
from unirl_jax.models.dc_ae import DCAEConfig, abstract_params, decoder_blocks, encoder_blocks

WEIGHTS_STEM = "diffusion_pytorch_model"  # diffusers' names: .safetensors, -0000i-of-0000n, .safetensors.index.json
KIND = "dc_ae"

# (diffusers key suffix, param path suffix, transform) per block kind.
CONV = [("conv.weight", "conv/kernel", CONV2D), ("conv.bias", "conv/bias", IDENTITY)]
RES_BLOCK = [("conv1.weight", "conv1/kernel", CONV2D), ("conv1.bias", "conv1/bias", IDENTITY),
             ("conv2.weight", "conv2/kernel", CONV2D)]
EVIT_BLOCK = [
    *[(f"attn.{p}.weight", f"attn/{p}/kernel", LINEAR) for p in ("to_q", "to_k", "to_v", "to_out")],
    ("conv_out.conv_inverted.weight", "conv_out/conv_inverted/kernel", CONV1X1_LINEAR),
    ("conv_out.conv_inverted.bias", "conv_out/conv_inverted/bias", IDENTITY),
    ("conv_out.conv_depth.weight", "conv_out/conv_depth/kernel", CONV2D),
    ("conv_out.conv_depth.bias", "conv_out/conv_depth/bias", IDENTITY),
    ("conv_out.conv_point.weight", "conv_out/conv_point/kernel", CONV1X1_LINEAR),
    ("conv_out.norm.weight", "conv_out/norm/scale", IDENTITY), ("conv_out.norm.bias", "conv_out/norm/bias", IDENTITY),
]
MULTISCALE = [("proj_in.weight", "proj_in/kernel", CONV2D), ("proj_out.weight", "proj_out/kernel", CONV2D)]
NORM = {"rms_norm": [("weight", "scale"), ("bias", "bias")],
        "batch_norm": [("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var")]}


def _rules(key: str, path: str, table) -> list[Rule]:
  return [Rule(f"{key}.{k}", f"{path}/{p}", t) for k, p, t in table]


def _norm(key: str, path: str, norm_type: str) -> list[Rule]:
  return [Rule(f"{key}.{k}", f"{path}/{p}") for k, p in NORM[norm_type]]


def batch_norm_keys(cfg: DCAEConfig) -> list[str]:
  """diffusers key prefixes of every BatchNorm2d (each has a `num_batches_tracked` buffer)."""
  out = []
  for b in decoder_blocks(cfg):
    if b.norm_type == "batch_norm" and b.kind in ("ResBlock", "EfficientViTBlock"):
      out.append(f"decoder.{b.name}.{'norm' if b.kind == 'ResBlock' else 'attn.norm_out'}")
  return out


def rules(cfg: DCAEConfig) -> list[Rule]:
  """The key table of the model `cfg` builds."""
  out = []
  for side, blocks in (("encoder", encoder_blocks(cfg)), ("decoder", decoder_blocks(cfg))):
    for b in blocks:
      key, path = f"{side}.{b.name}", f"{side}/{b.name.replace('.', '_')}"
      if b.kind in ("down", "up"):
        out += _rules(key, path, CONV)
      elif b.kind == "ResBlock":
        out += _rules(key, path, RES_BLOCK) + _norm(f"{key}.norm", f"{path}/norm", b.norm_type)
      else:
        out += _rules(key, path, EVIT_BLOCK) + _norm(f"{key}.attn.norm_out", f"{path}/attn/norm_out", b.norm_type)
        for m in range(len(b.kernel_sizes)):
          out += _rules(f"{key}.attn.to_qkv_multiscale.{m}", f"{path}/attn/to_qkv_multiscale_{m}", MULTISCALE)
  enc_in = "encoder.conv_in" + ("" if cfg.encoder_layers_per_block[0] > 0 else ".conv")
  dec_out = "decoder.conv_out" + ("" if cfg.decoder_layers_per_block[0] > 0 else ".conv")
  for key in (enc_in, "encoder.conv_out", "decoder.conv_in", dec_out):
    out += [Rule(f"{key}.weight", key.replace(".", "/") + "/kernel", CONV2D),
            Rule(f"{key}.bias", key.replace(".", "/") + "/bias")]
  return out + _norm("decoder.norm_out", "decoder/norm_out", "rms_norm")


def _config(path: str, keys=None, meta=None) -> DCAEConfig:
  return DCAEConfig.from_diffusers(path)


def _skip(cfg: DCAEConfig):
  tracked = {f"{k}.num_batches_tracked" for k in batch_norm_keys(cfg)}
  return tracked.__contains__


SPEC = ModelSpec(kind=KIND, config=_config, abstract_params=abstract_params, rules=rules,
                 weights_name=f"{WEIGHTS_STEM}.safetensors", subdir="vae", skip=_skip,
                 export_extra=lambda cfg: {f"{k}.num_batches_tracked": np.zeros((), np.int64)
                                           for k in batch_norm_keys(cfg)})


def import_dc_ae(src: str, dst: str, dtype: str = "float32", overwrite: bool = False,
                 variant: str | None = None) -> str:
  """`python -m convert dc_ae`: diffusers AutoencoderDC folder (or a pipeline folder with vae/) -> Orbax dir."""
  return import_model(SPEC, src, dst, dtype=dtype, overwrite=overwrite, variant=variant)


def export_dc_ae(src: str, dst: str, dtype: str | None = None, overwrite: bool = False,
                 max_shard_bytes: int = 5 * 2**30) -> str:
  """`python -m convert export dc_ae`: Orbax dir -> diffusers safetensors + config.json (`from_pretrained` loads)."""
  return export_model(SPEC, src, dst, dtype=dtype, overwrite=overwrite, max_shard_bytes=max_shard_bytes)
