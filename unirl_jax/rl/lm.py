"""Token GRPO for the language expert (docs/algorithms.md §3): completion log-probs from one forward over prompt +
completion, and the loss as a sum over rows (a task's loss part) for exact micro-batching."""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

from unirl_jax.models import qwen2_5_vl
from unirl_jax.models.qwen2_5_vl.rope import get_rope_index
from unirl_jax.rl.batch import Experience
from unirl_jax.rl.losses import k3_kl, lm_loss


@dataclasses.dataclass(frozen=True)
class LMConfig:
  max_new_tokens: int = 512  # completion length cap
  temperature: float = 1.0
  top_k: int = 50  # transformers' GenerationConfig default, left active by the original
  top_p: float = 1.0
  beta: float = 0.01  # k3 KL coefficient (hard-coded in the original)
  clip_eps: float = 0.2  # irrelevant on-policy (ρ ≡ 1, as the original: no clipping)
  aggregation: str = "seq_mean_token_mean"  # | "token_mean" | "dr_grpo"
  max_cond_len: int = 256  # the decoded dialogue, re-tokenised as the DM condition (left-truncated)
  # CoT condition padding: "right" (the original: pads between each dialogue and its queries, to the group's
  # longest dialogue; reproduced exactly through the queries' positions) or "left" (queries right after text).
  cond_padding: str = "right"

  def __post_init__(self):
    if self.aggregation not in ("seq_mean_token_mean", "token_mean", "dr_grpo"):
      raise ValueError(f"lm.aggregation {self.aggregation!r} not one of seq_mean_token_mean, token_mean, dr_grpo")
    if self.cond_padding not in ("right", "left"):
      raise ValueError(f"lm.cond_padding {self.cond_padding!r} not 'right' or 'left'")


def sequence_log_probs(lm: qwen2_5_vl.Qwen2_5_VL, lm_params, ids, mask, pixel_values=None, image_grid_thw=None,
                       start: int = 0):
  """(B, T−1−start) log π(ids[:, t+1] | ids[:, :t+1]) for t >= start: full-vocabulary log-softmax of the logits
  one position earlier, 3-D M-RoPE positions from the mask as the sampler's; images go through the vision tower.
  Logits are computed from position `start` on only."""
  variables = {"params": lm_params}
  mask = mask.astype(jnp.int32)
  pos = get_rope_index(ids, image_grid_thw, mask, lm.config)[0]
  embeds = lm.apply(variables, ids, pixel_values, image_grid_thw, method="embed")
  hidden, _ = lm.apply(variables, embeds, pos, mask, method="hidden_states")
  logits = lm.apply(variables, hidden[:, start:-1], method="logits").astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, ids[:, start + 1:, None], axis=-1)[..., 0]


def completion_log_probs(lm: qwen2_5_vl.Qwen2_5_VL, lm_params, prompt_ids, prompt_mask, completion, comp_mask,
                         pixel_values=None, image_grid_thw=None):
  """(B, N) log π(completion token | prefix) (`sequence_log_probs` over prompt + completion, from the prompt's
  last position: the t−1 offset)."""
  ids = jnp.concatenate([prompt_ids, completion], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), comp_mask.astype(jnp.int32)], axis=1)
  return sequence_log_probs(lm, lm_params, ids, mask, pixel_values, image_grid_thw, start=prompt_ids.shape[1] - 1)


@dataclasses.dataclass(frozen=True)
class LMLoss:
  """The token GRPO loss of the completions in `Experience.lm` with k3 KL to the reference LM: the sum over rows,
  divided by the whole step's `denominator` (rows for the sequence mean, tokens, or B·N for Dr.GRPO)."""

  lm: qwen2_5_vl.Qwen2_5_VL
  lc: LMConfig
  grid: Optional[tuple[int, int, int]] = None  # the (t, h, w) patch grid every row's prompt image shares

  def denominator(self, exp: Experience):
    m = exp.lm.mask.astype(jnp.float32)
    _, d = lm_loss(jnp.zeros_like(m), jnp.zeros_like(m), jnp.zeros_like(m), jnp.zeros(m.shape[:1]), m, 0.0, 0.2,
                   self.lc.aggregation, m.shape[1])
    return d

  def loss_sum(self, params, ref_params, exp: Experience) -> tuple[jax.Array, dict]:
    c, lc = exp.lm, self.lc
    image = ()
    if c.pixel_values is not None:  # one image per row: flatten the patches, one grid per row
      image = (c.pixel_values.reshape(-1, c.pixel_values.shape[-1]), (self.grid,) * c.tokens.shape[0])
    lp = completion_log_probs(self.lm, params["lm"], c.prompt_ids, c.prompt_mask, c.tokens, c.mask, *image)
    ref = jax.lax.stop_gradient(completion_log_probs(self.lm, ref_params["lm"], c.prompt_ids, c.prompt_mask,
                                                     c.tokens, c.mask, *image))
    s, _ = lm_loss(lp, jax.lax.stop_gradient(lp), ref, exp.advantages, c.mask, lc.beta, lc.clip_eps, lc.aggregation,
                   c.tokens.shape[1])
    m = c.mask.astype(jnp.float32)
    kl = jnp.sum(k3_kl(jax.lax.stop_gradient(lp), ref) * m)
    return s, {"lm_loss": s, "lm_kl_tokens": jax.lax.stop_gradient(kl), "lm_tokens": jnp.sum(m)}

  def metrics(self, stats: dict, den, rows: int) -> dict:
    return {"lm_loss": stats["lm_loss"] / den, "lm_kl": stats["lm_kl_tokens"] / jnp.maximum(stats["lm_tokens"], 1.0),
            "completion_tokens": stats["lm_tokens"] / rows}
