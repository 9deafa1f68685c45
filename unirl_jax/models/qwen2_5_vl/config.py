"""Qwen2.5-VL configuration: presets, validation and reading HF config.json (flat and v5 nested)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from unirl_jax.models.layers import KERNELS, REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """Mirrors `Qwen2_5_VLVisionConfig`."""

  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  out_hidden_size: int = 2048
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: int = 2
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  """Mirrors `Qwen2_5_VLTextConfig` (the Qwen2 decoder with M-RoPE)."""

  vocab_size: int = 151936
  hidden_size: int = 2048
  intermediate_size: int = 11008
  num_hidden_layers: int = 36
  num_attention_heads: int = 16
  num_key_value_heads: int = 2
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1_000_000.0
  mrope_section: tuple[int, ...] = (16, 24, 24)
  max_position_embeddings: int = 128000
  initializer_range: float = 0.02  # std of the random init of embeddings and dense kernels

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
  """The whole model plus the JAX-side execution knobs (dtypes, remat, scan unroll, attention kernel)."""

  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  tie_word_embeddings: bool = True
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  bos_token_id: int = 151643
  eos_token_id: tuple[int, ...] = (151645,)
  pad_token_id: int = 151643
  # Execution, not architecture.
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  remat: str = "none"  # one of REMAT_POLICIES, applied per decoder layer / vision block
  scan_unroll: int = 1  # layers run under nn.scan; >1 unrolls that many per iteration
  # False: the text decoder's layers are separate modules (params layers_0, layers_1, ...; a KV cache of one
  # array per layer) — the Sampler's decoding form, so no step slices stacked weights or restacks the cache.
  scan_layers: bool = True
  attention_impl: Optional[str] = None  # None (let JAX pick), "xla" or "cudnn"
  kernels: str = "auto"  # "cpu" | "accelerator" | "auto" (the default backend): layers.kernels_for

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    t, v = self.text, self.vision
    errors = []
    if t.hidden_size % t.num_attention_heads:
      errors.append(f"text.hidden_size {t.hidden_size} not divisible by num_attention_heads {t.num_attention_heads}")
    if t.num_attention_heads % t.num_key_value_heads:
      errors.append(f"num_attention_heads {t.num_attention_heads} not divisible by num_key_value_heads "
                    f"{t.num_key_value_heads}")
    elif sum(t.mrope_section) * 2 != t.head_dim:
      errors.append(f"mrope_section {tuple(t.mrope_section)} must sum to head_dim/2 = {t.head_dim // 2}")
    if v.hidden_size % v.num_heads:
      errors.append(f"vision.hidden_size {v.hidden_size} not divisible by num_heads {v.num_heads}")
    if v.window_size % (v.patch_size * v.spatial_merge_size):
      errors.append(f"vision.window_size {v.window_size} not a multiple of patch_size*spatial_merge_size")
    for name, tok in (("image_token_id", self.image_token_id), ("bos_token_id", self.bos_token_id),
                      ("pad_token_id", self.pad_token_id)):
      if not 0 <= tok < t.vocab_size:
        errors.append(f"{name} {tok} outside the vocabulary of {t.vocab_size}")
    if self.remat not in REMAT_POLICIES:
      errors.append(f"remat {self.remat!r} not one of {REMAT_POLICIES}")
    if self.attention_impl not in (None, "xla", "cudnn"):
      errors.append(f"attention_impl {self.attention_impl!r} not one of None, 'xla', 'cudnn'")
    if self.kernels not in KERNELS:
      errors.append(f"kernels {self.kernels!r} not one of {KERNELS}")
    if errors:
      raise ValueError("invalid Qwen2_5_VLConfig: " + "; ".join(errors))

  def replace(self, **kw) -> "Qwen2_5_VLConfig":
    return dataclasses.replace(self, **kw)

  # ---- HF interop -------------------------------------------------------------------------------

  @classmethod
  def from_hf(cls, src: Any, **overrides) -> "Qwen2_5_VLConfig":
    """Reads a `config.json` path, a directory holding one, a dict, or a transformers config object.

    Accepts the flat hub layout (text fields at top level, `rope_scaling`) and the transformers-5
    nested one (`text_config`, `rope_parameters`).
    """
    if isinstance(src, (str, os.PathLike)):
      path = os.path.join(src, "config.json") if os.path.isdir(src) else src
      with open(path) as f:
        d = json.load(f)
    elif isinstance(src, dict):
      d = dict(src)
    else:
      d = src.to_dict()
    text = dict(d)
    text.update(d.get("text_config") or {})
    vis = d.get("vision_config") or {}
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    theta = rope.get("rope_theta", text.get("rope_theta", 1_000_000.0))
    if "mrope_section" not in rope:
      raise ValueError("config has no mrope_section in rope_parameters/rope_scaling")
    n_heads = text["num_attention_heads"]
    tc = TextConfig(
        vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"], num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=n_heads, num_key_value_heads=text.get("num_key_value_heads") or n_heads,
        rms_norm_eps=text.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        mrope_section=tuple(rope["mrope_section"]),
        max_position_embeddings=text.get("max_position_embeddings", 128000),
        initializer_range=text.get("initializer_range", d.get("initializer_range", 0.02)))
    vrope = vis.get("rope_parameters") or {}
    vc = VisionConfig(
        depth=vis.get("depth", 32), hidden_size=vis.get("hidden_size", 1280),
        intermediate_size=vis.get("intermediate_size", 3420), num_heads=vis.get("num_heads", 16),
        in_channels=vis.get("in_channels", vis.get("in_chans", 3)), patch_size=vis.get("patch_size", 14),
        temporal_patch_size=vis.get("temporal_patch_size", 2),
        spatial_merge_size=vis.get("spatial_merge_size", 2), window_size=vis.get("window_size", 112),
        out_hidden_size=vis.get("out_hidden_size", tc.hidden_size),
        fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", (7, 15, 23, 31))),
        tokens_per_second=vis.get("tokens_per_second", 2), rope_theta=float(vrope.get("rope_theta", 10000.0)))
    if vis.get("hidden_act", "silu") != "silu":
      raise ValueError(f"vision hidden_act {vis.get('hidden_act')!r} unsupported (only silu)")
    eos = text.get("eos_token_id", 151645)
    tie = d.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
    pad = text.get("pad_token_id")
    kw = dict(
        text=tc, vision=vc, tie_word_embeddings=bool(tie),
        image_token_id=d.get("image_token_id", 151655), video_token_id=d.get("video_token_id", 151656),
        vision_start_token_id=d.get("vision_start_token_id", 151652),
        vision_end_token_id=d.get("vision_end_token_id", 151653),
        bos_token_id=text.get("bos_token_id", 151643) if text.get("bos_token_id") is not None else 151643,
        eos_token_id=tuple(eos) if isinstance(eos, (list, tuple)) else (eos,),
        pad_token_id=pad if pad is not None else text.get("bos_token_id", 151643))
    kw.update(overrides)
    return cls(**kw)

  def to_hf_dict(self) -> dict:
    """A transformers-5 `Qwen2_5_VLConfig` dict (nested layout)."""
    t, v = self.text, self.vision
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "tie_word_embeddings": self.tie_word_embeddings, "image_token_id": self.image_token_id,
        "video_token_id": self.video_token_id, "vision_start_token_id": self.vision_start_token_id,
        "vision_end_token_id": self.vision_end_token_id,
        "text_config": {
            "model_type": "qwen2_5_vl_text", "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size, "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
            "rms_norm_eps": t.rms_norm_eps, "hidden_act": "silu",
            "max_position_embeddings": t.max_position_embeddings, "initializer_range": t.initializer_range,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta,
                                "mrope_section": list(t.mrope_section)},
            "bos_token_id": self.bos_token_id, "eos_token_id": list(self.eos_token_id),
            "pad_token_id": self.pad_token_id, "tie_word_embeddings": self.tie_word_embeddings,
        },
        "vision_config": {
            "model_type": "qwen2_5_vl_vision", "depth": v.depth, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_heads": v.num_heads, "in_channels": v.in_channels,
            "patch_size": v.patch_size, "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size, "window_size": v.window_size,
            "out_hidden_size": v.out_hidden_size, "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": v.tokens_per_second, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        },
    }


# ---- presets ------------------------------------------------------------------------------------

def qwen2_5_vl_3b(**kw) -> Qwen2_5_VLConfig:
  """Qwen/Qwen2.5-VL-3B-Instruct (the base of UniRL-Zero)."""
  return Qwen2_5_VLConfig(**kw)


def qwen2_5_vl_7b(**kw) -> Qwen2_5_VLConfig:
  """Qwen/Qwen2.5-VL-7B-Instruct."""
  text = TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                    num_attention_heads=28, num_key_value_heads=4)
  vision = VisionConfig(out_hidden_size=3584)
  return Qwen2_5_VLConfig(text=text, vision=vision, tie_word_embeddings=False, **kw)


def tiny(**kw) -> Qwen2_5_VLConfig:
  """A few-KB random model for CPU tests; token ids sit inside its 512-row vocabulary."""
  text = TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3),
                    max_position_embeddings=2048)
  vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, window_size=56,
                        out_hidden_size=64, fullatt_block_indexes=(1,))
  base = dict(text=text, vision=vision, tie_word_embeddings=True, image_token_id=505, video_token_id=506,
              vision_start_token_id=503, vision_end_token_id=504, bos_token_id=1, eos_token_id=(2,),
              pad_token_id=0)
  base.update(kw)
  return Qwen2_5_VLConfig(**base)


PRESETS = {"qwen2_5_vl_3b": qwen2_5_vl_3b, "qwen2_5_vl_7b": qwen2_5_vl_7b, "tiny": tiny}


def dtype_of(name: str):
  import jax.numpy as jnp
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]

