"""What every model port shares: params from a boxed linen init, their shapes and logical axes, and loading
a directory written by `python -m convert` straight into (optionally sharded) arrays."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import numpy as np

BoxedInit = Callable[[Any, jax.Array], Any]  # (config, rng) -> params with LogicallyPartitioned boxes


def param_fns(boxed_init: BoxedInit):
  """-> (init_params(cfg, rng=None), abstract_params(cfg), logical_axes(cfg)) for one model."""

  def init_params(cfg, rng: Optional[jax.Array] = None) -> dict:
    """Random params (plain arrays, no partitioning boxes)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return nn.unbox(jax.jit(boxed_init, static_argnums=0)(cfg, rng))

  def abstract_params(cfg) -> dict:
    """ShapeDtypeStructs of every param, without allocating."""
    return nn.unbox(jax.eval_shape(functools.partial(boxed_init, cfg), jax.random.PRNGKey(0)))

  def logical_axes(cfg) -> dict:
    """A PartitionSpec of logical axis names per param."""
    return nn.get_partition_spec(jax.eval_shape(functools.partial(boxed_init, cfg), jax.random.PRNGKey(0)))

  return init_params, abstract_params, logical_axes


def read_meta(path: str) -> dict:
  """The `unirl_jax.json` a conversion writes ({"kind", "param_dtype", ...}); {} when absent."""
  meta = os.path.join(path, "unirl_jax.json")
  if not os.path.exists(meta):
    return {}
  with open(meta) as f:
    return json.load(f)


def restore(path: str, cfg, abstract_params, logical_axes, kind: str, mesh=None, rules=None):
  """Params of a converted dir shaped by `abstract_params(cfg)`, restored onto `mesh` by logical axes."""
  from unirl_jax import checkpoint, sharding
  params_dir = os.path.join(path, "params")
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{path} has no params/ directory (write one with `python -m convert {kind}`)")
  target = abstract_params(cfg)
  shardings = None
  if mesh is not None:
    shardings = sharding.param_shardings(logical_axes(cfg), mesh, rules, shapes=target)
  return checkpoint.restore_params(params_dir, target, shardings)


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
