"""UniRL's connector (`VisionTransformerProjector`, the `down_projector`): LM query states -> SANA caption input.

N pre-norm bidirectional transformer blocks at LM width (per-head QK-RMSNorm, SwiGLU with biases, no
positional encoding, no mask), a final RMSNorm and a Linear to SANA's caption width (UniRL's `VisionTransformerProjector`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from unirl_jax.models import layers, param_utils
from unirl_jax.models.layers import REMAT_POLICIES
from unirl_jax.models.qwen2_5_vl.config import dtype_of


@dataclasses.dataclass(frozen=True)
class ConnectorConfig:
  num_layers: int = 12
  hidden_size: int = 2048  # the LM width
  num_heads: int = 8
  intermediate_size: int = 4096  # SwiGLU hidden (2x)
  out_dim: int = 2304  # SANA caption_channels
  rms_norm_eps: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_unroll: int = 1
  attention_impl: Optional[str] = None
  kernels: str = "auto"  # "cpu" | "accelerator" | "auto" (the default backend): layers.kernels_for

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"connector hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"connector remat {self.remat!r} not one of {REMAT_POLICIES}")
    if self.kernels not in layers.KERNELS:
      raise ValueError(f"connector kernels {self.kernels!r} not one of {layers.KERNELS}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def replace(self, **kw) -> "ConnectorConfig":
    return dataclasses.replace(self, **kw)


def unirl_connector(**kw) -> ConnectorConfig:
  """The released configuration: 12 layers, 8 heads at width 2048, output 2304 (~508 M params)."""
  return ConnectorConfig(**kw)


def tiny(**kw) -> ConnectorConfig:
  base = dict(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, out_dim=12)
  base.update(kw)
  return ConnectorConfig(**base)


class ConnectorAttention(nn.Module):
  """Bidirectional softmax attention with biases and per-head RMSNorm on q and k."""

  cfg: ConnectorConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):  # (B, N, D)
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, _ = x.shape
    h, d = cfg.num_heads, cfg.head_dim
    q, k, v = (layers.dense(h * d, ("embed", "heads"), name=f"{p}_proj",
                            kernels=cfg.kernels, **kw)(x).reshape(b, n, h, d)
               for p in ("q", "k", "v"))
    q = layers.RMSNorm(cfg.rms_norm_eps, axis_name="head_dim", name="q_norm", **kw)(q)
    k = layers.RMSNorm(cfg.rms_norm_eps, axis_name="head_dim", name="k_norm", **kw)(k)
    o = layers.attention(q, k, v, implementation=cfg.attention_impl)
    return layers.dense(cfg.hidden_size, ("heads", "embed"), name="out_proj",
                        kernels=cfg.kernels, **kw)(o.reshape(b, n, h * d))


class ConnectorBlock(nn.Module):
  """Pre-norm: x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))."""

  cfg: ConnectorConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, _):
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x + ConnectorAttention(cfg, name="attn", **kw)(
        layers.RMSNorm(cfg.rms_norm_eps, axis_name="embed", name="norm1", **kw)(x))
    h = layers.RMSNorm(cfg.rms_norm_eps, axis_name="embed", name="norm2", **kw)(x)
    return x + layers.GatedMLP(cfg.intermediate_size, use_bias=True, name="ffn", kernels=cfg.kernels, **kw)(h), None


class Connector(nn.Module):
  """(B, N, hidden) query states -> (B, N, out_dim) caption embeddings."""

  config: ConnectorConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
    block = layers.maybe_remat(ConnectorBlock, cfg.remat)
    blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                     length=cfg.num_layers, unroll=cfg.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = blocks(cfg, name="layers", **kw)(x.astype(kw["dtype"]), None)
    x = layers.RMSNorm(cfg.rms_norm_eps, axis_name="embed", name="norm_final", **kw)(x)
    return layers.dense(cfg.out_dim, ("embed", "caption"), name="output_linear", kernels=cfg.kernels, **kw)(x)


def _boxed_init(cfg: ConnectorConfig, rng):
  return Connector(cfg).init(rng, jnp.zeros((1, 2, cfg.hidden_size)))["params"]


init_params, abstract_params, logical_axes = param_utils.param_fns(_boxed_init)
