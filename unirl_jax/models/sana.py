"""SANA linear-attention DiT (diffusers `SanaTransformer2DModel`) with UniRL's reference-latent branch. NHWC."""

from __future__ import annotations

import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models import layers, param_utils
from unirl_jax.models.qwen2_5_vl.config import dtype_of
from unirl_jax.models.sana_config import SanaConfig, sana_600m, sana_1600m, tiny  # noqa: F401

LINEAR_ATTN_EPS = 1e-15
MASK_BIAS = -10000.0  # diffusers turns encoder masks into (1 - m) * -10000, not -inf


def sincos_pos_embed(embed_dim: int, height: int, width: int, base_size: int, interpolation_scale: float):
  """Mirrors diffusers' `get_2d_sincos_pos_embed` for a (height, width) grid -> (height*width, embed_dim) fp32.

  As in diffusers, the first half encodes the column (w) coordinate and the second the row (h), each as
  [sin | cos] over float64 frequencies of float32 positions.
  """
  gh = np.arange(height, dtype=np.float32) / np.float32(height / base_size) / np.float32(interpolation_scale)
  gw = np.arange(width, dtype=np.float32) / np.float32(width / base_size) / np.float32(interpolation_scale)
  w_pos, h_pos = np.meshgrid(gw, gh, indexing="xy")  # (height, width) each

  def one_d(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([one_d(embed_dim // 2, w_pos), one_d(embed_dim // 2, h_pos)], axis=1).astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
  """Mirrors diffusers' `Timesteps(flip_sin_to_cos=True, downscale_freq_shift=0)`: (B,) -> (B, dim) as [cos | sin]."""
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class PatchEmbed(nn.Module):
  """Mirrors diffusers' `PatchEmbed` (conv with stride = patch, row-major tokens, optional sin-cos positions)."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):  # (B, H, W, C) -> (B, H/p * W/p, D)
    cfg, p = self.cfg, self.cfg.patch_size
    x = nn.Conv(cfg.inner_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="proj",
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         (None, None, "latent", "embed")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))(x.astype(self.dtype))
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    if cfg.interpolation_scale is not None:
      pos = sincos_pos_embed(d, h, w, cfg.sample_size // p, cfg.interpolation_scale)
      x = (x.astype(jnp.float32) + pos[None]).astype(self.dtype)
    return x


class TwoLayerMLP(nn.Module):
  """linear_1 -> activation -> linear_2: diffusers' `TimestepEmbedding` (SiLU) and `PixArtAlphaTextProjection`
  (GELU, tanh approximation)."""

  dim: int
  dtype: Any
  param_dtype: Any
  activation: str = "silu"
  in_axis: str = "freq"
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.dense(self.dim, (self.in_axis, "embed"), name="linear_1", kernels=self.kernels, **kw)(x)
    if self.activation not in ("silu", "gelu_tanh"):
      raise ValueError(f"activation {self.activation!r} not 'silu' or 'gelu_tanh'")
    x = nn.silu(x) if self.activation == "silu" else nn.gelu(x, approximate=True)
    return layers.dense(self.dim, ("embed", "embed_out"), name="linear_2", kernels=self.kernels, **kw)(x)


class TimeEmbed(nn.Module):
  """Mirrors `AdaLayerNormSingle` (or `SanaCombinedTimestepGuidanceEmbeddings` with guidance_embeds).

  Returns (embedded timestep (B, D), the six block modulations (B, 6D)).
  """

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, timestep, guidance, batch):
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (batch,))
    temb = TwoLayerMLP(cfg.inner_dim, name="timestep_embedder",
                       kernels=cfg.kernels, **kw)(timestep_embedding(t).astype(self.dtype))
    if cfg.guidance_embeds:
      if guidance is None:
        raise ValueError("this SANA config has guidance_embeds=True: pass `guidance`")
      g = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32).reshape(-1), (batch,))
      temb = temb + TwoLayerMLP(cfg.inner_dim, name="guidance_embedder", kernels=cfg.kernels, **kw)(
          timestep_embedding(g).astype(self.dtype))
    t6 = layers.dense(6 * cfg.inner_dim, ("embed", "embed_out"), name="linear",
                      kernels=cfg.kernels, **kw)(nn.silu(temb))
    return temb, t6


class LinearAttention(nn.Module):
  """Mirrors `Attention` + `SanaLinearAttnProcessor2_0`: ReLU kernels, O(N d^2) in float32, eps 1e-15."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):  # (B, N, D)
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, _ = x.shape
    h, d = cfg.num_attention_heads, cfg.attention_head_dim
    q = layers.dense(h * d, ("embed", "heads"), use_bias=cfg.attention_bias, name="to_q", kernels=cfg.kernels, **kw)(x)
    k = layers.dense(h * d, ("embed", "heads"), use_bias=cfg.attention_bias, name="to_k", kernels=cfg.kernels, **kw)(x)
    v = layers.dense(h * d, ("embed", "heads"), use_bias=cfg.attention_bias, name="to_v", kernels=cfg.kernels, **kw)(x)
    if cfg.qk_norm:
      q = layers.RMSNorm(1e-5, axis_name="heads", name="norm_q", **kw)(q)
      k = layers.RMSNorm(1e-5, axis_name="heads", name="norm_k", **kw)(k)
    q = nn.relu(q).astype(jnp.float32).reshape(b, n, h, d)
    k = nn.relu(k).astype(jnp.float32).reshape(b, n, h, d)
    v = v.astype(jnp.float32).reshape(b, n, h, d)
    kv = jnp.einsum("bnhd,bnhe->bhde", k, v)  # (B, H, D, D): never an N x N matrix
    num = jnp.einsum("bnhd,bhde->bnhe", q, kv)
    den = jnp.einsum("bnhd,bhd->bnh", q, k.sum(axis=1))
    o = (num / (den[..., None] + LINEAR_ATTN_EPS)).reshape(b, n, h * d).astype(self.dtype)
    return layers.dense(cfg.inner_dim, ("heads", "embed"), name="to_out_0", kernels=cfg.kernels, **kw)(o)


def _cross_kv(cfg: SanaConfig, ctx, kw):
  """The caption tokens' keys and values for one block's cross-attention; call it inside the module named
  `attn2` (params attn2/to_k, attn2/to_v, attn2/norm_k). ctx (B, S, D) -> k, v (B, S, H·Dh)."""
  hd = cfg.num_cross_attention_heads * cfg.cross_attention_head_dim
  k = layers.dense(hd, ("embed", "heads"), name="to_k", kernels=cfg.kernels, **kw)(ctx)
  v = layers.dense(hd, ("embed", "heads"), name="to_v", kernels=cfg.kernels, **kw)(ctx)
  if cfg.qk_norm:
    k = layers.RMSNorm(1e-5, axis_name="heads", name="norm_k", **kw)(k)
  return k, v


class CrossAttention(nn.Module):
  """Mirrors `Attention` + `SanaAttnProcessor2_0`: softmax attention to the caption tokens, additive mask bias."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, ctx, mask_bias, kv=None):
    """x (B, N, D); ctx (B, S, D), or None with `kv` = this block's precomputed (k, v) (`SanaContext`);
    mask_bias (B, 1, 1, S) or None."""
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, _ = x.shape
    h, d = cfg.num_cross_attention_heads, cfg.cross_attention_head_dim
    q = layers.dense(h * d, ("embed", "heads"), name="to_q", kernels=cfg.kernels, **kw)(x)
    if cfg.qk_norm:
      q = layers.RMSNorm(1e-5, axis_name="heads", name="norm_q", **kw)(q)
    k, v = _cross_kv(cfg, ctx, kw) if kv is None else kv
    q, k, v = (t.reshape(b, t.shape[1], h, d) for t in (q, k, v))
    o = jax.nn.dot_product_attention(q, k, v, bias=mask_bias, implementation=cfg.attention_impl)
    return layers.dense(cfg.inner_dim, ("heads", "embed"), name="to_out_0",
                        kernels=cfg.kernels, **kw)(o.reshape(b, n, h * d))


class GLUMBConv(nn.Module):
  """Mirrors diffusers' `GLUMBConv` (no norm, no residual): 1x1 -> SiLU -> 3x3 depthwise -> value*SiLU(gate) -> 1x1."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):  # (B, H, W, D)
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    hidden = cfg.ff_hidden
    x = layers.dense(2 * hidden, ("embed", "mlp"), name="conv_inverted", kernels=cfg.kernels, **kw)(x)
    x = nn.silu(x)
    x = layers.DepthwiseConv(2 * hidden, 3, "mlp", name="conv_depth", kernels=cfg.kernels, **kw)(x)
    x, gate = jnp.split(x, 2, axis=-1)
    return layers.dense(cfg.inner_dim, ("mlp", "embed"), use_bias=False, name="conv_point",
                        kernels=cfg.kernels, **kw)(x * nn.silu(gate))


def _layer_norm(eps, dtype, affine=False, name=None):
  return nn.LayerNorm(epsilon=eps, use_scale=affine, use_bias=affine, dtype=dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


class SanaBlock(nn.Module):
  """Mirrors `SanaTransformerBlock`: adaLN-modulated linear self-attention, cross-attention, GLUMBConv."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any
  height: int
  width: int

  @nn.compact
  def __call__(self, x, t6, ctx, mask_bias, kv=None):  # x (B, N, D); t6 (B, 6D); kv: see CrossAttention
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    b, n, dim = x.shape
    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        lambda key, shape, dt: jax.random.normal(key, shape, dt) / dim**0.5, (None, "embed")), (6, dim),
        self.param_dtype)
    mod = table[None].astype(self.dtype) + t6.reshape(b, 6, dim)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod[:, i:i + 1] for i in range(6))
    h = _layer_norm(cfg.norm_eps, self.dtype, name="norm1")(x) * (1 + scale_msa) + shift_msa
    x = x + gate_msa * LinearAttention(cfg, name="attn1", **kw)(h.astype(x.dtype))
    x = x + CrossAttention(cfg, name="attn2", **kw)(x, ctx, mask_bias, kv)
    h = _layer_norm(cfg.norm_eps, self.dtype, cfg.norm_elementwise_affine, name="norm2")(x)
    h = h * (1 + scale_mlp) + shift_mlp
    ff = GLUMBConv(cfg, name="ff", **kw)(h.reshape(b, self.height, self.width, dim))
    return x + gate_mlp * ff.reshape(b, n, dim), None


def _caption(cfg: SanaConfig, encoder_hidden_states, encoder_attention_mask, dtype, kw):
  """Caption projection + norm (params caption_projection, caption_norm) and the mask as an additive bias."""
  ctx = TwoLayerMLP(cfg.inner_dim, activation="gelu_tanh", in_axis="caption", name="caption_projection",
                    kernels=cfg.kernels, **kw)(
      encoder_hidden_states.astype(dtype))
  ctx = layers.RMSNorm(1e-5, axis_name="embed", name="caption_norm", **kw)(ctx)
  mask_bias = None
  if encoder_attention_mask is not None:
    m = jnp.asarray(encoder_attention_mask).astype(jnp.float32)
    mask_bias = ((1.0 - m) * MASK_BIAS)[:, None, None, :].astype(dtype)
  return ctx, mask_bias


class _AttnKV(nn.Module):
  """`_cross_kv` in a module of its own (named attn2 by `_BlockKV`)."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, ctx):
    return _cross_kv(self.cfg, ctx, dict(dtype=self.dtype, param_dtype=self.param_dtype))


class _BlockKV(nn.Module):
  """One block's cross-attention K/V under the block's own param names (transformer_blocks/attn2/...)."""

  cfg: SanaConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, ctx):
    return ctx, _AttnKV(self.cfg, self.dtype, self.param_dtype, name="attn2")(ctx)


class SanaContext(nn.Module):
  """What every denoising step of one prompt batch shares: the projected caption's per-layer cross-attention
  K/V and mask bias, computed once per rollout instead of once per step. Applied with the SANA params;
  `SanaTransformer(..., context=...)` then skips the caption path. -> {"k", "v": (L, B, S, H·Dh), "mask_bias"}."""

  config: SanaConfig

  @nn.compact
  def __call__(self, encoder_hidden_states, encoder_attention_mask=None):
    cfg = self.config
    dtype = dtype_of(cfg.dtype)
    kw = dict(dtype=dtype, param_dtype=dtype_of(cfg.param_dtype))
    ctx, mask_bias = _caption(cfg, encoder_hidden_states, encoder_attention_mask, dtype, kw)
    blocks = nn.scan(_BlockKV, variable_axes={"params": 0}, split_rngs={"params": True}, length=cfg.num_layers,
                     unroll=cfg.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})
    _, (k, v) = blocks(cfg, dtype, kw["param_dtype"], name="transformer_blocks")(ctx)
    return {"k": k, "v": v, "mask_bias": mask_bias}


class SanaTransformer(nn.Module):
  """Mirrors diffusers' `SanaTransformer2DModel.forward`, NHWC: returns the velocity (B, H, W, out_channels).

  Pass `context` (from `SanaContext`, same params) instead of `encoder_hidden_states`/`encoder_attention_mask`
  to reuse the caption's K/V across denoising steps."""

  config: SanaConfig

  @nn.compact
  def __call__(self, hidden_states, encoder_hidden_states, timestep, encoder_attention_mask=None,
               ref_latents=None, guidance=None, context=None):
    cfg = self.config
    dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype)
    b, hh, ww, _ = hidden_states.shape
    p = cfg.patch_size
    if hh % p or ww % p:
      raise ValueError(f"latent size {(hh, ww)} not divisible by patch_size {p}")
    x = PatchEmbed(cfg, name="patch_embed", **kw)(hidden_states)
    if cfg.ref_branch:
      # Declared even when unused so the params always exist; zeros ref = UniRL's text-to-image input.
      ref = jnp.zeros_like(hidden_states) if ref_latents is None else ref_latents
      r = PatchEmbed(cfg, name="ref_patch_embed", **kw)(ref)
      x = x + layers.dense(cfg.inner_dim, ("embed", "embed_out"), name="ref_linear",
                           kernel_init=nn.initializers.zeros_init(), kernels=cfg.kernels, **kw)(r)
    elif ref_latents is not None:
      raise ValueError("ref_latents given but this SANA config has no reference branch (ref_branch=False)")

    temb, t6 = TimeEmbed(cfg, name="time_embed", **kw)(timestep, guidance, b)
    if context is None:
      ctx, mask_bias = _caption(cfg, encoder_hidden_states, encoder_attention_mask, dtype, kw)
      kv = None
    elif encoder_hidden_states is not None or encoder_attention_mask is not None:
      raise ValueError("pass either encoder_hidden_states (+ mask) or a precomputed context, not both")
    else:
      ctx, mask_bias, kv = None, context["mask_bias"], (context["k"], context["v"])

    block = layers.maybe_remat(SanaBlock, cfg.remat)
    blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0), length=cfg.num_layers,
                     unroll=cfg.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = blocks(cfg, dtype, pdtype, hh // p, ww // p, name="transformer_blocks")(x, t6, ctx, mask_bias, kv)

    table = self.param("scale_shift_table", nn.with_logical_partitioning(
        lambda key, shape, dt: jax.random.normal(key, shape, dt) / cfg.inner_dim**0.5, (None, "embed")),
        (2, cfg.inner_dim), pdtype)
    mod = table[None].astype(dtype) + temb[:, None]
    x = _layer_norm(1e-6, dtype, name="norm_out")(x) * (1 + mod[:, 1:2]) + mod[:, 0:1]
    x = layers.dense(p * p * cfg.out_channels, ("embed", "latent"), name="proj_out", kernels=cfg.kernels, **kw)(x)
    x = x.reshape(b, hh // p, ww // p, p, p, cfg.out_channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hh, ww, cfg.out_channels)


# ---- params -------------------------------------------------------------------------------------

def _init_inputs(cfg: SanaConfig):
  s = cfg.sample_size
  return (jnp.zeros((1, s, s, cfg.in_channels)), jnp.zeros((1, 2, cfg.caption_channels)), jnp.zeros((1,)),
          None, None, jnp.zeros((1,)) if cfg.guidance_embeds else None)


def _boxed_init(cfg: SanaConfig, rng):
  return SanaTransformer(cfg).init(rng, *_init_inputs(cfg))["params"]


_init_params, abstract_params, logical_axes = param_utils.param_fns(_boxed_init)


def init_params(cfg: SanaConfig, rng: Optional[jax.Array] = None) -> dict:
  """Random params; with a reference branch, `ref_patch_embed` starts as a copy of `patch_embed` (UniRL)."""
  params = _init_params(cfg, rng)
  return with_ref_branch(params) if cfg.ref_branch else params


def with_ref_branch(params: dict) -> dict:
  """Adds/overwrites UniRL's reference branch: ref_patch_embed = patch_embed, ref_linear = 0."""
  params = dict(params)
  params["ref_patch_embed"] = jax.tree.map(jnp.array, params["patch_embed"])
  d = params["patch_embed"]["proj"]["bias"].shape[0]
  dt = params["patch_embed"]["proj"]["bias"].dtype
  params["ref_linear"] = {"kernel": jnp.zeros((d, d), dt), "bias": jnp.zeros((d,), dt)}
  return params


def load(path: str, dtype: Optional[str] = None, mesh=None, rules=None, **overrides):
  """Loads a converted SANA dir (config.json + params/ + unirl_jax.json) -> (model, params)."""
  meta = param_utils.read_meta(path)
  cfg = SanaConfig.from_diffusers(os.path.join(path, "config.json"), **overrides)
  cfg = cfg.replace(param_dtype=meta.get("param_dtype", "float32"),
                    ref_branch=bool(meta.get("ref_branch", cfg.ref_branch)), **({"dtype": dtype} if dtype else {}))
  return SanaTransformer(cfg), param_utils.restore(path, cfg, abstract_params, logical_axes, "sana", mesh, rules)
