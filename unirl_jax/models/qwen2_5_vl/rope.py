"""Rotary positions of Qwen2.5-VL: 3-D M-RoPE for the decoder (and `get_rope_index`), 2-D rope for the ViT."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, TextConfig


def mrope_cos_sin(position_ids: jax.Array, cfg: TextConfig, dtype) -> tuple[jax.Array, jax.Array]:
  """Mirrors `Qwen2_5_VLRotaryEmbedding`: position_ids (3, B, T) -> cos, sin (B, T, head_dim).

  Frequency chunk i of `mrope_section` takes its angle from axis i % 3 (temporal, height, width).
  """
  d = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float32) / d))  # (d/2,)
  axis_of = np.concatenate([np.full(n, i % 3) for i, n in enumerate(cfg.mrope_section)])  # (d/2,)
  pos = position_ids.astype(jnp.float32)  # (3, B, T)
  # Pick, per frequency, the position of its axis: (B, T, d/2).
  pos_per_freq = jnp.moveaxis(pos, 0, -1)[..., axis_of]
  freqs = pos_per_freq * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def text_positions(attention_mask: jax.Array) -> jax.Array:
  """1-D positions that skip left padding, on all three axes: (3, B, T); padding gets 0."""
  m = attention_mask.astype(jnp.int32)
  pos = jnp.where(m > 0, jnp.cumsum(m, axis=-1) - 1, 0)
  return jnp.broadcast_to(pos[None], (3,) + pos.shape)


def get_rope_index(input_ids: jax.Array, image_grid_thw: Optional[np.ndarray], attention_mask: Optional[jax.Array],
                   cfg: Qwen2_5_VLConfig) -> tuple[jax.Array, jax.Array]:
  """Mirrors `Qwen2_5_VLModel.get_rope_index` for text and images, vectorised and jittable.

  input_ids (B, T); image_grid_thw (n_images, 3) in batch order; attention_mask (B, T) or None.
  Returns position_ids (3, B, T) (0 at padding, like the reference) and rope_deltas (B, 1) =
  max position + 1 - number of real tokens, which the decode steps add to their 1-D index.

  Each image block of `llm_t*llm_h*llm_w` placeholder tokens gets (start + t, start + row, start + col)
  where `start` is the running position; the text after it continues from start + max(llm_h, llm_w).
  """
  b, t = input_ids.shape
  valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)
  is_img = (input_ids == cfg.image_token_id) & valid
  idx = jnp.broadcast_to(jnp.arange(t), (b, t))
  if image_grid_thw is None or len(image_grid_thw) == 0:
    pos = jnp.where(valid, jnp.cumsum(valid, axis=-1) - 1, 0).astype(jnp.int32)
    pos3 = jnp.broadcast_to(pos[None], (3, b, t))
  else:
    grid = jnp.asarray(np.asarray(image_grid_thw), jnp.int32)
    m = cfg.vision.spatial_merge_size
    gh, gw = grid[:, 1] // m, grid[:, 2] // m
    # Image blocks are runs of placeholders among the *valid* tokens (padding between them is skipped).
    prev_img = _shift_valid(is_img, valid, direction=1)
    next_img = _shift_valid(is_img, valid, direction=-1)
    starts = is_img & ~prev_img
    ends = is_img & ~next_img
    # Global image index (images are numbered in batch-major order, as the processor emits them).
    flat_starts = starts.reshape(-1).astype(jnp.int32)
    img_id = (jnp.cumsum(flat_starts) - 1).reshape(b, t)
    img_id = jnp.clip(img_id, 0, grid.shape[0] - 1)
    start_col = jax.lax.cummax(jnp.where(starts, idx, -1), axis=1)
    j = idx - start_col  # offset inside the image block
    h, w = gh[img_id], gw[img_id]
    ti, hi, wi = j // (h * w), (j // w) % h, j % w
    # Running position: +1 per valid text token, +max(h, w) at the last placeholder of an image.
    inc = jnp.where(valid & ~is_img, 1, 0) + jnp.where(ends, jnp.maximum(h, w), 0)
    base = jnp.cumsum(inc, axis=1) - inc  # exclusive prefix sum
    # Inside a block `base` is the block's start: only the block's last token increments.
    t_pos = jnp.where(is_img, base + ti, base)
    h_pos = jnp.where(is_img, base + hi, base)
    w_pos = jnp.where(is_img, base + wi, base)
    pos3 = jnp.stack([t_pos, h_pos, w_pos]).astype(jnp.int32)
    pos3 = jnp.where(valid[None], pos3, 0)
  n_valid = valid.sum(axis=1)
  max_pos = jnp.max(jnp.where(valid[None], pos3, -1), axis=(0, 2))
  deltas = (max_pos + 1 - n_valid)[:, None].astype(jnp.int32)
  return pos3, deltas


def _shift_valid(flag: jax.Array, valid: jax.Array, direction: int) -> jax.Array:
  """`flag` of the previous (direction=1) or next (-1) *valid* token in each row; False at the edges."""
  b, t = flag.shape
  idx = jnp.broadcast_to(jnp.arange(t), (b, t))
  if direction == 1:
    prev_idx = jax.lax.cummax(jnp.where(valid, idx, -1), axis=1)
    prev_idx = jnp.concatenate([jnp.full((b, 1), -1), prev_idx[:, :-1]], axis=1)
    src = prev_idx
  else:
    nxt = jax.lax.cummin(jnp.where(valid, idx, t), axis=1, reverse=True)
    nxt = jnp.concatenate([nxt[:, 1:], jnp.full((b, 1), t)], axis=1)
    src = nxt
  ok = (src >= 0) & (src < t)
  return ok & jnp.take_along_axis(flag, jnp.clip(src, 0, t - 1), axis=1)


def vision_rope_cos_sin(hw_pos: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors `Qwen2_5_VLVisionRotaryEmbedding`: (N, 2) patch (row, col) -> cos, sin (N, head_dim) in fp32.

  Row and column each rotate head_dim/4 frequencies; [row | col] is then duplicated to head_dim.
  """
  dim = head_dim // 2
  inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  freqs = hw_pos[..., None].astype(np.float32) * inv_freq  # (N, 2, head_dim/4)
  hw = np.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)
  emb = np.concatenate([hw, hw], axis=-1)
  return np.cos(emb), np.sin(emb)
