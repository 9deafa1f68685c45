"""Small building blocks shared by the model ports: logically-partitioned Dense, RMSNorm, attention, remat."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
REMAT_POLICIES = ("none", "full", "save_dots")


def dense(features: int, axes: tuple[str, str], *, use_bias: bool = True, dtype: Dtype = jnp.float32,
          param_dtype: Dtype = jnp.float32, name: Optional[str] = None,
          kernel_init=nn.initializers.normal(0.02)) -> nn.Dense:
  """`nn.Dense` whose kernel carries logical axis names (in, out) and bias the out axis."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
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

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, use_bias=self.use_bias)
    g = dense(self.intermediate_size, self.axes, name="gate_proj", **kw)(x)
    u = dense(self.intermediate_size, self.axes, name="up_proj", **kw)(x)
    return dense(x.shape[-1], self.axes[::-1], name="down_proj", **kw)(nn.silu(g) * u)
