"""Token GRPO for the language expert (unirl.md §4): completion log-probs from one forward over prompt +
completion, and the loss as a sum over rows for exact micro-batching."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from unirl_jax.models import qwen2_5_vl
from unirl_jax.models.qwen2_5_vl.rope import get_rope_index
from unirl_jax.rl.losses import k3_kl, lm_loss


@dataclasses.dataclass(frozen=True)
class LMConfig:
  max_new_tokens: int = 512
  temperature: float = 1.0
  top_k: int = 50  # transformers' GenerationConfig default, left active by the original
  top_p: float = 1.0
  beta: float = 0.01  # k3 KL coefficient (hard-coded in the original)
  clip_eps: float = 0.2  # irrelevant on-policy (ρ ≡ 1, as the original: no clipping)
  aggregation: str = "seq_mean_token_mean"
  max_cond_len: int = 256  # the decoded dialogue, re-tokenised as the DM condition (left-truncated)


def completion_log_probs(lm: qwen2_5_vl.Qwen2_5_VL, lm_params, prompt_ids, prompt_mask, completion, comp_mask):
  """(B, N) log π(completion token | prefix): full-vocabulary log-softmax, positions as the sampler's."""
  ids = jnp.concatenate([prompt_ids, completion], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(jnp.int32), comp_mask.astype(jnp.int32)], axis=1)
  variables = {"params": lm_params}
  pos = get_rope_index(ids, None, mask, lm.config)[0]
  hidden, _ = lm.apply(variables, lm.apply(variables, ids, method="embed"), pos, mask, method="hidden_states")
  t, n = prompt_ids.shape[1], completion.shape[1]
  logits = lm.apply(variables, hidden[:, t - 1:t - 1 + n], method="logits").astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(logp, completion[..., None], axis=-1)[..., 0]


def lm_loss_sum(lm, params, ref_params, prompt_ids, prompt_mask, completion, comp_mask, advantages, lc: LMConfig):
  """(Σ rows of the GRPO token loss, stats); divide by `denominator` over the whole batch."""
  lp = completion_log_probs(lm, params, prompt_ids, prompt_mask, completion, comp_mask)
  ref = jax.lax.stop_gradient(completion_log_probs(lm, ref_params, prompt_ids, prompt_mask, completion, comp_mask))
  s, _ = lm_loss(lp, jax.lax.stop_gradient(lp), ref, advantages, comp_mask, lc.beta, lc.clip_eps, lc.aggregation,
                 completion.shape[1])
  m = comp_mask.astype(jnp.float32)
  kl = jnp.sum(k3_kl(jax.lax.stop_gradient(lp), ref) * m)
  return s, {"lm_kl_tokens": jax.lax.stop_gradient(kl), "lm_tokens": jnp.sum(m)}


def denominator(comp_mask, lc: LMConfig):
  """The loss's denominator for the whole batch (rows for the sequence mean, tokens, or B·N for Dr.GRPO)."""
  m = comp_mask.astype(jnp.float32)
  _, d = lm_loss(jnp.zeros_like(m), jnp.zeros_like(m), jnp.zeros_like(m), jnp.zeros(m.shape[:1]), m, 0.0, 0.2,
                 lc.aggregation, m.shape[1])
  return d
