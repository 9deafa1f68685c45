"""The `kernels` run setting reaches every layer of every sub-model (LM, vision tower, connector, DiT, DC-AE):
the traced program follows the setting, not the host backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unirl_jax import run_config, train_state
from unirl_jax.models import unified


def _eqns(jaxpr):
  for e in jaxpr.eqns:
    yield e
    for v in e.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _eqns(inner)


def _forms(kernels: str) -> dict:
  """Per sub-model: (bf16 Dense matmuls asking for a float32 result, grouped convolutions) in its program."""
  knobs = train_state.execution_knobs(run_config.ModelSettings(dtype="bfloat16", kernels=kernels))
  model = unified.UnifiedModel(unified.with_execution(unified.tiny(), **knobs))
  params = model.abstract_params()
  cfg = model.config
  s = jax.ShapeDtypeStruct
  ids, grid = s((2, 12), jnp.int32), np.array([[1, 4, 4]])
  pixels = s((16, cfg.lm.vision.patch_dim), jnp.float32)
  lh = 4
  lat = s((2, lh, lh, cfg.dit.in_channels), jnp.float32)
  img = s((2, lh * cfg.vae.spatial_compression_ratio, lh * cfg.vae.spatial_compression_ratio, 3), jnp.float32)
  programs = {
      "lm": lambda p, i: model.lm.apply({"params": p["lm"]}, i, jnp.ones(i.shape, jnp.int32)),
      "vision": lambda p, x: model.lm.apply({"params": p["lm"]}, x, grid, method="get_image_features"),
      "connector": lambda p, i: model.condition(p, i, jnp.ones(i.shape, jnp.int32)),
      "dit": lambda p, x: model.velocity(p, x, jnp.zeros((2, cfg.num_queries, cfg.dit.caption_channels)),
                                         jnp.ones((2,)), ref_latents=x),
      "vae": lambda p, x: model.encode(p, x),
  }
  args = {"lm": ids, "vision": pixels, "connector": ids, "dit": lat, "vae": img}
  out = {}
  for name, fn in programs.items():
    eqns = list(_eqns(jax.make_jaxpr(fn)(params, args[name]).jaxpr))
    # Dense layers: a bf16 (rows, in) x (in, out) weight matmul (attention's own float32 scores are not one).
    f32_dots = sum(e.primitive.name == "dot_general" and e.params["preferred_element_type"] == jnp.float32
                   and all(v.aval.dtype == jnp.bfloat16 and v.aval.ndim == 2 for v in e.invars) for e in eqns)
    grouped = sum(e.primitive.name == "conv_general_dilated" and e.params["feature_group_count"] > 1
                  for e in eqns)
    out[name] = (f32_dots, grouped)
  return out


def test_kernels_setting_reaches_every_sub_model():
  cpu, acc = _forms("cpu"), _forms("accelerator")
  for name in cpu:
    assert cpu[name][0] > 0 and acc[name][0] == 0, (name, cpu[name], acc[name])
  for name in ("dit", "vae"):  # the two with depthwise convolutions
    assert cpu[name][1] == 0 and acc[name][1] > 0, (name, cpu[name], acc[name])


def test_unknown_kernels_setting_is_refused():
  with pytest.raises(run_config.ConfigError, match="model.kernels 'gpu'"):
    run_config.ModelSettings(kernels="gpu")
  with pytest.raises(ValueError, match="kernels 'tpu'"):
    unified.with_execution(unified.tiny(), kernels="tpu")
