"""Jitted sampling for Qwen2.5-VL: prefill into an explicit KV cache, then a `lax.while_loop` decode.

Left-padded batches; greedy / temperature / top-k / top-p; stops at EOS; returns the new tokens and
their log-probs under the temperature-scaled distribution (log_softmax(logits / T), the quantity a GRPO
recomputation uses), with `pad_token_id` / 0.0 after each row's EOS.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models.qwen2_5_vl.model import Qwen2_5_VL, grid_tuple
from unirl_jax.models.qwen2_5_vl.rope import get_rope_index
from unirl_jax.models.qwen2_5_vl.text import init_cache, unstack_layers


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 32
  greedy: bool = False
  temperature: float = 1.0
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1.0 = off
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int = 0
  cache_dtype: Optional[str] = None  # e.g. "bfloat16"; default: the model's compute dtype

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not self.greedy and self.temperature <= 0:
      raise ValueError(f"temperature must be > 0 when sampling (use greedy=True), got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def filter_logits(logits: jax.Array, sc: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus), in the order transformers' warpers apply them."""
  logits = logits.astype(jnp.float32) / sc.temperature
  neg = jnp.finfo(jnp.float32).min
  if sc.top_k:
    # min over the k values, not [..., -1:]: slicing top_k's output makes XLA rewrite it into a full sort
    kth = jnp.min(jax.lax.top_k(logits, min(sc.top_k, logits.shape[-1]))[0], axis=-1, keepdims=True)
    logits = jnp.where(logits < kth, neg, logits)
  if sc.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    keep_sorted = _top_p_keep(jnp.take_along_axis(logits, order, axis=-1), sc.top_p)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, neg)
  return logits


def _top_p_keep(sorted_logits: jax.Array, top_p: float) -> jax.Array:
  """On logits sorted in descending order: keep while the mass before a token is below top_p (>= 1 kept)."""
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  return (jnp.cumsum(probs, axis=-1) - probs) < top_p


def _choose(logits: jax.Array, rng: jax.Array, sc: SamplingConfig) -> tuple[jax.Array, jax.Array]:
  """(B, V) logits -> token (B,), log-prob (B,) of that token.

  With top-k, the draw is over the k candidates (top-p applied within them): the same distribution as masking
  the whole vocabulary, without a vocabulary-sized Gumbel draw per step.
  """
  if sc.greedy:
    tok = jnp.argmax(logits, axis=-1)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  else:
    scaled = logits.astype(jnp.float32) / sc.temperature
    if sc.top_k:
      vals, idx = jax.lax.top_k(scaled, min(sc.top_k, logits.shape[-1]))  # sorted, descending
      if sc.top_p < 1.0:
        vals = jnp.where(_top_p_keep(vals, sc.top_p), vals, jnp.finfo(jnp.float32).min)
      pick = jax.random.categorical(rng, vals, axis=-1)
      tok = jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
    else:
      tok = jax.random.categorical(rng, filter_logits(logits, sc), axis=-1)
    logp = jax.nn.log_softmax(scaled, axis=-1)
  return tok.astype(jnp.int32), jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]


class Sampler:
  """Holds the jitted prefill and decode for one model and sampling config (compiled once per shape).

  Both take the model's own params. Inside, the text layers run unscanned on an unstacked copy in the compute
  dtype (`unstack_layers`, once per call), with one cache array per layer: no decode step slices stacked
  weights out or copies the whole cache through a layer scan."""

  def __init__(self, model: Qwen2_5_VL, sc: SamplingConfig):
    self.model, self.sc = model, sc
    self._dmodel = Qwen2_5_VL(model.config.replace(scan_layers=False))
    self._prefill = jax.jit(self._prefill_impl, static_argnames=("grid", "max_len"))
    self._decode = jax.jit(self._decode_impl, donate_argnames=("cache",))

  def _decoding_params(self, params):
    return unstack_layers(self.model.config, params) if self.model.config.scan_layers else params

  def _prefill_impl(self, params, input_ids, attention_mask, pixel_values, grid, max_len):
    cfg = self._dmodel.config
    b, t = input_ids.shape
    pos, deltas = get_rope_index(input_ids, grid, attention_mask, cfg)
    cache = init_cache(cfg, b, max_len, None if self.sc.cache_dtype is None else jnp.dtype(self.sc.cache_dtype))
    v = {"params": self._decoding_params(params)}
    embeds = self._dmodel.apply(v, input_ids, pixel_values, grid, method="embed")
    hidden, cache = self._dmodel.apply(v, embeds, pos, attention_mask, cache, method="hidden_states")
    logits = self._dmodel.apply(v, hidden[:, -1], method="logits")  # the LM head on the last position only
    next_pos = deltas[:, 0] + attention_mask.sum(axis=1).astype(jnp.int32)  # max position + 1
    return logits, cache, next_pos

  def _decode_impl(self, params, cache, last_logits, next_pos, rng):
    sc, n = self.sc, self.sc.max_new_tokens
    b = last_logits.shape[0]
    eos = jnp.asarray(sc.eos_token_ids or (-1,), jnp.int32)
    params = self._decoding_params(params)  # before the loop: every step reads the same per-layer arrays

    def cond(state):
      i, _, _, done, *_ = state
      return (i < n) & ~jnp.all(done)

    def body(state):
      i, tokens, logps, done, cache, logits, rng = state
      rng, key = jax.random.split(rng)
      tok, logp = _choose(logits, key, sc)
      tok = jnp.where(done, sc.pad_token_id, tok)
      logp = jnp.where(done, 0.0, logp)
      tokens = tokens.at[:, i].set(tok)
      logps = logps.at[:, i].set(logp)
      done = done | jnp.isin(tok, eos)
      pos = jnp.broadcast_to((next_pos + i)[None, :, None], (3, b, 1))
      out, cache = self._dmodel.apply({"params": params}, input_ids=tok[:, None],
                                      attention_mask=jnp.ones((b, 1), bool), position_ids=pos, cache=cache)
      return i + 1, tokens, logps, done, cache, out[:, -1], rng

    state = (jnp.int32(0), jnp.full((b, n), sc.pad_token_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
             jnp.zeros((b,), bool), cache, last_logits, rng)
    _, tokens, logps, done, cache, _, _ = jax.lax.while_loop(cond, body, state)
    is_eos = jnp.isin(tokens, eos)
    first_eos = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) + 1, n)
    return {"tokens": tokens, "logprobs": logps, "lengths": first_eos.astype(jnp.int32), "done": done}

  def prefill(self, params, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.int32)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    if (not isinstance(attention_mask, jax.core.Tracer) and attention_mask.is_fully_addressable
        and np.any(np.asarray(attention_mask)[:, -1] == 0)):  # (a multi-process batch is checked on the host)
      raise ValueError("attention_mask: the batch must be left-padded (every row's last token real)")
    max_len = input_ids.shape[1] + self.sc.max_new_tokens
    return self._prefill(params, input_ids, attention_mask, pixel_values, grid_tuple(image_grid_thw), max_len)

  def decode(self, params, cache, last_logits, next_pos, rng):
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
      return self._decode(params, cache, last_logits, next_pos, rng)

  def __call__(self, params, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               rng: Optional[jax.Array] = None) -> dict:
    """Returns {"tokens": (B, N), "logprobs": (B, N), "lengths": (B,), "done": (B,)}."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    last, cache, next_pos = self.prefill(params, input_ids, attention_mask, pixel_values, image_grid_thw)
    return self.decode(params, cache, last, next_pos, rng)


@functools.lru_cache(maxsize=16)
def sampler(config, sc: SamplingConfig) -> Sampler:
  """One Sampler per (model config, sampling config), both frozen dataclasses compared by value."""
  return Sampler(Qwen2_5_VL(config), sc)


def generate(model: Qwen2_5_VL, params, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
             rng=None, **sampling) -> dict:
  """One-call sampling; `sampling` fills a SamplingConfig (eos/pad default to the model config's)."""
  cfg = model.config
  sampling.setdefault("eos_token_ids", cfg.eos_token_id)
  sampling.setdefault("pad_token_id", cfg.pad_token_id)
  return sampler(model.config, SamplingConfig(**sampling))(params, input_ids, attention_mask, pixel_values,
                                                     image_grid_thw, rng)
