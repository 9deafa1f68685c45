"""SANA DiT configuration: presets, validation, and reading/writing diffusers' config.json."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from unirl_jax.models.layers import KERNELS, REMAT_POLICIES

_DIFFUSERS_FIELDS = ("in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "num_layers",
                     "num_cross_attention_heads", "cross_attention_head_dim", "cross_attention_dim",
                     "caption_channels", "mlp_ratio", "attention_bias", "sample_size", "patch_size",
                     "norm_elementwise_affine", "norm_eps", "interpolation_scale", "guidance_embeds",
                     "guidance_embeds_scale", "qk_norm", "timestep_scale")


@dataclasses.dataclass(frozen=True)
class SanaConfig:
  """Mirrors diffusers' `SanaTransformer2DModel` config, plus UniRL's reference branch and execution knobs."""

  in_channels: int = 32
  out_channels: int = 32
  num_attention_heads: int = 70
  attention_head_dim: int = 32
  num_layers: int = 20
  num_cross_attention_heads: int = 20
  cross_attention_head_dim: int = 112
  cross_attention_dim: int = 2240
  caption_channels: int = 2304
  mlp_ratio: float = 2.5
  attention_bias: bool = False
  sample_size: int = 32
  patch_size: int = 1
  norm_elementwise_affine: bool = False
  norm_eps: float = 1e-6
  interpolation_scale: Optional[float] = None
  guidance_embeds: bool = False
  guidance_embeds_scale: float = 0.1  # applied by pipelines, not the model (as in diffusers)
  qk_norm: Optional[str] = None  # None or "rms_norm_across_heads"
  timestep_scale: float = 1.0  # applied by pipelines, not the model (as in diffusers)
  # UniRL: reference latents through `ref_patch_embed` + zero-initialised `ref_linear`, added to the tokens.
  ref_branch: bool = False
  # Execution, not architecture.
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_unroll: int = 1
  attention_impl: Optional[str] = None
  kernels: str = "auto"  # "cpu" | "accelerator" | "auto" (the default backend): layers.kernels_for

  def __post_init__(self):
    errors = []
    if self.qk_norm not in (None, "rms_norm_across_heads"):
      errors.append(f"qk_norm {self.qk_norm!r} unsupported (None or 'rms_norm_across_heads')")
    if self.num_cross_attention_heads * self.cross_attention_head_dim != self.inner_dim:
      errors.append(f"cross-attention heads x head dim = {self.num_cross_attention_heads}x"
                    f"{self.cross_attention_head_dim} must equal the inner dim {self.inner_dim}")
    if self.cross_attention_dim != self.inner_dim:
      errors.append(f"cross_attention_dim {self.cross_attention_dim} must equal the inner dim {self.inner_dim} "
                    "(captions are projected to the inner dim before cross-attention)")
    if self.remat not in REMAT_POLICIES:
      errors.append(f"remat {self.remat!r} not one of {REMAT_POLICIES}")
    if self.sample_size % self.patch_size:
      errors.append(f"sample_size {self.sample_size} not divisible by patch_size {self.patch_size}")
    if self.attention_impl not in (None, "xla", "cudnn"):
      errors.append(f"attention_impl {self.attention_impl!r} not one of None, 'xla', 'cudnn'")
    if self.kernels not in KERNELS:
      errors.append(f"kernels {self.kernels!r} not one of {KERNELS}")
    if errors:
      raise ValueError("invalid SanaConfig: " + "; ".join(errors))

  @property
  def inner_dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @property
  def ff_hidden(self) -> int:
    return int(self.mlp_ratio * self.inner_dim)

  def replace(self, **kw) -> "SanaConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_diffusers(cls, src: Any, **overrides) -> "SanaConfig":
    """A diffusers config.json path, its directory, a pipeline directory (uses transformer/), or a dict."""
    if isinstance(src, (str, os.PathLike)):
      path = str(src)
      if os.path.isdir(path):
        sub = os.path.join(path, "transformer")
        path = os.path.join(sub if os.path.isdir(sub) else path, "config.json")
      with open(path) as f:
        d = json.load(f)
    else:
      d = dict(src)
    kw = {k: d[k] for k in _DIFFUSERS_FIELDS if k in d}
    if kw.get("out_channels") is None:
      kw["out_channels"] = kw.get("in_channels", 32)
    kw.update(overrides)
    return cls(**kw)

  def to_diffusers_dict(self) -> dict:
    d = {k: getattr(self, k) for k in _DIFFUSERS_FIELDS}
    return {"_class_name": "SanaTransformer2DModel", **d}


def sana_1600m(**kw) -> SanaConfig:
  """Efficient-Large-Model/Sana_1600M_1024px (UniRL-Zero's diffusion expert)."""
  return SanaConfig(**kw)


def sana_600m(**kw) -> SanaConfig:
  """Efficient-Large-Model/Sana_600M_1024px: 28 blocks at width 1152."""
  return SanaConfig(num_attention_heads=36, num_layers=28, num_cross_attention_heads=16,
                    cross_attention_head_dim=72, cross_attention_dim=1152, **kw)


def tiny(**kw) -> SanaConfig:
  """A few-KB random DiT for CPU tests."""
  base = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
              num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=12,
              sample_size=8)
  base.update(kw)
  return SanaConfig(**base)
