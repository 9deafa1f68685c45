"""Small building blocks shared by the model ports: logically-partitioned Dense, RMSNorm, attention, remat."""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
REMAT_POLICIES = ("none", "full", "save_dots")


KERNELS = ("auto", "cpu", "accelerator")


def kernels_for(kernels: str) -> str:
  """The kernel family a model config's `kernels` names: "cpu" or "accelerator"; "auto" is the backend JAX
  compiles for by default (set it explicitly to compile for another target, e.g. bench --compile_only)."""
  if kernels == "auto":
    return "cpu" if jax.default_backend() == "cpu" else "accelerator"
  if kernels not in KERNELS:
    raise ValueError(f"kernels {kernels!r} not one of {KERNELS} (run config: model.kernels)")
  return kernels


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *,
                     f32_result: bool = False, **kw):
  """`lax.dot_general` for a Dense's (..., in) x (in, out): leading dims merged into one first. Same math; the
  gradient of the N-D form makes XLA:CPU transpose dy and leave its fast matmul path (3x slower backward).
  With f32_result (the "cpu" kernels) a 16-bit matmul asks for a float32 result and rounds it after: XLA:CPU
  runs only that form on its fast (AMX/YNNPACK) path, 6x faster; accelerators accumulate in float32 anyway."""
  out_dtype = None
  if (f32_result and preferred_element_type is None
      and jnp.result_type(lhs, rhs) in (jnp.bfloat16, jnp.float16)):
    out_dtype, preferred_element_type = jnp.result_type(lhs, rhs), jnp.float32
  (lc, rc), batch = dimension_numbers
  if lhs.ndim > 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,) and batch == ((), ()) and rhs.ndim == 2:
    out = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())), precision=precision,
                              preferred_element_type=preferred_element_type, **kw)
    out = out.reshape(lhs.shape[:-1] + rhs.shape[1:])
  else:
    out = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                              preferred_element_type=preferred_element_type, **kw)
  return out if out_dtype is None else out.astype(out_dtype)


# One function object per kernel family, so modules built with the same setting compare equal.
_DOT_GENERAL = {"cpu": functools.partial(flat_dot_general, f32_result=True),
                "accelerator": functools.partial(flat_dot_general, f32_result=False)}


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, kernels: str = "auto", name: Optional[str] = None,
          kernel_init=nn.initializers.normal(0.02)) -> nn.Dense:
  """`nn.Dense` whose kernel carries logical axis names (in, out) and bias the out axis; `kernels` as in
  `kernels_for`."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      dot_general=_DOT_GENERAL[kernels_for(kernels)],
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


class RMSNorm(nn.Module):
  """Mirrors `Qwen2RMSNorm` / diffusers' `RMSNorm`: normalise in float32, cast to the compute dtype, then
  scale (and shift, with `use_bias`). Without `use_scale` it has no params (elementwise_affine=False)."""

  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str = "norm"
  use_scale: bool = True
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)).astype(self.dtype)
    if self.use_scale:
      scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                         (x.shape[-1],), self.param_dtype)
      y = y * scale.astype(self.dtype)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
                        (x.shape[-1],), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: (..., T, N, D); cos/sin: (..., T, D) broadcast over heads."""
  return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None, *,
              kv_lengths: Optional[jax.Array] = None, implementation: Optional[str] = None) -> jax.Array:
  """Softmax attention through `jax.nn.dot_product_attention` (cuDNN flash attention on GPUs).

  q: (B, T, N, D); k, v: (B, S, K, D) with N % K == 0 (grouped-query); mask broadcastable to
  (B, N, T, S), True = attend. Softmax runs in float32 as the references do.
  """
  return jax.nn.dot_product_attention(q, k, v, mask=mask, key_value_seq_lengths=kv_lengths,
                                      implementation=implementation)


def remat_policy(name: str):
  return {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
          "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}[name]


def maybe_remat(module_cls, policy: str, static_argnums=()):
  """Wraps a layer class in `nn.remat` unless the policy is "none"."""
  if policy == "none":
    return module_cls
  return nn.remat(module_cls, policy=remat_policy(policy), prevent_cse=False, static_argnums=static_argnums)


class GatedMLP(nn.Module):
  """SwiGLU feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x)) (transformers' `Qwen2MLP` naming)."""

  intermediate_size: int
  use_bias: bool = False
  axes: tuple[str, str] = ("embed", "mlp")  # logical names of (model width, hidden width)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"
  init_std: float = 0.02  # the kernels' N(0, std²) init

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias, kernels=self.kernels,
              kernel_init=nn.initializers.normal(self.init_std))
    g = dense(self.intermediate_size, self.axes, name="gate_proj", **kw)(x)
    u = dense(self.intermediate_size, self.axes, name="up_proj", **kw)(x)
    return dense(x.shape[-1], self.axes[::-1], name="down_proj", **kw)(nn.silu(g) * u)


def _shift(x: jax.Array, s: int, axis: int) -> jax.Array:
  """out[..., i, ...] = x[..., i + s, ...] along `axis`, zero where i + s falls outside."""
  if s == 0:
    return x
  n = x.shape[axis]
  if abs(s) >= n:
    return jnp.zeros_like(x)
  zeros = jnp.zeros(x.shape[:axis] + (abs(s),) + x.shape[axis + 1:], x.dtype)
  kept = jax.lax.slice_in_dim(x, max(s, 0), n + min(s, 0), axis=axis)
  return jnp.concatenate([kept, zeros] if s > 0 else [zeros, kept], axis=axis)


class DepthwiseConv(nn.Module):
  """`nn.Conv(C, (k, k), padding=k // 2, feature_group_count=C)` with the same params (HWIO kernel (k, k, 1, C),
  bias (C,)). impl "auto" computes it as shifted multiply-adds with the "cpu" kernels (k along W, then k along H),
  where XLA's grouped convolution is ~15x slower (forward and backward), and as a convolution with the
  "accelerator" ones; "conv" / "shifted" force one."""

  features: int
  kernel_size: int
  axis: Optional[str] = None  # logical name of the channel axis
  use_bias: bool = True
  impl: str = "auto"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, C)
    k, c = self.kernel_size, self.features
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                              (None, None, None, self.axis)), (k, k, 1, c),
                        self.param_dtype)
    bias = (self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis,)), (c,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    impl = self.impl if self.impl != "auto" else ("shifted" if kernels_for(self.kernels) == "cpu" else "conv")
    p = k // 2
    if impl == "conv":
      y = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((p, p), (p, p)), feature_group_count=c,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    elif impl == "shifted":
      acc = jnp.promote_types(x.dtype, jnp.float32)  # accumulate like the convolution does (fp32 in bf16)
      xa, kf = x.astype(acc), kernel.astype(acc)
      # Row sums first (k shifts along W), then k shifts of those along H: each output is read from k + k
      # shifted copies instead of k², which keeps XLA:CPU's fused gradient small.
      rows = [sum(_shift(xa, j - p, 2) * kf[i, j, 0] for j in range(k)) for i in range(k)]
      y = sum(_shift(r, i - p, 1) for i, r in enumerate(rows)).astype(x.dtype)
    else:
      raise ValueError(f"DepthwiseConv impl {self.impl!r} not one of auto, conv, shifted")
    return y if bias is None else y + bias


class GroupedConv1x1(nn.Module):
  """`nn.Conv(C, (1, 1), feature_group_count=G, use_bias=False)` with the same kernel (1, 1, C/G, C), as a
  per-group einsum (XLA:CPU's grouped convolution is slow, its gradient ~25x)."""

  features: int
  groups: int
  axis: Optional[str] = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # (B, H, W, C)
    c, g = self.features, self.groups
    kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                              (None, None, None, self.axis)),
                        (1, 1, x.shape[-1] // g, c), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    w = kernel[0, 0].reshape(x.shape[-1] // g, g, c // g).transpose(1, 0, 2)  # (G, in/G, out/G)
    y = jnp.einsum("...gi,gio->...go", x.reshape(x.shape[:-1] + (g, x.shape[-1] // g)), w)
    return y.reshape(x.shape[:-1] + (c,))
