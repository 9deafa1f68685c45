"""DC-AE (diffusers' `AutoencoderDC`) in JAX/Flax, NHWC: `model, params = dc_ae.load(DIR)`.

`model.apply({"params": p}, x, method="encode")` / `method="decode"` mirror `AutoencoderDC.encode(x).latent` and
`.decode(z).sample` exactly (no scaling); `encode_scaled` / `decode_scaled` apply the scaling factor as UniRL does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unirl_jax.models import param_utils
from unirl_jax.models.layers import KERNELS
from unirl_jax.models.dc_ae_blocks import (ACTIVATIONS, NORM_TYPES, DCDownBlock2d, DCUpBlock2d, EfficientViTBlock,
                                          ResBlock, activation, conv, norm)

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
DTYPES = ("float32", "bfloat16", "float16")
EXEC_FIELDS = ("dtype", "param_dtype", "kernels")  # execution, not architecture: never in config.json
_PER_STAGE = ("encoder_block_types", "decoder_block_types", "decoder_norm_types", "decoder_act_fns")


@dataclasses.dataclass(frozen=True)
class DCAEConfig:
  """diffusers' `AutoencoderDC` config (same field names and defaults; str-or-tuple fields are expanded to one
  entry per stage) plus the JAX-side dtypes."""

  in_channels: int = 3
  latent_channels: int = 32
  attention_head_dim: int = 32
  encoder_block_types: Any = "ResBlock"
  decoder_block_types: Any = "ResBlock"
  encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
  decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
  encoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
  decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
  encoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
  decoder_qkv_multiscales: tuple[tuple[int, ...], ...] = ((), (), (), (5,), (5,), (5,))
  upsample_block_type: str = "pixel_shuffle"  # or "interpolate" (nearest)
  downsample_block_type: str = "pixel_unshuffle"  # or "conv" (diffusers: anything but "pixel_unshuffle")
  decoder_norm_types: Any = "rms_norm"
  decoder_act_fns: Any = "silu"
  encoder_out_shortcut: bool = True
  decoder_in_shortcut: bool = True
  decoder_conv_act_fn: str = "relu"
  scaling_factor: float = 1.0
  # Execution, not architecture.
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  kernels: str = "auto"  # "cpu" | "accelerator" | "auto" (the default backend): layers.kernels_for

  def __post_init__(self):
    n = {"encoder": len(self.encoder_block_out_channels), "decoder": len(self.decoder_block_out_channels)}
    for f in _PER_STAGE:
      v = getattr(self, f)
      object.__setattr__(self, f, (v,) * n[f.split("_")[0]] if isinstance(v, str) or v is None else tuple(v))
    for f in ("encoder_block_out_channels", "decoder_block_out_channels", "encoder_layers_per_block",
              "decoder_layers_per_block"):
      object.__setattr__(self, f, tuple(int(c) for c in getattr(self, f)))
    for f in ("encoder_qkv_multiscales", "decoder_qkv_multiscales"):
      object.__setattr__(self, f, tuple(tuple(int(k) for k in s) for s in getattr(self, f)))
    self.validate()

  @property
  def spatial_compression_ratio(self) -> int:
    return 2 ** (len(self.encoder_block_out_channels) - 1)

  @property
  def downsample_pixel_unshuffle(self) -> bool:
    return self.downsample_block_type == "pixel_unshuffle"

  @property
  def upsample_interpolate(self) -> bool:
    return self.upsample_block_type == "interpolate"

  def validate(self) -> None:
    errors = []
    for side in ("encoder", "decoder"):
      ch, layers_ = getattr(self, f"{side}_block_out_channels"), getattr(self, f"{side}_layers_per_block")
      n = len(ch)
      if n < 1:
        errors.append(f"{side}_block_out_channels is empty")
        continue
      fields = [f"{side}_layers_per_block", f"{side}_block_types", f"{side}_qkv_multiscales"]
      fields += ["decoder_norm_types", "decoder_act_fns"] if side == "decoder" else []
      bad = [f"{f} has {len(getattr(self, f))}" for f in fields if len(getattr(self, f)) != n]
      if bad:
        errors.append(f"{side}: {n} stages in {side}_block_out_channels but " + ", ".join(bad))
        continue
      if any(c < 1 for c in ch):
        errors.append(f"{side}_block_out_channels {ch} must be positive")
        continue
      if layers_[0] < 0 or any(k < 1 for k in layers_[1:]):
        errors.append(f"{side}_layers_per_block {layers_}: only stage 0 may have 0 layers (diffusers then turns "
                      "conv_in / conv_out into a down / up block)")
      if layers_[0] == 0 and n < 2:
        errors.append(f"{side}_layers_per_block[0] == 0 needs at least two stages")
      for s, (t, ks) in enumerate(zip(getattr(self, f"{side}_block_types"), getattr(self, f"{side}_qkv_multiscales"))):
        if t not in BLOCK_TYPES:
          errors.append(f"{side}_block_types[{s}] {t!r} not one of {BLOCK_TYPES}")
        elif t == "EfficientViTBlock" and ch[s] // self.attention_head_dim < 1:
          errors.append(f"{side} stage {s}: {ch[s]} channels give no attention heads of dim {self.attention_head_dim}")
        if any(k < 1 or k % 2 == 0 for k in ks):
          errors.append(f"{side}_qkv_multiscales[{s}] {ks}: kernel sizes must be odd and positive")
      for s in range(n - 1):
        if layers_[s] > 0 and (4 * ch[s]) % ch[s + 1]:
          errors.append(f"{side} stage {s}->{s + 1}: the shortcut needs 4*{ch[s]} divisible by {ch[s + 1]}")
    ech, dch = self.encoder_block_out_channels, self.decoder_block_out_channels
    if self.downsample_pixel_unshuffle and any(c % 4 for c in ech[1:]):
      errors.append(f"pixel_unshuffle downsampling needs encoder channels {ech[1:]} divisible by 4")
    if self.encoder_out_shortcut and ech and ech[-1] % self.latent_channels:
      errors.append(f"encoder_out_shortcut needs {ech[-1]} channels divisible by latent_channels "
                    f"{self.latent_channels}")
    if self.decoder_in_shortcut and dch and dch[-1] % self.latent_channels:
      errors.append(f"decoder_in_shortcut needs {dch[-1]} channels divisible by latent_channels "
                    f"{self.latent_channels}")
    if self.attention_head_dim < 1 or self.in_channels < 1 or self.latent_channels < 1:
      errors.append("attention_head_dim, in_channels and latent_channels must be positive")
    if self.upsample_block_type not in ("pixel_shuffle", "interpolate"):
      errors.append(f"upsample_block_type {self.upsample_block_type!r} not 'pixel_shuffle' or 'interpolate'")
    if self.downsample_block_type.lower() not in ("pixel_unshuffle", "conv"):
      errors.append(f"downsample_block_type {self.downsample_block_type!r} not 'pixel_unshuffle' or 'conv'")
    for s, t in enumerate(self.decoder_norm_types):
      if t not in NORM_TYPES:
        errors.append(f"decoder_norm_types[{s}] {t!r} not one of {NORM_TYPES} (diffusers' layer_norm would "
                      "normalise NCHW tensors over width, not channels)")
    for s, a in enumerate(self.decoder_act_fns):
      if a is not None and a.lower() not in ACTIVATIONS:
        errors.append(f"decoder_act_fns[{s}] {a!r} not one of {tuple(ACTIVATIONS)}")
    if str(self.decoder_conv_act_fn).lower() not in ACTIVATIONS:
      errors.append(f"decoder_conv_act_fn {self.decoder_conv_act_fn!r} not one of {tuple(ACTIVATIONS)}")
    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in DTYPES:
        errors.append(f"{f} {getattr(self, f)!r} not one of {DTYPES}")
    if self.kernels not in KERNELS:
      errors.append(f"kernels {self.kernels!r} not one of {KERNELS}")
    if errors:
      raise ValueError("invalid DCAEConfig: " + "; ".join(errors))

  def replace(self, **kw) -> "DCAEConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_diffusers(cls, src: Any, **overrides) -> "DCAEConfig":
    """Reads diffusers' `config.json`: a path, a dir holding one (or a pipeline dir with `vae/`), or a dict."""
    if isinstance(src, (str, os.PathLike)):
      path = str(src)
      if os.path.isdir(path):
        path = os.path.join(path, "config.json")
        if not os.path.exists(path) and os.path.exists(os.path.join(str(src), "vae", "config.json")):
          path = os.path.join(str(src), "vae", "config.json")
      with open(path) as f:
        d = json.load(f)
    else:
      d = dict(src)
    if d.get("_class_name", "AutoencoderDC") != "AutoencoderDC":
      raise ValueError(f"config is for {d['_class_name']!r}, not AutoencoderDC")
    arch = {f.name for f in dataclasses.fields(cls)} - set(EXEC_FIELDS)
    unknown = sorted(k for k in d if not k.startswith("_") and k not in arch)
    if unknown:
      warnings.warn(f"AutoencoderDC config keys ignored (diffusers ignores them too): {unknown}")
    kw = {k: v for k, v in d.items() if k in arch}
    kw.update(overrides)
    return cls(**kw)

  def to_diffusers_dict(self) -> dict:
    """Constructor kwargs / config.json of diffusers' `AutoencoderDC` (`AutoencoderDC(**d)` after dropping `_*`)."""
    d = {"_class_name": "AutoencoderDC"}
    for f in dataclasses.fields(self):
      if f.name not in EXEC_FIELDS:
        v = getattr(self, f.name)
        d[f.name] = [list(s) for s in v] if f.name.endswith("multiscales") else list(v) if isinstance(v, tuple) else v
    return d


def dc_ae_f32c32_sana(**overrides) -> DCAEConfig:
  """`mit-han-lab/dc-ae-f32c32-sana-1.0` (the SANA / UniRL VAE): 32x spatial compression, 32 latent channels."""
  kinds = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
  kw = dict(latent_channels=32, attention_head_dim=32, encoder_block_types=kinds, decoder_block_types=kinds,
            encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
            downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
            decoder_act_fns="silu", scaling_factor=0.41407)
  return DCAEConfig(**{**kw, **overrides})


def tiny(**overrides) -> DCAEConfig:
  """A 3-stage, 4x-compression DC-AE with both block kinds, for CPU tests."""
  kw = dict(latent_channels=4, attention_head_dim=8, encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 16, 32), decoder_block_out_channels=(8, 16, 32),
            encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
            encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)), scaling_factor=0.5)
  return DCAEConfig(**{**kw, **overrides})


class Block(NamedTuple):
  """One entry of `encoder.down_blocks.{s}.{j}` / `decoder.up_blocks.{s}.{j}` (diffusers' nn.Sequential)."""

  name: str  # e.g. "down_blocks.0.1"
  kind: str  # "ResBlock" | "EfficientViTBlock" | "down" | "up"
  out_channels: int
  norm_type: Optional[str] = None
  act_fn: Optional[str] = None
  kernel_sizes: tuple[int, ...] = ()


def encoder_blocks(cfg: DCAEConfig) -> list[Block]:
  """diffusers' `Encoder.down_blocks` in order: each stage's blocks, then its downsample block."""
  ch, out = cfg.encoder_block_out_channels, []
  for s, (c, n) in enumerate(zip(ch, cfg.encoder_layers_per_block)):
    out += [Block(f"down_blocks.{s}.{j}", cfg.encoder_block_types[s], c, "rms_norm", "silu",
                  cfg.encoder_qkv_multiscales[s]) for j in range(n)]
    if s < len(ch) - 1 and n > 0:
      out.append(Block(f"down_blocks.{s}.{n}", "down", ch[s + 1]))
  return out


def decoder_blocks(cfg: DCAEConfig) -> list[Block]:
  """diffusers' `Decoder.up_blocks` in execution order (last stage first): upsample block, then the blocks."""
  ch, out = cfg.decoder_block_out_channels, []
  for s in reversed(range(len(ch))):
    n, up = cfg.decoder_layers_per_block[s], int(s < len(ch) - 1 and cfg.decoder_layers_per_block[s] > 0)
    out += [Block(f"up_blocks.{s}.0", "up", ch[s])] if up else []
    out += [Block(f"up_blocks.{s}.{j + up}", cfg.decoder_block_types[s], ch[s], cfg.decoder_norm_types[s],
                  cfg.decoder_act_fns[s], cfg.decoder_qkv_multiscales[s]) for j in range(n)]
  return out


def _block(cfg: DCAEConfig, b: Block, kw: dict) -> nn.Module:
  name = b.name.replace(".", "_")
  if b.kind == "ResBlock":
    return ResBlock(b.norm_type, b.act_fn, name=name, **kw)
  if b.kind == "EfficientViTBlock":
    return EfficientViTBlock(cfg.attention_head_dim, b.kernel_sizes, b.norm_type, kernels=cfg.kernels, name=name, **kw)
  if b.kind == "down":
    return DCDownBlock2d(b.out_channels, cfg.downsample_pixel_unshuffle, True, name=name, **kw)
  return DCUpBlock2d(b.out_channels, cfg.upsample_interpolate, True, name=name, **kw)


def _dtypes(cfg: DCAEConfig) -> dict:
  return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class Encoder(nn.Module):
  """Mirrors diffusers' DC-AE `Encoder`: (B, H, W, in) -> (B, H/f, W/f, latent)."""

  config: DCAEConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, kw = self.config, _dtypes(self.config)
    ch = cfg.encoder_block_out_channels
    x = x.astype(kw["dtype"])
    if cfg.encoder_layers_per_block[0] > 0:
      h = conv(ch[0], 3, ("ae_io", "ae_embed"), name="conv_in", **kw)(x)
    else:
      h = DCDownBlock2d(ch[1], cfg.downsample_pixel_unshuffle, False, in_axis="ae_io", name="conv_in", **kw)(x)
    for b in encoder_blocks(cfg):
      h = _block(cfg, b, kw)(h)
    out = conv(cfg.latent_channels, 3, ("ae_embed", "ae_io"), name="conv_out", **kw)(h)
    if cfg.encoder_out_shortcut:  # average each run of C/latent consecutive channels
      out = out + h.reshape(*h.shape[:-1], cfg.latent_channels, -1).mean(-1)
    return out


class Decoder(nn.Module):
  """Mirrors diffusers' DC-AE `Decoder`: (B, h, w, latent) -> (B, h*f, w*f, in)."""

  config: DCAEConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, kw = self.config, _dtypes(self.config)
    ch = cfg.decoder_block_out_channels
    z = z.astype(kw["dtype"])
    h = conv(ch[-1], 3, ("ae_io", "ae_embed"), name="conv_in", **kw)(z)
    if cfg.decoder_in_shortcut:  # torch repeat_interleave over channels
      h = h + jnp.repeat(z, ch[-1] // cfg.latent_channels, axis=-1)
    for b in decoder_blocks(cfg):
      h = _block(cfg, b, kw)(h)
    h = activation(cfg.decoder_conv_act_fn)(norm("rms_norm", name="norm_out", **kw)(h))
    if cfg.decoder_layers_per_block[0] > 0:
      return conv(cfg.in_channels, 3, ("ae_embed", "ae_io"), name="conv_out", **kw)(h)
    return DCUpBlock2d(cfg.in_channels, cfg.upsample_interpolate, False, out_axis="ae_io", name="conv_out", **kw)(h)


class DCAE(nn.Module):
  """Mirrors diffusers' `AutoencoderDC` (no tiling / slicing); `__call__` is encode then decode."""

  config: DCAEConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def encode(self, x: jax.Array) -> jax.Array:
    """`AutoencoderDC.encode(x).latent`: (B, H, W, C) images -> (B, H/f, W/f, latent_channels)."""
    f = self.config.spatial_compression_ratio
    if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f or x.shape[3] != self.config.in_channels:
      raise ValueError(f"encode expects (B, H, W, {self.config.in_channels}) images with H, W multiples of {f}; "
                       f"got {x.shape}")
    return self.encoder(x)

  def decode(self, z: jax.Array) -> jax.Array:
    """`AutoencoderDC.decode(z).sample`: (B, h, w, latent_channels) -> (B, h*f, w*f, C)."""
    if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
      raise ValueError(f"decode expects (B, h, w, {self.config.latent_channels}) latents; got {z.shape}")
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode(x))


def encode_scaled(model: DCAE, params, x: jax.Array) -> jax.Array:
  """Diffusion-space latents as UniRL makes them: `encode(x).latent * scaling_factor`."""
  return model.apply({"params": params}, x, method="encode") * model.config.scaling_factor


def decode_scaled(model: DCAE, params, z: jax.Array) -> jax.Array:
  """Images from diffusion-space latents as UniRL decodes them: `decode(z / scaling_factor).sample`."""
  return model.apply({"params": params}, z / model.config.scaling_factor, method="decode")


# ---- params -------------------------------------------------------------------------------------------

def _boxed_init(cfg: DCAEConfig, rng):
  f = cfg.spatial_compression_ratio
  return DCAE(cfg).init(rng, jnp.zeros((1, f, f, cfg.in_channels), jnp.float32))["params"]


init_params, abstract_params, logical_axes = param_utils.param_fns(_boxed_init)
num_params = param_utils.num_params


def load(path: str, dtype: Optional[str] = None, mesh=None, rules=None, **overrides) -> tuple[DCAE, Any]:
  """Loads a converted checkpoint dir (config.json + params/ from `python -m convert dc_ae`) -> (model, params).

  dtype sets the compute dtype (params keep their stored dtype); with a mesh the params are restored straight
  into their logical shardings.
  """
  meta = param_utils.read_meta(path)
  cfg = DCAEConfig.from_diffusers(os.path.join(path, "config.json"), param_dtype=meta.get("param_dtype", "float32"),
                                  **overrides)
  if dtype is not None:
    cfg = cfg.replace(dtype=dtype)
  return DCAE(cfg), param_utils.restore(path, cfg, abstract_params, logical_axes, "dc_ae", mesh, rules)
