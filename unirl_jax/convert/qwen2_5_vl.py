"""Qwen2.5-VL: HF safetensors <-> Orbax params, as one key table read in both directions."""

from __future__ import annotations

from unirl_jax.convert.pipeline import ModelSpec
from unirl_jax.convert.table import FLATTEN_LINEAR, IDENTITY, LINEAR, Rule, default_hf_shape
from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

_T = "language_model"
_V = "visual"

RULES: list[Rule] = [
    Rule("model.embed_tokens.weight", f"{_T}/embed_tokens/embedding"),
    Rule("model.norm.weight", f"{_T}/norm/scale"),
    Rule("lm_head.weight", "lm_head/kernel", LINEAR),
    Rule("model.layers.{i}.input_layernorm.weight", f"{_T}/layers/input_layernorm/scale"),
    Rule("model.layers.{i}.post_attention_layernorm.weight", f"{_T}/layers/post_attention_layernorm/scale"),
    *[Rule(f"model.layers.{{i}}.self_attn.{p}.{w}", f"{_T}/layers/self_attn/{p}/{j}", t)
      for p in ("q_proj", "k_proj", "v_proj")
      for w, j, t in (("weight", "kernel", LINEAR), ("bias", "bias", IDENTITY))],
    Rule("model.layers.{i}.self_attn.o_proj.weight", f"{_T}/layers/self_attn/o_proj/kernel", LINEAR),
    *[Rule(f"model.layers.{{i}}.mlp.{p}.weight", f"{_T}/layers/mlp/{p}/kernel", LINEAR)
      for p in ("gate_proj", "up_proj", "down_proj")],
    Rule("visual.patch_embed.proj.weight", f"{_V}/patch_embed/kernel", FLATTEN_LINEAR),
    Rule("visual.blocks.{i}.norm1.weight", f"{_V}/blocks/norm1/scale"),
    Rule("visual.blocks.{i}.norm2.weight", f"{_V}/blocks/norm2/scale"),
    *[Rule(f"visual.blocks.{{i}}.{m}.{w}", f"{_V}/blocks/{m.replace('.', '/')}/{j}", t)
      for m in ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
      for w, j, t in (("weight", "kernel", LINEAR), ("bias", "bias", IDENTITY))],
    Rule("visual.merger.ln_q.weight", f"{_V}/merger/ln_q/scale"),
    *[Rule(f"visual.merger.mlp.{n}.{w}", f"{_V}/merger/mlp_{n}/{j}", t)
      for n in (0, 2) for w, j, t in (("weight", "kernel", LINEAR), ("bias", "bias", IDENTITY))],
]

# transformers >= 4.52 in-memory names -> the on-disk names the table uses.
_RENAMES = (("model.language_model.", "model."), ("model.visual.", "visual."))


def canonical_key(key: str) -> str:
  for old, new in _RENAMES:
    if key.startswith(old):
      return new + key[len(old):]
  return key


def skip_key(cfg: Qwen2_5_VLConfig):
  """Tied embeddings: an `lm_head.weight` in the files is the embedding again and is dropped."""
  return lambda key: cfg.tie_word_embeddings and key == "lm_head.weight"


def hf_shape(cfg: Qwen2_5_VLConfig):
  v = cfg.vision

  def shape(rule: Rule, row_shape: tuple) -> tuple:
    if rule.transform is FLATTEN_LINEAR:
      return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return default_hf_shape(rule, row_shape)

  return shape


def _config(wdir: str, keys, meta) -> Qwen2_5_VLConfig:
  return Qwen2_5_VLConfig.from_hf(wdir)


def _abstract(cfg):
  from unirl_jax.models.qwen2_5_vl import abstract_params
  return abstract_params(cfg)


SPEC = ModelSpec(kind="qwen2_5_vl", config=_config, abstract_params=_abstract, rules=lambda cfg: RULES,
                 rename=canonical_key, skip=skip_key, hf_shape=hf_shape)
