"""DC-AE building blocks (NHWC): residual / EfficientViT blocks, multiscale linear attention, up/down sampling."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from unirl_jax.models import layers

Dtype = Any

ACTIVATIONS = {
    "silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),  # torch nn.GELU() is the exact erf form
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}
NORM_TYPES = ("rms_norm", "batch_norm")


def activation(name: Optional[str]):
  """diffusers' `get_activation`; None is the identity (as in diffusers' ResBlock)."""
  return (lambda x: x) if name is None else ACTIVATIONS[name.lower()]


def conv(features: int, kernel: int, axes: tuple[Optional[str], Optional[str]], *, stride: int = 1,
         use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
         name: Optional[str] = None) -> nn.Conv:
  """torch `nn.Conv2d(k, stride, padding=k // 2)` in NHWC; kernel HWIO with logical names (-, -, in, out).
  Grouped convolutions use layers.DepthwiseConv / GroupedConv1x1."""
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((p, p), (p, p)),
                 use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                 kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), (None, None) + axes),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
  """torch `F.pixel_unshuffle` in NHWC: (B, H*r, W*r, C) -> (B, H, W, C*r*r), channel c*r*r + i*r + j."""
  return einops.rearrange(x, "b (h i) (w j) c -> b h w (c i j)", i=r, j=r)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """torch `F.pixel_shuffle` in NHWC: (B, H, W, C*r*r) -> (B, H*r, W*r, C), the inverse of `pixel_unshuffle`."""
  return einops.rearrange(x, "b h w (c i j) -> b (h i) (w j) c", i=r, j=r)


def upsample_nearest(x: jax.Array, r: int) -> jax.Array:
  """torch `F.interpolate(scale_factor=r, mode="nearest")` in NHWC."""
  return jnp.repeat(jnp.repeat(x, r, axis=1), r, axis=2)


class BatchNorm(nn.Module):
  """Mirrors torch `nn.BatchNorm2d` in eval mode; the running statistics are params `mean` / `var`."""

  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def p(name, init):
      v = self.param(name, nn.with_logical_partitioning(init, ("norm",)), (x.shape[-1],), self.param_dtype)
      return v.astype(jnp.float32)

    scale, bias = p("scale", nn.initializers.ones_init()), p("bias", nn.initializers.zeros_init())
    mean, var = p("mean", nn.initializers.zeros_init()), p("var", nn.initializers.ones_init())
    y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


def norm(norm_type: str, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Module:
  """diffusers' `get_normalization(norm_type, C)` (eps 1e-5, affine, bias) over the channel axis."""
  if norm_type == "rms_norm":
    return layers.RMSNorm(eps=1e-5, dtype=dtype, param_dtype=param_dtype, use_bias=True, name=name)
  if norm_type == "batch_norm":
    return BatchNorm(dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"norm type {norm_type!r} not one of {NORM_TYPES}")


class ResBlock(nn.Module):
  """Mirrors diffusers' DC-AE `ResBlock`: x + norm(conv2(act(conv1(x))))."""

  norm_type: str = "rms_norm"
  act_fn: Optional[str] = "silu"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = x.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = conv(c, 3, ("ae_embed", "ae_embed"), name="conv1", **kw)(x)
    h = conv(c, 3, ("ae_embed", "ae_embed"), use_bias=False, name="conv2", **kw)(activation(self.act_fn)(h))
    return norm(self.norm_type, name="norm", **kw)(h) + x


class MultiscaleProjection(nn.Module):
  """Mirrors diffusers' `SanaMultiscaleAttentionProjection`: depthwise kxk conv, then a per-head 1x1 conv."""

  num_heads: int
  kernel_size: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"

  @nn.compact
  def __call__(self, qkv: jax.Array) -> jax.Array:  # (B, H, W, 3 * inner)
    c, kw = qkv.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False)
    h = layers.DepthwiseConv(c, self.kernel_size, "ae_heads", name="proj_in", kernels=self.kernels, **kw)(qkv)
    return layers.GroupedConv1x1(c, 3 * self.num_heads, "ae_heads", name="proj_out", dtype=self.dtype,
                                 param_dtype=self.param_dtype)(h)


def relu_linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, eps: float) -> jax.Array:
  """out_n = sum_m v_m (k_m . q_n) / (sum_m k_m . q_n + eps), in O(N d^2) float32; q, k, v: (B, N, G, d).

  The same sums, in the same order, as diffusers' `apply_linear_attention` ((V_pad K^T) Q with V padded by a
  row of ones); its small-N `apply_quadratic_attention` branch is the same function up to rounding.
  """
  hi = jax.lax.Precision.HIGHEST
  vk = jnp.einsum("bngi,bngj->bgij", v, k, precision=hi)  # (B, G, d, d)
  num = jnp.einsum("bgij,bngj->bngi", vk, q, precision=hi)
  den = jnp.einsum("bgj,bngj->bng", k.sum(axis=1), q, precision=hi)[..., None]
  return num / (den + eps)


class MultiscaleLinearAttention(nn.Module):
  """Mirrors diffusers' `SanaMultiscaleLinearAttention` + `SanaMultiscaleAttnProcessor2_0` (residual on)."""

  head_dim: int
  kernel_sizes: Sequence[int] = (5,)
  norm_type: str = "rms_norm"
  eps: float = 1e-15
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, C)
    b, hh, ww, c = x.shape
    d, kw = self.head_dim, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    heads = c // d
    qkv = jnp.concatenate([layers.dense(heads * d, ("ae_embed", "ae_heads"), use_bias=False, name=n,
                                        kernels=self.kernels, **kw)(x)
                           for n in ("to_q", "to_k", "to_v")], axis=-1)  # (B, H, W, 3 * heads * d)
    scales = [qkv] + [MultiscaleProjection(heads, ks, name=f"to_qkv_multiscale_{i}", kernels=self.kernels, **kw)(qkv)
                      for i, ks in enumerate(self.kernel_sizes)]
    # Every consecutive 3d channels form one (q, k, v) group, as diffusers' reshape to (B, -1, 3d, HW) does.
    h = einops.rearrange(jnp.concatenate(scales, axis=-1).astype(jnp.float32),
                         "b h w (g t d) -> t b (h w) g d", t=3, d=d)
    out = relu_linear_attention(nn.relu(h[0]), nn.relu(h[1]), h[2], self.eps)  # (B, N, G, d)
    out = einops.rearrange(out.astype(self.dtype), "b (h w) g d -> b h w (g d)", h=hh, w=ww)
    out = layers.dense(c, ("ae_heads", "ae_embed"), use_bias=False, name="to_out", kernels=self.kernels, **kw)(out)
    return norm(self.norm_type, name="norm_out", **kw)(out) + x


class GLUMBConv(nn.Module):
  """Mirrors diffusers' `GLUMBConv` as DC-AE builds it (expand 4, rms_norm, residual); 1x1 convs as Dense."""

  expand_ratio: float = 4
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = x.shape[-1], dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hid = int(self.expand_ratio * c)
    h = nn.silu(layers.dense(2 * hid, ("ae_embed", "ae_mlp"), name="conv_inverted", kernels=self.kernels, **kw)(x))
    h = layers.DepthwiseConv(2 * hid, 3, "ae_mlp", name="conv_depth", kernels=self.kernels, **kw)(h)
    h, gate = jnp.split(h, 2, axis=-1)
    h = layers.dense(c, ("ae_mlp", "ae_embed"), use_bias=False, name="conv_point",
                     kernels=self.kernels, **kw)(h * nn.silu(gate))
    return layers.RMSNorm(eps=1e-5, use_bias=True, name="norm", **kw)(h) + x


class EfficientViTBlock(nn.Module):
  """Mirrors diffusers' `EfficientViTBlock`: multiscale linear attention, then GLUMBConv."""

  head_dim: int
  kernel_sizes: Sequence[int] = (5,)
  norm_type: str = "rms_norm"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = MultiscaleLinearAttention(self.head_dim, tuple(self.kernel_sizes), self.norm_type, name="attn",
                                  kernels=self.kernels, **kw)(x)
    return GLUMBConv(name="conv_out", kernels=self.kernels, **kw)(x)


class DCDownBlock2d(nn.Module):
  """Mirrors diffusers' `DCDownBlock2d`: stride-2 conv (or conv + pixel-unshuffle) + channel-averaged
  pixel-unshuffle shortcut."""

  out_channels: int
  pixel_unshuffle: bool = True
  shortcut: bool = True
  in_axis: str = "ae_embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, name="conv")
    if self.pixel_unshuffle:
      y = pixel_unshuffle(conv(self.out_channels // 4, 3, (self.in_axis, "ae_embed"), **kw)(x), 2)
    else:
      y = conv(self.out_channels, 3, (self.in_axis, "ae_embed"), stride=2, **kw)(x)
    if not self.shortcut:
      return y
    group = x.shape[-1] * 4 // self.out_channels
    return y + einops.reduce(pixel_unshuffle(x, 2), "b h w (c g) -> b h w c", "mean", g=group)


class DCUpBlock2d(nn.Module):
  """Mirrors diffusers' `DCUpBlock2d`: nearest-upsample + conv (or conv + pixel-shuffle) + channel-repeated
  pixel-shuffle shortcut."""

  out_channels: int
  interpolate: bool = False
  shortcut: bool = True
  out_axis: str = "ae_embed"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, name="conv")
    if self.interpolate:
      y = conv(self.out_channels, 3, ("ae_embed", self.out_axis), **kw)(upsample_nearest(x, 2))
    else:
      y = pixel_shuffle(conv(self.out_channels * 4, 3, ("ae_embed", self.out_axis), **kw)(x), 2)
    if not self.shortcut:
      return y
    repeats = self.out_channels * 4 // x.shape[-1]
    return y + pixel_shuffle(jnp.repeat(x, repeats, axis=-1), 2)  # torch repeat_interleave on channels
