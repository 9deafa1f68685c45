"""Qwen2.5-VL vision tower: patch embed, 2-D rope, window/full attention blocks, patch merger."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models import layers
from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, VisionConfig, dtype_of
from unirl_jax.models.qwen2_5_vl.rope import vision_rope_cos_sin


@dataclasses.dataclass(frozen=True)
class Segments:
  """Packed variable-length attention groups as a padded (S, L) gather table over the N tokens."""

  gather: np.ndarray  # (S, L) token index, N for padding (points at an appended zero row)
  lengths: np.ndarray  # (S,)
  scatter: np.ndarray  # (N,) flat slot of each token in the (S*L) layout


@dataclasses.dataclass(frozen=True)
class VisionLayout:
  """Everything the tower needs that depends only on `grid_thw` (host-side, static under jit)."""

  window_index: np.ndarray  # (N/unit,) merge-unit permutation into window order
  reverse_index: np.ndarray  # its inverse
  cos: np.ndarray  # (N, head_dim) in window order
  sin: np.ndarray
  windows: Segments  # window-attention groups (window order)
  full: Segments  # full-attention groups: one per image frame


def _segments(cu: np.ndarray) -> Segments:
  lengths = np.diff(cu)
  lengths = lengths[lengths > 0]
  n, s, l = int(lengths.sum()), len(lengths), int(lengths.max())
  gather = np.full((s, l), n, np.int32)
  scatter = np.empty((n,), np.int32)
  start = 0
  for i, ln in enumerate(lengths):
    gather[i, :ln] = np.arange(start, start + ln)
    scatter[start:start + ln] = i * l + np.arange(ln)
    start += ln
  return Segments(gather, lengths.astype(np.int32), scatter)


def _concrete_grid(grid_thw) -> np.ndarray:
  if isinstance(grid_thw, jax.core.Tracer):
    raise TypeError("image_grid_thw must be concrete (a numpy array or nested tuple): it fixes the shapes "
                    "of the vision tower. Under jax.jit pass it as a static argument.")
  grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
  return grid


@functools.lru_cache(maxsize=64)
def _layout_cached(grid_key: tuple, cfg: VisionConfig) -> VisionLayout:
  grid = np.asarray(grid_key, np.int64).reshape(-1, 3)
  m, unit = cfg.spatial_merge_size, cfg.spatial_merge_size**2
  # (row, col) of each patch, patches ordered (t, h/m, w/m, m, m) as the processor emits them.
  hw = []
  for t, h, w in grid:
    if h % m or w % m:
      raise ValueError(f"image grid {(t, h, w)} not divisible by spatial_merge_size {m}")
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    blk = (h // m, m, w // m, m)
    hpos = hh.reshape(blk).transpose(0, 2, 1, 3).reshape(-1)
    wpos = ww.reshape(blk).transpose(0, 2, 1, 3).reshape(-1)
    hw.append(np.tile(np.stack([hpos, wpos], -1), (t, 1)))
  hw = np.concatenate(hw)
  # Window permutation over merge units (mirrors transformers' get_vision_window_index).
  ws = cfg.window_size // m // cfg.patch_size
  win_index, cu_win, offset = [], [0], 0
  for t, h, w in grid:
    lh, lw = h // m, w // m
    index = np.arange(t * lh * lw).reshape(t, lh, lw)
    ph, pw = -lh % ws, -lw % ws
    padded = np.pad(index, ((0, 0), (0, ph), (0, pw)), constant_values=-1)
    nh, nw = (lh + ph) // ws, (lw + pw) // ws
    padded = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(t, nh * nw, ws * ws)
    for win in padded.reshape(-1, ws * ws):
      win = win[win >= 0]
      win_index.append(win + offset)
      cu_win.append(cu_win[-1] + len(win) * unit)
    offset += t * lh * lw
  window_index = np.concatenate(win_index)
  reverse = np.argsort(window_index)
  token_perm = (window_index[:, None] * unit + np.arange(unit)).reshape(-1)
  cos, sin = vision_rope_cos_sin(hw[token_perm], cfg.head_dim, cfg.rope_theta)
  cu_full = np.concatenate([[0], np.cumsum(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0]))])
  return VisionLayout(window_index, reverse, cos, sin, _segments(np.asarray(cu_win)), _segments(cu_full))


def vision_layout(grid_thw, cfg: VisionConfig) -> VisionLayout:
  grid = _concrete_grid(grid_thw)
  return _layout_cached(tuple(map(int, grid.reshape(-1))), cfg)


def _packed_attention(q, k, v, seg: Segments, impl):
  """q, k, v: (N, H, D) -> attention within each segment -> (N, H, D)."""
  n = q.shape[0]
  def pack(x):
    x = jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])
    return x[seg.gather]  # (S, L, H, D)
  out = layers.attention(pack(q), pack(k), pack(v), kv_lengths=jnp.asarray(seg.lengths), implementation=impl)
  return out.reshape((-1,) + out.shape[2:])[seg.scatter][:n]


class VisionAttention(nn.Module):
  """Mirrors `Qwen2_5_VLVisionAttention`: fused qkv, 2-D rope in float32, attention within segments."""

  cfg: VisionConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  layout: VisionLayout
  attention_impl: str | None = None
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, is_full):  # x: (N, D)
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    nh, hd = cfg.num_heads, cfg.head_dim
    qkv = layers.dense(3 * cfg.hidden_size, ("vit_embed", "vit_qkv"), name="qkv", kernels=self.kernels, **kw)(x)
    q, k, v = (qkv.reshape(-1, 3, nh, hd)[:, i] for i in range(3))  # (N, H, D) each
    cos, sin = jnp.asarray(self.layout.cos)[:, None], jnp.asarray(self.layout.sin)[:, None]
    rot = lambda y: (y.astype(jnp.float32) * cos + layers.rotate_half(y.astype(jnp.float32)) * sin).astype(y.dtype)
    q, k = rot(q), rot(k)
    o = jax.lax.cond(is_full,
                     lambda: _packed_attention(q, k, v, self.layout.full, self.attention_impl),
                     lambda: _packed_attention(q, k, v, self.layout.windows, self.attention_impl))
    return layers.dense(cfg.hidden_size, ("vit_heads", "vit_embed"), name="proj",
                        kernels=self.kernels, **kw)(o.reshape(-1, nh * hd))


class VisionBlock(nn.Module):
  """Mirrors `Qwen2_5_VLVisionBlock`; `is_full` picks full-image or window attention for this layer."""

  cfg: VisionConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  layout: VisionLayout
  attention_impl: str | None = None
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x, is_full):  # x: (N, D)
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = layers.RMSNorm(cfg.rms_norm_eps, axis_name="vit_embed", name="norm1", **kw)(x)
    x = x + VisionAttention(cfg, self.dtype, self.param_dtype, self.layout, self.attention_impl,
                            self.kernels, name="attn")(
        h, is_full)
    h = layers.RMSNorm(cfg.rms_norm_eps, axis_name="vit_embed", name="norm2", **kw)(x)
    return x + layers.GatedMLP(cfg.intermediate_size, True, ("vit_embed", "vit_mlp"), name="mlp",
                               kernels=self.kernels, **kw)(h), None


class PatchMerger(nn.Module):
  """Mirrors `Qwen2_5_VLPatchMerger`: RMSNorm, 2x2 concat, Linear-GELU(exact)-Linear."""

  cfg: VisionConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  kernels: str = "auto"

  @nn.compact
  def __call__(self, x):
    cfg, kw = self.cfg, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.RMSNorm(1e-6, axis_name="vit_embed", name="ln_q", **kw)(x)
    x = x.reshape(-1, cfg.hidden_size * cfg.spatial_merge_size**2)
    x = layers.dense(x.shape[-1], ("vit_merge", "vit_mlp"), name="mlp_0", kernels=self.kernels, **kw)(x)
    x = nn.gelu(x, approximate=False)
    return layers.dense(cfg.out_hidden_size, ("vit_mlp", "embed"), name="mlp_2", kernels=self.kernels, **kw)(x)


class VisionTower(nn.Module):
  """Mirrors `Qwen2_5_VisionTransformerPretrainedModel`.

  pixel_values (N, C*T*P*P) from the image processor, grid_thw (n_images, 3) concrete -> (N/4, out_dim)
  merged tokens in the processor's order.
  """

  config: Qwen2_5_VLConfig

  @nn.compact
  def __call__(self, pixel_values: jax.Array, grid_thw) -> jax.Array:
    top = self.config
    cfg = top.vision
    dtype, pdtype = dtype_of(top.dtype), dtype_of(top.param_dtype)
    layout = vision_layout(grid_thw, cfg)
    n = pixel_values.shape[0]
    expected = int(np.prod(_concrete_grid(grid_thw), axis=1).sum())
    if n != expected or pixel_values.shape[-1] != cfg.patch_dim:
      raise ValueError(f"pixel_values shape {pixel_values.shape} does not match image_grid_thw "
                       f"(expected ({expected}, {cfg.patch_dim}))")
    # Conv3d with kernel == stride over a flattened (C, T, P, P) patch is a Dense without bias.
    x = layers.dense(cfg.hidden_size, ("vit_patch", "vit_embed"), use_bias=False, name="patch_embed",
                     dtype=dtype, param_dtype=pdtype, kernels=top.kernels)(pixel_values.astype(dtype))
    unit = cfg.spatial_merge_size**2
    x = x.reshape(n // unit, unit, -1)[layout.window_index].reshape(n, -1)
    # transformers tests `layer in fullatt_block_indexes`: an index outside [0, depth) is simply never reached.
    full = [i for i in cfg.fullatt_block_indexes if 0 <= i < cfg.depth]
    is_full = jnp.zeros((cfg.depth,), bool).at[np.asarray(full, np.int32)].set(True)
    block = layers.maybe_remat(VisionBlock, top.remat)
    blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=0,
                     length=cfg.depth, unroll=top.scan_unroll, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = blocks(cfg, dtype, pdtype, layout, top.attention_impl, top.kernels, name="blocks")(x, is_full)
    x = PatchMerger(cfg, dtype, pdtype, top.kernels, name="merger")(x)
    return x[layout.reverse_index]
