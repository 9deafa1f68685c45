"""Device mesh (data, fsdp, tensor), the logical-axis rules table, and placing params and batches."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or axes, or None = replicated). One table for every model.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("norm", None),
    ("vit_patch", None),
    ("vit_embed", "fsdp"),
    ("vit_qkv", "tensor"),
    ("vit_heads", "tensor"),
    ("vit_mlp", "tensor"),
    ("vit_merge", "fsdp"),
    ("embed_out", "tensor"),  # output side of width-preserving (D -> k*D) projections
    ("caption", None),
    ("latent", None),
    ("freq", None),
    ("head_dim", None),
    ("queries", None),
    # DC-AE (frozen, ~0.3 B params, activation-bound): replicated.
    ("ae_embed", None),
    ("ae_mlp", None),
    ("ae_heads", None),
    ("ae_io", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of (data, fsdp, tensor); one -1 takes whatever devices are left."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1

  def __post_init__(self):
    sizes = {"mesh.data": self.data, "mesh.fsdp": self.fsdp, "mesh.tensor": self.tensor}
    bad = [k for k, v in sizes.items() if not (v >= 1 or v == -1)]
    if bad:
      raise ValueError(f"{bad[0]}={sizes[bad[0]]}: a mesh size is a positive number of devices, or -1 for the rest")
    if list(sizes.values()).count(-1) > 1:
      raise ValueError(f"{', '.join(k for k, v in sizes.items() if v == -1)} are all -1: at most one axis takes "
                       f"the remaining devices")


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
  sizes = [cfg.data, cfg.fsdp, cfg.tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {cfg}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh {cfg}: sizes must be positive or -1")
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(f"mesh {cfg}: {n_devices} devices not divisible by {known}")
    sizes[sizes.index(-1)] = n_devices // known
  if int(np.prod(sizes)) != n_devices:
    raise ValueError(f"mesh {cfg} needs {int(np.prod(sizes))} devices, {n_devices} available")
  return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Optional[Sequence] = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; fixed sizes smaller than the device count use the first devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = (cfg.data, cfg.fsdp, cfg.tensor)
  if -1 not in sizes and int(np.prod(sizes)) < len(devices):
    devices = devices[:int(np.prod(sizes))]
  shape = mesh_shape(cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _mesh_axes(name, rules) -> Any:
  if name is None:
    return None
  table = dict(rules)
  if name not in table:
    raise KeyError(f"logical axis {name!r} has no sharding rule; add it to unirl_jax.sharding.RULES")
  return table[name]


def param_shardings(logical_specs: Any, mesh: Mesh, rules=None, shapes: Any = None) -> Any:
  """Logical PartitionSpecs (from `nn.get_partition_spec`) -> NamedShardings on `mesh`.

  With `shapes` (a matching pytree of arrays/ShapeDtypeStructs), a dimension that its mesh axes do not
  divide evenly (e.g. a 151,668-row vocabulary over 8 devices) is replicated instead of failing.
  """
  rules = list(rules or RULES)

  def one(spec, shape=None):
    axes = []
    used = set()
    for d, name in enumerate(spec):
      ax = _mesh_axes(name, rules)
      names = () if ax is None else (ax if isinstance(ax, tuple) else (ax,))
      names = tuple(n for n in names if n not in used)  # a mesh axis may shard one dim only
      size = int(np.prod([mesh.shape[n] for n in names])) if names else 1
      if shape is not None and size > 1 and shape[d] % size:
        names = ()
      used.update(names)
      axes.append(None if not names else names if len(names) > 1 else names[0])
    return NamedSharding(mesh, P(*axes))

  is_spec = lambda x: isinstance(x, P)
  if shapes is None:
    return jax.tree.map(one, logical_specs, is_leaf=is_spec)
  return jax.tree.map(lambda sp, x: one(sp, x.shape), logical_specs, shapes, is_leaf=is_spec)


def shard_params(params: Any, logical_specs: Any, mesh: Mesh, rules=None) -> Any:
  """Places a param pytree on the mesh according to its logical axes."""
  return jax.device_put(params, param_shardings(logical_specs, mesh, rules, shapes=params))


def batch_sharding(mesh: Mesh, ndim: int, batch_axis: int = 0, rules=None) -> NamedSharding:
  """Shards the batch axis over (data, fsdp), replicating the rest."""
  spec = [None] * ndim
  spec[batch_axis] = dict(rules or RULES)["batch"]
  return NamedSharding(mesh, P(*spec))


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
  """Places every array of a batch pytree with its `batch_axis` split over (data, fsdp)."""
  return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x), batch_axis)), batch)


def process_rows(mesh: Mesh, n: int, rules=None) -> slice:
  """The contiguous rows of an n-row batch (split over the batch axes) that this process's devices hold."""
  idx = batch_sharding(mesh, 1, rules=rules).addressable_devices_indices_map((n,))
  spans = sorted({(s[0].start or 0, n if s[0].stop is None else s[0].stop) for s in idx.values()})
  lo, hi = spans[0][0], spans[-1][1]
  covered = sum(b - a for a, b in spans)
  if covered != hi - lo:
    raise ValueError(f"this process's devices hold rows {spans} of the batch, not one contiguous block: order the "
                     f"mesh's devices by process (jax.devices() does)")
  return slice(lo, hi)
