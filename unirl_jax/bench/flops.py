"""Analytic forward FLOPs from the configs (2 per multiply-add; matmuls, convolutions and attention only —
norms, activations and softmax are left out). Not XLA's count, which also counts rematerialised work.

Conventions: causal attention is not discounted (4·T·S·heads·d for QKᵀ and AV, as MFU is usually reported);
linear attention costs 2·N·d·(2d + 1) per head (KᵀV, Q(KᵀV) and the normaliser, as `relu_linear_attention`).
"""

from __future__ import annotations

from unirl_jax.models.connector import ConnectorConfig
from unirl_jax.models.dc_ae import DCAEConfig, decoder_blocks
from unirl_jax.models.qwen2_5_vl.config import TextConfig
from unirl_jax.models.sana_config import SanaConfig


def linear(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def softmax_attention(q_tokens: int, kv_tokens: int, heads: int, head_dim: int) -> int:
  return 4 * q_tokens * kv_tokens * heads * head_dim


def relu_linear_attention(tokens: int, groups: int, head_dim: int) -> int:
  return 2 * tokens * head_dim * (2 * head_dim + 1) * groups


def conv(pixels: int, kernel: int, c_in: int, c_out: int, groups: int = 1) -> int:
  return 2 * pixels * kernel * kernel * (c_in // groups) * c_out


# ---- Qwen2.5-VL text decoder --------------------------------------------------------------------------


def decoder_layer(cfg: TextConfig, tokens: int, context: int) -> int:
  """One Qwen2 decoder layer for `tokens` new positions attending to `context` keys (incl. themselves)."""
  d, hd, hq, hkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
  proj = linear(tokens, d, hq * hd) + 2 * linear(tokens, d, hkv * hd) + linear(tokens, hq * hd, d)
  mlp = 3 * linear(tokens, d, cfg.intermediate_size)
  return proj + softmax_attention(tokens, context, hq, hd) + mlp


def lm_forward(cfg: TextConfig, tokens: int, context: int | None = None, logits_tokens: int = 0) -> int:
  """All layers for one sequence, plus the LM head on `logits_tokens` positions."""
  layers = cfg.num_hidden_layers * decoder_layer(cfg, tokens, tokens if context is None else context)
  return layers + linear(logits_tokens, cfg.hidden_size, cfg.vocab_size)


def lm_decode(cfg: TextConfig, prompt_len: int, new_tokens: int) -> int:
  """Greedy/sampled decoding of `new_tokens` after a prompt: one token per step over a growing context."""
  return sum(lm_forward(cfg, 1, prompt_len + i + 1, logits_tokens=1) for i in range(new_tokens))


# ---- connector ----------------------------------------------------------------------------------------


def connector(cfg: ConnectorConfig, tokens: int) -> int:
  d = cfg.hidden_size
  block = 4 * linear(tokens, d, d) + softmax_attention(tokens, tokens, cfg.num_heads, cfg.head_dim)
  block += 3 * linear(tokens, d, cfg.intermediate_size)
  return cfg.num_layers * block + linear(tokens, d, cfg.out_dim)


# ---- SANA ---------------------------------------------------------------------------------------------


def sana_block(cfg: SanaConfig, tokens: int, caption_tokens: int) -> int:
  """Linear self-attention, softmax cross-attention to the caption, GLUMBConv (1x1, depthwise 3x3, 1x1)."""
  d, hid = cfg.inner_dim, cfg.ff_hidden
  self_attn = 4 * linear(tokens, d, d) + relu_linear_attention(tokens, cfg.num_attention_heads,
                                                               cfg.attention_head_dim)
  cross = 2 * linear(tokens, d, d) + 2 * linear(caption_tokens, d, d)
  cross += softmax_attention(tokens, caption_tokens, cfg.num_cross_attention_heads, cfg.cross_attention_head_dim)
  ff = linear(tokens, d, 2 * hid) + conv(tokens, 3, 2 * hid, 2 * hid, groups=2 * hid) + linear(tokens, hid, d)
  return self_attn + cross + ff


def sana_forward(cfg: SanaConfig, latent_h: int, latent_w: int, caption_tokens: int) -> int:
  """One velocity evaluation of one sample: patch embed (+ UniRL's reference branch), caption projection,
  the blocks and the output projection (the timestep MLPs are negligible and left out)."""
  p, d = cfg.patch_size, cfg.inner_dim
  tokens = (latent_h // p) * (latent_w // p)
  embed = linear(tokens, p * p * cfg.in_channels, d)
  if cfg.ref_branch:
    embed += linear(tokens, p * p * cfg.in_channels, d) + linear(tokens, d, d)
  caption = linear(caption_tokens, cfg.caption_channels, d) + linear(caption_tokens, d, d)
  out = linear(tokens, d, p * p * cfg.out_channels)
  return embed + caption + cfg.num_layers * sana_block(cfg, tokens, caption_tokens) + out


def sana_context(cfg: SanaConfig, caption_tokens: int) -> int:
  """The part of `sana_forward` that depends only on the caption (`sana.SanaContext`): its projection and every
  block's cross-attention K/V. A rollout computes it once; each step costs `sana_forward` minus this."""
  d = cfg.inner_dim
  return (linear(caption_tokens, cfg.caption_channels, d) + linear(caption_tokens, d, d)
          + cfg.num_layers * 2 * linear(caption_tokens, d, d))


# ---- DC-AE decoder ------------------------------------------------------------------------------------


def dc_ae_decode(cfg: DCAEConfig, latent_h: int, latent_w: int) -> int:
  """conv_in, the up blocks and blocks stage by stage (each up block doubles the side), conv_out."""
  ch = cfg.decoder_block_out_channels
  h, w = latent_h, latent_w
  total = conv(h * w, 3, cfg.latent_channels, ch[-1])
  c_prev = ch[-1]
  for b in decoder_blocks(cfg):
    c = b.out_channels
    if b.kind == "up":
      h, w = 2 * h, 2 * w
      total += conv(h * w, 3, c_prev, c)  # nearest-upsample + conv, or conv to 4c + pixel shuffle: equal
    elif b.kind == "ResBlock":
      total += 2 * conv(h * w, 3, c, c)
    else:  # EfficientViTBlock
      n, dh = h * w, cfg.attention_head_dim
      heads, scales = c // dh, len(b.kernel_sizes)
      attn = 3 * linear(n, c, c) + relu_linear_attention(n, heads * (1 + scales), dh) + linear(n, c * (1 + scales), c)
      attn += sum(conv(n, k, 3 * c, 3 * c, groups=3 * c) + conv(n, 1, 3 * c, 3 * c, groups=3 * heads)
                  for k in b.kernel_sizes)
      hid = 4 * c
      ff = linear(n, c, 2 * hid) + conv(n, 3, 2 * hid, 2 * hid, groups=2 * hid) + linear(n, hid, c)
      total += attn + ff
    c_prev = c
  if cfg.decoder_layers_per_block[0] > 0:
    return total + conv(h * w, 3, ch[0], cfg.in_channels)
  h, w = 2 * h, 2 * w
  return total + conv(h * w, 3, ch[0], cfg.in_channels)
