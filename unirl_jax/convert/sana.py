"""SANA DiT: diffusers `SanaTransformer2DModel` safetensors <-> Orbax params, one key table per config."""

from __future__ import annotations

from unirl_jax.convert.pipeline import ModelSpec
from unirl_jax.convert.table import CONV1X1_LINEAR, CONV2D, LINEAR, Rule
from unirl_jax.models.sana_config import SanaConfig


def _linear(hf: str, path: str, bias: bool = True) -> list[Rule]:
  return [Rule(f"{hf}.weight", f"{path}/kernel", LINEAR)] + ([Rule(f"{hf}.bias", f"{path}/bias")] if bias else [])


def rules(cfg: SanaConfig) -> list[Rule]:
  b = "transformer_blocks.{i}"
  p = "transformer_blocks"
  time = "time_embed.timestep_embedder" if cfg.guidance_embeds else "time_embed.emb.timestep_embedder"
  out = [
      Rule("patch_embed.proj.weight", "patch_embed/proj/kernel", CONV2D),
      Rule("patch_embed.proj.bias", "patch_embed/proj/bias"),
      *_linear(f"{time}.linear_1", "time_embed/timestep_embedder/linear_1"),
      *_linear(f"{time}.linear_2", "time_embed/timestep_embedder/linear_2"),
      *_linear("time_embed.guidance_embedder.linear_1", "time_embed/guidance_embedder/linear_1"),
      *_linear("time_embed.guidance_embedder.linear_2", "time_embed/guidance_embedder/linear_2"),
      *_linear("time_embed.linear", "time_embed/linear"),
      *_linear("caption_projection.linear_1", "caption_projection/linear_1"),
      *_linear("caption_projection.linear_2", "caption_projection/linear_2"),
      Rule("caption_norm.weight", "caption_norm/scale"),
      Rule(f"{b}.scale_shift_table", f"{p}/scale_shift_table"),
      Rule(f"{b}.norm2.weight", f"{p}/norm2/scale"),
      Rule(f"{b}.norm2.bias", f"{p}/norm2/bias"),
      Rule(f"{b}.ff.conv_inverted.weight", f"{p}/ff/conv_inverted/kernel", CONV1X1_LINEAR),
      Rule(f"{b}.ff.conv_inverted.bias", f"{p}/ff/conv_inverted/bias"),
      Rule(f"{b}.ff.conv_depth.weight", f"{p}/ff/conv_depth/kernel", CONV2D),
      Rule(f"{b}.ff.conv_depth.bias", f"{p}/ff/conv_depth/bias"),
      Rule(f"{b}.ff.conv_point.weight", f"{p}/ff/conv_point/kernel", CONV1X1_LINEAR),
      Rule("scale_shift_table", "scale_shift_table"),
      *_linear("proj_out", "proj_out"),
      Rule("ref_patch_embed.proj.weight", "ref_patch_embed/proj/kernel", CONV2D),
      Rule("ref_patch_embed.proj.bias", "ref_patch_embed/proj/bias"),
      *_linear("ref_linear", "ref_linear"),
  ]
  for attn in ("attn1", "attn2"):
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
      out += _linear(f"{b}.{attn}.{proj}", f"{p}/{attn}/{proj.replace('.', '_')}")
    for norm in ("norm_q", "norm_k"):
      out.append(Rule(f"{b}.{attn}.{norm}.weight", f"{p}/{attn}/{norm}/scale"))
  return out


def _config(path: str, keys, meta: dict) -> SanaConfig:
  cfg = SanaConfig.from_diffusers(path)
  if keys is not None:
    return cfg.replace(ref_branch="ref_patch_embed.proj.weight" in keys)
  return cfg.replace(ref_branch=bool(meta.get("ref_branch", False)))


def _abstract(cfg: SanaConfig):
  from unirl_jax.models.sana import abstract_params
  return abstract_params(cfg)


SPEC = ModelSpec(kind="sana", config=_config, abstract_params=_abstract, rules=rules,
                 weights_name="diffusion_pytorch_model.safetensors", subdir="transformer",
                 meta=lambda cfg: {"ref_branch": cfg.ref_branch})
