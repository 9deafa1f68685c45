"""Qwen2.5-VL text decoder: GQA attention with M-RoPE, SwiGLU, RMSNorm, layers under nn.scan, explicit KV cache."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unirl_jax.models import layers
from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, TextConfig, dtype_of
from unirl_jax.models.qwen2_5_vl.rope import mrope_cos_sin

# A KV cache is a plain dict pytree:
#   k, v:  (layers, B, S, kv_heads, head_dim)  keys/values of every slot written so far (scan_layers=False:
#          a tuple of one (B, S, kv_heads, head_dim) array per layer)
#   mask:  (B, S) bool                          which slots hold real (non-padding) tokens
#   index: () int32                             next slot to write (all rows advance together)


def init_cache(cfg: Qwen2_5_VLConfig, batch: int, max_len: int, dtype=None) -> dict:
  t = cfg.text
  dtype = dtype or dtype_of(cfg.dtype)
  shape = (batch, max_len, t.num_key_value_heads, t.head_dim)
  if cfg.scan_layers:
    k = v = jnp.zeros((t.num_hidden_layers,) + shape, dtype)
  else:
    k, v = (tuple(jnp.zeros(shape, dtype) for _ in range(t.num_hidden_layers)) for _ in range(2))
  return {"k": k, "v": v, "mask": jnp.zeros((batch, max_len), bool), "index": jnp.zeros((), jnp.int32)}


def unstack_layers(cfg: Qwen2_5_VLConfig, params: dict) -> dict:
  """Params of the scanned model -> those of `cfg.replace(scan_layers=False)`: layer i's slice as layers_i, and
  the text weights cast to the compute dtype once (every use casts them to it anyway)."""
  dt = dtype_of(cfg.dtype)
  text = dict(params["language_model"])
  stacked = text.pop("layers")
  for i in range(cfg.text.num_hidden_layers):
    text[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
  return {**params, "language_model": jax.tree.map(lambda a: a.astype(dt), text)}


class Attention(nn.Module):
  """Mirrors `Qwen2_5_VLAttention`: q/k/v with bias, o without; rotary on q and k; grouped-query."""

  cfg: TextConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  attention_impl: Optional[str] = None
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, cos, sin, mask, layer_cache, index):
    cfg = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=nn.initializers.normal(cfg.initializer_range))
    b, t, _ = x.shape
    n, kvh, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q = layers.dense(n * hd, ("embed", "heads"), name="q_proj", kernels=self.kernels, **kw)(x).reshape(b, t, n, hd)
    k = layers.dense(kvh * hd, ("embed", "kv_heads"), name="k_proj",
                     kernels=self.kernels, **kw)(x).reshape(b, t, kvh, hd)
    v = layers.dense(kvh * hd, ("embed", "kv_heads"), name="v_proj",
                     kernels=self.kernels, **kw)(x).reshape(b, t, kvh, hd)
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    if layer_cache is not None:
      ck, cv = layer_cache
      k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
      new_cache = (k, v)
    else:
      new_cache = None
    o = layers.attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, implementation=self.attention_impl)
    o = layers.dense(cfg.hidden_size, ("heads", "embed"), use_bias=False, name="o_proj", kernels=self.kernels, **kw)(
        o.reshape(b, t, n * hd))
    return o, new_cache


class DecoderLayer(nn.Module):
  """Mirrors `Qwen2_5_VLDecoderLayer` (pre-norm residual attention + MLP). Scanned: (x, cache_l) -> (x, cache_l)."""

  cfg: TextConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  attention_impl: Optional[str] = None
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, layer_cache, cos, sin, mask, index):
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.RMSNorm(cfg.rms_norm_eps, axis_name="embed", name="input_layernorm", **kw)(x)
    h, layer_cache = Attention(cfg, self.dtype, self.param_dtype, self.attention_impl, self.kernels, name="self_attn")(
        h, cos, sin, mask, layer_cache, index)
    x = x + h
    h = layers.RMSNorm(cfg.rms_norm_eps, axis_name="embed", name="post_attention_layernorm", **kw)(x)
    mlp = layers.GatedMLP(cfg.intermediate_size, name="mlp", kernels=self.kernels, init_std=cfg.initializer_range, **kw)
    return x + mlp(h), layer_cache


def attention_mask_4d(key_mask: jax.Array, q_len: int, index) -> jax.Array:
  """(B, S) key validity -> (B, 1, T, S) causal mask for queries at slots index..index+T-1.

  A query always sees its own slot, so padding rows stay finite (their outputs are never used).
  """
  s = key_mask.shape[1]
  q_slot = index + jnp.arange(q_len)[:, None]
  k_slot = jnp.arange(s)[None, :]
  allowed = (k_slot <= q_slot)[None] & key_mask[:, None, :]
  allowed = allowed | (k_slot == q_slot)[None]
  return allowed[:, None]


class TextModel(nn.Module):
  """Mirrors `Qwen2_5_VLTextModel`: embeddings, decoder layers, final norm. Returns post-norm hidden states."""

  config: Qwen2_5_VLConfig

  def setup(self):
    top, cfg = self.config, self.config.text
    dtype, pdtype = dtype_of(top.dtype), dtype_of(top.param_dtype)
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=pdtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), ("vocab", "embed")))
    block = layers.maybe_remat(DecoderLayer, top.remat)
    if top.scan_layers:
      self.layers = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), length=cfg.num_hidden_layers,
          unroll=top.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})(
              cfg, dtype, pdtype, top.attention_impl, top.kernels)
    else:  # named layers_0, layers_1, ... (see unstack_layers)
      self.layers = [block(cfg, dtype, pdtype, top.attention_impl, top.kernels) for _ in range(cfg.num_hidden_layers)]
    self.norm = layers.RMSNorm(cfg.rms_norm_eps, dtype=dtype, param_dtype=pdtype, axis_name="embed")

  def embed(self, input_ids):
    return self.embed_tokens(input_ids)

  def attend(self, hidden):
    return self.embed_tokens.attend(hidden)

  def __call__(self, inputs_embeds, position_ids, attention_mask=None, cache=None):
    """inputs_embeds (B, T, D); position_ids (3, B, T); attention_mask (B, T) -> hidden (B, T, D), cache."""
    b, t, _ = inputs_embeds.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), bool)
    attention_mask = attention_mask.astype(bool)
    cos, sin = mrope_cos_sin(position_ids, self.config.text, inputs_embeds.dtype)
    if cache is None:
      index, layer_cache = 0, None
      mask = attention_mask_4d(attention_mask, t, 0)
    else:
      index = cache["index"]
      key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index))
      mask = attention_mask_4d(key_mask, t, index)
      layer_cache = (cache["k"], cache["v"])
    if self.config.scan_layers:
      x, layer_cache = self.layers(inputs_embeds, layer_cache, cos, sin, mask, index)
    else:
      x, ks, vs = inputs_embeds, [], []
      for i, layer in enumerate(self.layers):
        x, c = layer(x, None if layer_cache is None else (layer_cache[0][i], layer_cache[1][i]), cos, sin, mask,
                     index)
        if c is not None:
          ks.append(c[0])
          vs.append(c[1])
      layer_cache = (tuple(ks), tuple(vs)) if layer_cache is not None else None
    x = self.norm(x)
    if cache is not None:
      cache = {"k": layer_cache[0], "v": layer_cache[1], "mask": key_mask, "index": index + t}
    return x, cache
