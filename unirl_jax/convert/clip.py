"""CLIP: transformers `CLIPModel` safetensors <-> Orbax params, one key table read in both directions."""

from __future__ import annotations

from unirl_jax.convert.pipeline import ModelSpec
from unirl_jax.convert.table import FLATTEN_LINEAR, LINEAR, Rule, default_hf_shape
from unirl_jax.models.clip import CLIPConfig


def _tower(hf: str, path: str) -> list[Rule]:
  b, p = f"{hf}.encoder.layers.{{i}}", f"{path}/layers"
  out = []
  for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"):
    name = m.split(".")[1]
    out += [Rule(f"{b}.{m}.weight", f"{p}/{name}/kernel", LINEAR), Rule(f"{b}.{m}.bias", f"{p}/{name}/bias")]
  for n in ("layer_norm1", "layer_norm2"):
    out += [Rule(f"{b}.{n}.weight", f"{p}/{n}/scale"), Rule(f"{b}.{n}.bias", f"{p}/{n}/bias")]
  return out


def _norm(hf: str, path: str) -> list[Rule]:
  return [Rule(f"{hf}.weight", f"{path}/scale"), Rule(f"{hf}.bias", f"{path}/bias")]


RULES: list[Rule] = [
    Rule("text_model.embeddings.token_embedding.weight", "text_model/token_embedding/embedding"),
    Rule("text_model.embeddings.position_embedding.weight", "text_model/position_embedding/embedding"),
    *_tower("text_model", "text_model"),
    *_norm("text_model.final_layer_norm", "text_model/final_layer_norm"),
    Rule("text_projection.weight", "text_model/text_projection/kernel", LINEAR),
    Rule("vision_model.embeddings.class_embedding", "vision_model/class_embedding"),
    Rule("vision_model.embeddings.patch_embedding.weight", "vision_model/patch_embedding/kernel", FLATTEN_LINEAR),
    Rule("vision_model.embeddings.position_embedding.weight", "vision_model/position_embedding/embedding"),
    *_norm("vision_model.pre_layrnorm", "vision_model/pre_layrnorm"),
    *_tower("vision_model", "vision_model"),
    *_norm("vision_model.post_layernorm", "vision_model/post_layernorm"),
    Rule("visual_projection.weight", "vision_model/visual_projection/kernel", LINEAR),
    Rule("logit_scale", "logit_scale"),
]


def hf_shape(cfg: CLIPConfig):
  v = cfg.vision

  def shape(rule: Rule, row_shape: tuple) -> tuple:
    if rule.transform is FLATTEN_LINEAR:
      return (v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
    return default_hf_shape(rule, row_shape)

  return shape


def _abstract(cfg):
  from unirl_jax.models.clip import abstract_params
  return abstract_params(cfg)


SPEC = ModelSpec(kind="clip", config=lambda wdir, keys, meta: CLIPConfig.from_hf(wdir), abstract_params=_abstract,
                 rules=lambda cfg: RULES, hf_shape=hf_shape,
                 # Buffers transformers may write (position ids) are not weights.
                 skip=lambda cfg: (lambda k: k.endswith("position_ids")))
