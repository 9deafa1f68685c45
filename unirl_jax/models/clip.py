"""CLIP (transformers' `CLIPModel`): a ViT image tower and a causal text tower, each pooled and projected into one
embedding space. The reward models of the editing scenario (ViT-L/14) and PickScore (ViT-H/14) use it."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from unirl_jax.models import layers, param_utils
from unirl_jax.models.layers import KERNELS
from unirl_jax.models.qwen2_5_vl.config import dtype_of

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
               "gelu": functools.partial(jax.nn.gelu, approximate=False)}  # transformers' "gelu" is the erf form


@dataclasses.dataclass(frozen=True)
class TowerConfig:
  """One transformer stack: transformers' `CLIPTextConfig` / `CLIPVisionConfig` fields they share."""

  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
  vocab_size: int = 49408
  max_position_embeddings: int = 77
  bos_token_id: int = 49406
  eos_token_id: int = 49407  # 2: the pre-2023 configs, pooled at the largest id instead (as transformers does)
  pad_token_id: int = 1


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
  image_size: int = 224
  patch_size: int = 14
  num_channels: int = 3

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2


_TEXT_HF = tuple(f.name for f in dataclasses.fields(TextConfig))
_VISION_HF = tuple(f.name for f in dataclasses.fields(VisionConfig))


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  text: TextConfig
  vision: VisionConfig
  projection_dim: int = 768
  logit_scale_init_value: float = 2.6592
  # Execution, not architecture.
  dtype: str = "float32"
  param_dtype: str = "float32"
  kernels: str = "auto"  # layers.kernels_for
  attention_impl: Optional[str] = None

  def __post_init__(self):
    errors = []
    for name, t in (("text", self.text), ("vision", self.vision)):
      if t.hidden_size % t.num_attention_heads:
        errors.append(f"{name}.hidden_size {t.hidden_size} not divisible by num_attention_heads "
                      f"{t.num_attention_heads}")
      if t.hidden_act not in ACTIVATIONS:
        errors.append(f"{name}.hidden_act {t.hidden_act!r} not one of {tuple(ACTIVATIONS)}")
    if self.vision.image_size % self.vision.patch_size:
      errors.append(f"vision.image_size {self.vision.image_size} not a multiple of patch_size "
                    f"{self.vision.patch_size}")
    if self.kernels not in KERNELS:
      errors.append(f"kernels {self.kernels!r} not one of {KERNELS}")
    if errors:
      raise ValueError("invalid CLIPConfig: " + "; ".join(errors))

  def replace(self, **kw) -> "CLIPConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_hf(cls, src: Any, **overrides) -> "CLIPConfig":
    """A transformers `CLIPConfig`: a config.json path, a directory holding one, a dict or a config object."""
    if isinstance(src, (str, os.PathLike)):
      path = os.path.join(src, "config.json") if os.path.isdir(src) else str(src)
      with open(path) as f:
        d = json.load(f)
    elif isinstance(src, dict):
      d = src
    else:
      d = src.to_dict()
    if d.get("model_type", "clip") != "clip":
      raise ValueError(f"config is for model_type {d['model_type']!r}, not 'clip'")
    t, v = d.get("text_config") or {}, d.get("vision_config") or {}
    text = TextConfig(**{k: t[k] for k in _TEXT_HF if k in t and t[k] is not None})
    vision = VisionConfig(**{k: v[k] for k in _VISION_HF if k in v and v[k] is not None})
    kw = {k: d[k] for k in ("projection_dim", "logit_scale_init_value") if k in d}
    return cls(text=text, vision=vision, **{**kw, **overrides})

  def to_hf_dict(self) -> dict:
    """The transformers `CLIPConfig` dict (`CLIPConfig(**d)` rebuilds it)."""
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": {**dataclasses.asdict(self.text), "projection_dim": self.projection_dim},
            "vision_config": {**dataclasses.asdict(self.vision), "projection_dim": self.projection_dim}}


def vit_l_14(**kw) -> CLIPConfig:
  """openai/clip-vit-large-patch14: the original's editing rewards (CLIP direction, CLIP image similarity)."""
  return CLIPConfig(text=TextConfig(768, 3072, 12, 12), vision=VisionConfig(1024, 4096, 24, 16), projection_dim=768,
                    **kw)


def vit_h_14(**kw) -> CLIPConfig:
  """laion/CLIP-ViT-H-14-laion2B-s32B-b79K: PickScore's backbone (GELU, projection 1024)."""
  return CLIPConfig(text=TextConfig(1024, 4096, 24, 16, hidden_act="gelu"),
                    vision=VisionConfig(1280, 5120, 32, 16, hidden_act="gelu"), projection_dim=1024, **kw)


def tiny(**kw) -> CLIPConfig:
  """A few-thousand-parameter CLIP for tests: 30 px images in 6 px patches, a 99-token vocabulary."""
  text = TextConfig(32, 64, 2, 4, vocab_size=99, max_position_embeddings=16, bos_token_id=97, eos_token_id=98,
                    pad_token_id=0)
  return CLIPConfig(text=text, vision=VisionConfig(48, 96, 2, 4, image_size=30, patch_size=6), projection_dim=24,
                    **kw)


# ---- model ----------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
  """Mirrors `CLIPEncoderLayer`: pre-norm attention (biased q/k/v/out, scale head_dim^-0.5), pre-norm MLP."""

  cfg: TowerConfig
  dtype: Any
  param_dtype: Any
  kernels: str = "auto"
  attention_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x, mask):  # x (B, T, D); mask broadcastable to (B, H, T, T), True = attend
    cfg = self.cfg
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernels=self.kernels)
    ln = lambda name: layer_norm(cfg.layer_norm_eps, self.dtype, self.param_dtype, name)
    b, t, d = x.shape
    n = cfg.num_attention_heads
    h = ln("layer_norm1")(x)
    q, k, v = (layers.dense(d, ("embed", "heads"), name=f"{p}_proj", **kw)(h).reshape(b, t, n, d // n)
               for p in ("q", "k", "v"))
    o = layers.attention(q, k, v, mask, implementation=self.attention_impl)
    x = x + layers.dense(d, ("heads", "embed"), name="out_proj", **kw)(o.reshape(b, t, d))
    h = ln("layer_norm2")(x)
    h = ACTIVATIONS[cfg.hidden_act](layers.dense(cfg.intermediate_size, ("embed", "mlp"), name="fc1", **kw)(h))
    return x + layers.dense(d, ("mlp", "embed"), name="fc2", **kw)(h), None


def _encoder(cfg: TowerConfig, top: "CLIPConfig", name: str):
  layer = nn.scan(EncoderLayer, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=nn.broadcast,
                  length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  return layer(cfg, dtype_of(top.dtype), dtype_of(top.param_dtype), top.kernels, top.attention_impl, name=name)


def layer_norm(eps: float, dtype, param_dtype, name: str) -> nn.LayerNorm:
  """torch `nn.LayerNorm` (affine, with bias) with logically named params."""
  return nn.LayerNorm(eps, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


def _layer_norm(eps, top: "CLIPConfig", name: str) -> nn.LayerNorm:
  return layer_norm(eps, dtype_of(top.dtype), dtype_of(top.param_dtype), name)


def _embed(n: int, d: int, top: "CLIPConfig", axes: tuple, name: str) -> nn.Embed:
  return nn.Embed(n, d, dtype=dtype_of(top.dtype), param_dtype=dtype_of(top.param_dtype), name=name,
                  embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes))


def patchify(pixel_values: jax.Array, patch: int) -> jax.Array:
  """(B, C, H, W) -> (B, H/p · W/p, C·p·p): row-major patches, each flattened in torch's Conv2d weight order."""
  b, c, h, w = pixel_values.shape
  x = pixel_values.reshape(b, c, h // patch, patch, w // patch, patch)
  return x.transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


class VisionTower(nn.Module):
  """Mirrors `CLIPVisionModel` + `visual_projection`: (B, 3, H, W) processor pixels -> (B, projection_dim)."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, pixel_values):
    top, cfg = self.config, self.config.vision
    dtype = dtype_of(top.dtype)
    if pixel_values.shape[1:] != (cfg.num_channels, cfg.image_size, cfg.image_size):
      raise ValueError(f"pixel_values shape {pixel_values.shape} is not (B, {cfg.num_channels}, {cfg.image_size}, "
                       f"{cfg.image_size}) (the CLIP image processor's output for this config)")
    # The patch Conv2d (kernel = stride, no bias) is a Dense over flattened patches.
    x = layers.dense(cfg.hidden_size, ("vit_patch", "embed"), use_bias=False, name="patch_embedding", dtype=dtype,
                     param_dtype=dtype_of(top.param_dtype), kernels=top.kernels)(
                         patchify(pixel_values.astype(dtype), cfg.patch_size))
    cls = self.param("class_embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)),
                     (cfg.hidden_size,), dtype_of(top.param_dtype))
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (x.shape[0], 1, cfg.hidden_size)), x], axis=1)
    pos = _embed(cfg.num_patches + 1, cfg.hidden_size, top, (None, "embed"), "position_embedding")
    x = x + pos(jnp.arange(cfg.num_patches + 1))[None]
    x = _layer_norm(cfg.layer_norm_eps, top, "pre_layrnorm")(x)  # sic: transformers' name
    x, _ = _encoder(cfg, top, "layers")(x, None)
    pooled = _layer_norm(cfg.layer_norm_eps, top, "post_layernorm")(x[:, 0])
    return layers.dense(top.projection_dim, ("embed", "caption"), use_bias=False, name="visual_projection",
                        dtype=dtype, param_dtype=dtype_of(top.param_dtype), kernels=top.kernels)(pooled)


class TextTower(nn.Module):
  """Mirrors `CLIPTextModel` + `text_projection`: ids (B, T), mask (B, T) -> (B, projection_dim), pooled at the
  first end-of-text token (or the largest id when eos_token_id is the legacy 2)."""

  config: CLIPConfig

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    top, cfg = self.config, self.config.text
    b, t = input_ids.shape
    if t > cfg.max_position_embeddings:
      raise ValueError(f"{t} text tokens exceed max_position_embeddings {cfg.max_position_embeddings}")
    x = _embed(cfg.vocab_size, cfg.hidden_size, top, ("vocab", "embed"), "token_embedding")(input_ids)
    x = x + _embed(cfg.max_position_embeddings, cfg.hidden_size, top, (None, "embed"),
                   "position_embedding")(jnp.arange(t))[None]
    causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
    mask = causal if attention_mask is None else causal & attention_mask.astype(bool)[:, None, None, :]
    mask = mask | jnp.eye(t, dtype=bool)[None, None]  # a padded query still sees itself (its output is unused)
    x, _ = _encoder(cfg, top, "layers")(x, mask)
    x = _layer_norm(cfg.layer_norm_eps, top, "final_layer_norm")(x)
    pool = jnp.argmax(input_ids, -1) if cfg.eos_token_id == 2 else jnp.argmax(input_ids == cfg.eos_token_id, -1)
    pooled = x[jnp.arange(b), pool]
    return layers.dense(top.projection_dim, ("embed", "caption"), use_bias=False, name="text_projection",
                        dtype=dtype_of(top.dtype), param_dtype=dtype_of(top.param_dtype), kernels=top.kernels)(pooled)


class CLIP(nn.Module):
  """Mirrors `CLIPModel`: `image_features` / `text_features` are `get_image_features` / `get_text_features`
  (projected, not normalised); `logit_scale` is the learned log temperature."""

  config: CLIPConfig

  def setup(self):
    self.vision_model = VisionTower(self.config)
    self.text_model = TextTower(self.config)
    self.logit_scale = self.param(
        "logit_scale", nn.with_logical_partitioning(
            lambda *_: jnp.asarray(self.config.logit_scale_init_value, dtype_of(self.config.param_dtype)), ()), ())

  def image_features(self, pixel_values):
    return self.vision_model(pixel_values)

  def text_features(self, input_ids, attention_mask=None):
    return self.text_model(input_ids, attention_mask)

  def __call__(self, pixel_values, input_ids, attention_mask=None):
    """-> (image_features, text_features, logit_scale)."""
    return self.image_features(pixel_values), self.text_features(input_ids, attention_mask), self.logit_scale


def _boxed_init(cfg: CLIPConfig, rng):
  v = cfg.vision
  return CLIP(cfg).init(rng, jnp.zeros((1, v.num_channels, v.image_size, v.image_size)),
                        jnp.zeros((1, 2), jnp.int32))["params"]


init_params, abstract_params, logical_axes = param_utils.param_fns(_boxed_init)


def load(path: str, dtype: Optional[str] = None, mesh=None, rules=None, **overrides) -> tuple[CLIP, Any]:
  """A dir written by `python -m convert clip` -> (model, params); dtype sets the compute dtype."""
  meta = param_utils.read_meta(path)
  cfg = CLIPConfig.from_hf(path, param_dtype=meta.get("param_dtype", "float32"),
                           **({"dtype": dtype} if dtype else {}), **overrides)
  return CLIP(cfg), param_utils.restore(path, cfg, abstract_params, logical_axes, "clip", mesh, rules)


def normalize(x: jax.Array) -> jax.Array:
  """x / ‖x‖ over the last axis, in float32 (transformers' `x / x.norm(p=2, dim=-1, keepdim=True)`)."""
  x = x.astype(jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


__all__ = ["CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "init_params", "abstract_params", "logical_axes",
           "load", "normalize", "patchify", "tiny", "vit_l_14", "vit_h_14"]
