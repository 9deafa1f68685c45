"""What the training loops share: the model from config, the trainable/frozen split placed on the mesh, and a
sharded train state {"trainable", "opt_state", "step"} whose scalars are replicated (so one compile serves)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from unirl_jax import sharding
from unirl_jax.models import unified


def execution_knobs(model_cfg) -> dict:
  """The `unified.with_execution` knobs of a run's typed model settings (run_config.ModelSettings): compute
  dtype, remat policy per layer stack, layers unrolled per scan iteration, kernel family."""
  return dict(dtype=model_cfg.dtype, remat=dict(model_cfg.remat), scan_unroll=model_cfg.scan_unroll,
              kernels=model_cfg.kernels)


def build_model(model_cfg, seed: int):
  """-> (model, params, dir or None). model_cfg.init: "preset:NAME" (random) or a unified checkpoint dir."""
  knobs = execution_knobs(model_cfg)
  if model_cfg.init.startswith("preset:"):
    name = model_cfg.init.split(":", 1)[1]
    if not hasattr(unified, name):
      raise ValueError(f"model.init {model_cfg.init!r}: no preset {name!r} in unirl_jax.models.unified")
    model = unified.UnifiedModel(unified.with_execution(getattr(unified, name)(), **knobs))
    params = model.init_params(jax.random.PRNGKey(seed))
    if model_cfg.vae_fit_steps:
      # A random DC-AE decodes everything to white noise; fit it to the synthetic shapes (unirl_jax.vae_fit).
      from unirl_jax import vae_fit
      image_size = 8 * model.config.vae.spatial_compression_ratio
      params["vae"], _, scale = vae_fit.fit(model.vae, params["vae"], model_cfg.vae_fit_steps, image_size,
                                            seed=seed, data=model_cfg.vae_fit_data, log_every=500)
      cfg = model.config
      model = unified.UnifiedModel(cfg.replace(vae=cfg.vae.replace(scaling_factor=scale)))
    return model, fit_vision_tower(model, params, model_cfg, seed, None), None
  if model_cfg.vae_fit_steps:
    raise ValueError("model.vae_fit_steps only applies to a random preset init, not to a checkpoint")
  model, params = unified.load(model_cfg.init, **knobs)
  return model, fit_vision_tower(model, params, model_cfg, seed, model_cfg.init), model_cfg.init


def fit_vision_tower(model, params: dict, model_cfg, seed: int, model_dir) -> dict:
  """params with the vision tower fitted to the shape scenes when model.vit_fit_steps asks (unirl_jax.vit_fit):
  the stand-in for a pretrained ViT, since a random tower trained through the tiny LM hardly learns shapes. The
  words are the run's own tokenizer's (`model_dir`'s when it has one), as the trainer loads it."""
  if not model_cfg.vit_fit_steps:
    return params
  from unirl_jax import tokenizer as tokenizer_lib
  from unirl_jax import vit_fit
  lm = params["lm"]
  words = vit_fit.word_vectors(tokenizer_lib.load(model_dir), lm["language_model"]["embed_tokens"]["embedding"],
                               model_cfg.vit_fit_data)
  visual, acc = vit_fit.fit(model.config.lm, lm["visual"], model_cfg.vit_fit_steps, words, model_cfg.vit_fit_size,
                            seed=seed, data=model_cfg.vit_fit_data, log_every=100)
  print("vit fit held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
  return {**params, "lm": {**lm, "visual": visual}}


def split(params: dict, trainable: tuple[str, ...]) -> tuple[dict, dict]:
  """-> (trainable, frozen) nested dicts. A name is a top-level group ("dit") or a path into one
  ("lm/language_model": the LM decoder and embeddings without the vision tower)."""
  trainable_tree, frozen = {}, params
  for name in trainable:
    path = name.split("/")
    node = params
    for i, key in enumerate(path):
      if not isinstance(node, dict) or key not in node:
        known = sorted(node) if isinstance(node, dict) else []
        raise ValueError(f"trainable {name!r}: no {'/'.join(path[:i + 1])!r} in the params (known: {known})")
      node = node[key]
    trainable_tree = merge(trainable_tree, _nest(path, node))
    frozen = _drop(frozen, path)
  return trainable_tree, frozen


def _nest(path, leaf):
  for key in reversed(path):
    leaf = {key: leaf}
  return leaf


def _drop(tree: dict, path) -> dict:
  if len(path) == 1:
    return {k: v for k, v in tree.items() if k != path[0]}
  sub = _drop(tree[path[0]], path[1:])
  return {k: v for k, v in tree.items() if k != path[0]} | ({path[0]: sub} if sub else {})


def merge(a: dict, b: dict) -> dict:
  """Deep union of two disjoint nested dicts (trainable + frozen -> the full params)."""
  out = dict(a)
  for k, v in b.items():
    if k in out:
      if not (isinstance(out[k], dict) and isinstance(v, dict)):
        raise ValueError(f"merge: {k!r} is in both trees")
      out[k] = merge(out[k], v)
    else:
      out[k] = v
  return out


def _like(full, tree):
  """The part of `full` with the nesting of `tree` (its logical axes, say)."""
  if isinstance(tree, dict) and isinstance(full, dict):
    return {k: _like(full[k], v) for k, v in tree.items()}
  return full


def place(model: unified.UnifiedModel, tree: dict, mesh) -> dict:
  """Puts a subset of the unified params on the mesh by their logical axes."""
  return jax.device_put(tree, sharding.param_shardings(_like(model.logical_axes(), tree), mesh, shapes=tree))


def init_state(trainable: dict, tx, mesh) -> tuple[dict, dict]:
  """-> (state, its shardings); the optimizer state follows the params' shardings."""
  state = {"trainable": trainable, "opt_state": jax.jit(tx.init)(trainable), "step": jnp.zeros((), jnp.int32)}
  replicated = NamedSharding(mesh, P())
  shardings = jax.tree.map(lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else replicated, state)
  return jax.device_put(state, shardings), shardings


def apply_gradients(tx, state: dict, loss, grads) -> tuple[dict, dict]:
  """One optimizer step unless the loss or the gradient is not finite (then the step is skipped and counted)."""
  import optax
  gnorm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
  return guarded_update(tx, state, grads, finite), {"grad_norm": gnorm, "skipped": (~finite).astype(jnp.int32)}


def guarded_update(tx, state: dict, grads, finite):
  """Applies the optimizer unless the loss or gradient is non-finite (then the step is skipped, state kept)."""
  import optax
  updates, opt_state = tx.update(grads, state["opt_state"], state["trainable"])
  new = optax.apply_updates(state["trainable"], updates)
  keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)
  return {"trainable": keep(new, state["trainable"]), "opt_state": keep(opt_state, state["opt_state"]),
          "step": state["step"] + 1}


def cast_floating(tree, dtype):
  """Floating-point leaves to `dtype` (None: unchanged), e.g. frozen weights kept in bf16 like the original's."""
  if dtype is None:
    return tree
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
