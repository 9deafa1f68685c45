"""What the training loops share: the model from config, the trainable/frozen split placed on the mesh, and a
sharded train state {"trainable", "opt_state", "step"} whose scalars are replicated (so one compile serves)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from unirl_jax import sharding
from unirl_jax.models import unified


def build_model(model_cfg, seed: int):
  """-> (model, params, dir or None). model_cfg.init: "preset:NAME" (random) or a unified checkpoint dir."""
  knobs = dict(dtype=model_cfg.dtype, remat=model_cfg.remat)
  if model_cfg.init.startswith("preset:"):
    name = model_cfg.init.split(":", 1)[1]
    if not hasattr(unified, name):
      raise ValueError(f"model.init {model_cfg.init!r}: no preset {name!r} in unirl_jax.models.unified")
    model = unified.UnifiedModel(unified.with_execution(getattr(unified, name)(), **knobs))
    return model, model.init_params(jax.random.PRNGKey(seed)), None
  model, params = unified.load(model_cfg.init, **knobs)
  return model, params, model_cfg.init


def split(params: dict, trainable: tuple[str, ...]) -> tuple[dict, dict]:
  unknown = set(trainable) - set(params)
  if unknown:
    raise ValueError(f"trainable groups {sorted(unknown)} not among {sorted(params)}")
  return ({k: v for k, v in params.items() if k in trainable}, {k: v for k, v in params.items() if k not in trainable})


def place(model: unified.UnifiedModel, tree: dict, mesh) -> dict:
  """Puts a subset of the unified params on the mesh by their logical axes."""
  axes = model.logical_axes()
  return jax.device_put(tree, sharding.param_shardings({k: axes[k] for k in tree}, mesh, shapes=tree))


def init_state(trainable: dict, tx, mesh) -> tuple[dict, dict]:
  """-> (state, its shardings); the optimizer state follows the params' shardings."""
  state = {"trainable": trainable, "opt_state": jax.jit(tx.init)(trainable), "step": jnp.zeros((), jnp.int32)}
  replicated = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else replicated, state)
  return jax.device_put(state, shardings), shardings


def guarded_update(tx, state: dict, grads, finite):
  """Applies the optimizer unless the loss or gradient is non-finite (then the step is skipped, state kept)."""
  import optax
  updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
  new = optax.apply_updates(state["trainable"], updates)
  keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)
  return {"trainable": keep(new, state["trainable"]), "opt_state": keep(opt_state, state["opt_state"]),
          "step": state["step"] + 1}


def truncate_metrics(path: str, upto: int) -> None:
  """On resume, drop metrics rows logged after the restored checkpoint so the file holds one clean curve."""
  import json
  import os
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip() and json.loads(line)["step"] <= upto]
  with open(path, "w") as f:
    f.writelines(rows)
