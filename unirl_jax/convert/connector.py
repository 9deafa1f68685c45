"""UniRL connector (`down_projector.*`) key table; part of the `unirl` conversion."""

from __future__ import annotations

import numpy as np

from unirl_jax.convert.table import IDENTITY, LINEAR, Rule, flatten, to_params


def rules(hf_prefix: str = "", path_prefix: str = "") -> list[Rule]:
  b, p = f"{hf_prefix}layers.{{i}}", f"{path_prefix}layers"
  lin = lambda hf, path: [Rule(f"{hf}.weight", f"{path}/kernel", LINEAR), Rule(f"{hf}.bias", f"{path}/bias", IDENTITY)]
  out = [Rule(f"{b}.norm1.weight", f"{p}/norm1/scale"), Rule(f"{b}.norm2.weight", f"{p}/norm2/scale"),
         Rule(f"{b}.attn.q_norm.weight", f"{p}/attn/q_norm/scale"),
         Rule(f"{b}.attn.k_norm.weight", f"{p}/attn/k_norm/scale"),
         Rule(f"{hf_prefix}norm_final.weight", f"{path_prefix}norm_final/scale"),
         *lin(f"{hf_prefix}output_linear", f"{path_prefix}output_linear")]
  for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
    out += lin(f"{b}.attn.{proj}", f"{p}/attn/{proj}")
  # UniRL's SwiGLU is w3(silu(w1 x) * w2 x): w1 = gate, w2 = up, w3 = down.
  for w, name in (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj")):
    out += lin(f"{b}.ffn.{w}", f"{p}/ffn/{name}")
  return out


def connector_params(tensors: dict, cfg, dtype=np.float32) -> dict:
  """A connector state dict (keys without the `down_projector.` prefix) -> params."""
  from unirl_jax.models.connector import abstract_params
  expected = {k: v.shape for k, v in flatten(abstract_params(cfg)).items()}
  return to_params(list(tensors), tensors.__getitem__, rules(), expected, dtype)
