"""Mesh construction, logical-axis placement, and a sharded (8 CPU devices) forward equal to one device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import image_prompt, left_pad
from jax.sharding import PartitionSpec as P

from unirl_jax import checkpoint, sharding
from unirl_jax.models import qwen2_5_vl
from unirl_jax.models.qwen2_5_vl.model import grid_tuple


def test_mesh_shape_fills_minus_one():
  assert sharding.mesh_shape(sharding.MeshConfig(-1, 2, 2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(sharding.MeshConfig(1, -1, 1), 8) == (1, 8, 1)
  with pytest.raises(ValueError, match="at most one"):
    sharding.mesh_shape(sharding.MeshConfig(-1, -1, 1), 8)
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.mesh_shape(sharding.MeshConfig(3, 2, 2), 8)
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  assert mesh.axis_names == ("data", "fsdp", "tensor") and mesh.devices.shape == (2, 2, 2)


def test_logical_rules_and_indivisible_dims():
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  specs = {"a": P("layers", "embed", "heads"), "b": P("vocab", "embed")}
  shapes = {"a": jax.ShapeDtypeStruct((3, 8, 8), jnp.float32), "b": jax.ShapeDtypeStruct((7, 8), jnp.float32)}
  s = sharding.param_shardings(specs, mesh, shapes=shapes)
  assert s["a"].spec == P(None, "fsdp", "tensor")
  assert s["b"].spec == P(None, "fsdp")  # 7 rows do not split over tensor=2: replicated
  assert sharding.batch_sharding(mesh, 2).spec == P(("data", "fsdp"), None)


def test_every_param_has_logical_axes():
  specs = qwen2_5_vl.logical_axes(qwen2_5_vl.tiny())
  shapes = qwen2_5_vl.abstract_params(qwen2_5_vl.tiny())
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert len(flat_specs) == len(jax.tree.leaves(shapes))
  rules = dict(sharding.RULES)
  for spec, x in zip(flat_specs, jax.tree.leaves(shapes)):
    assert len(spec) == x.ndim and all(n in rules for n in spec), spec


def test_sharded_forward_equals_single_device(jax_model, jax_dir, images):
  model, params = jax_model
  pv, grid = images
  cfg = model.config
  rows = [image_prompt(cfg, int(np.prod(g)) // 4) for g in grid] * 2
  rows[2] = [3, 4] + rows[2]
  ids, mask = left_pad(rows)
  pv4 = np.concatenate([pv, pv])
  grid4 = np.concatenate([grid, grid])
  g = grid_tuple(grid4)

  @functools.partial(jax.jit, static_argnums=4)
  def fwd(p, i, m, x, grid):
    return model.apply({"params": p}, input_ids=i, attention_mask=m, pixel_values=x, image_grid_thw=grid)

  single = np.asarray(fwd(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pv4), g))
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  _, sharded_params = qwen2_5_vl.load(jax_dir, mesh=mesh)  # restored straight into the logical shardings
  q = sharded_params["language_model"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == P(None, "fsdp", "tensor") and len(q.sharding.device_set) == 8
  batch = sharding.shard_batch({"i": jnp.asarray(ids), "m": jnp.asarray(mask)}, mesh)
  out = fwd(sharded_params, batch["i"], batch["m"], jnp.asarray(pv4), g)
  np.testing.assert_allclose(np.asarray(out), single, atol=1e-4, rtol=0)


def test_train_state_checkpoint_restores_into_sharding(tmp_path):
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  state = {"w": jnp.arange(64.0).reshape(8, 8), "step": jnp.int32(3), "rng": jax.random.PRNGKey(1)}
  ck = checkpoint.TrainCheckpoints(str(tmp_path / "ckpt"), max_to_keep=2)
  for step in (1, 2, 3):
    ck.save(step, jax.tree.map(lambda x: x + step if x.dtype == jnp.float32 else x, state))
  ck.wait()
  assert ck.latest_step() == 3
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  shard = {"w": jax.sharding.NamedSharding(mesh, P("fsdp", "tensor")),
           "step": jax.sharding.NamedSharding(mesh, P()), "rng": jax.sharding.NamedSharding(mesh, P())}
  got = ck.restore(target, shardings=shard)
  ck.close()
  assert got["w"].sharding.spec == P("fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(got["w"]), np.arange(64.0).reshape(8, 8) + 3)
  np.testing.assert_array_equal(np.asarray(got["rng"]), np.asarray(state["rng"]))
  assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2, 3]


def test_params_checkpoint_round_trip(tmp_path):
  params = {"a": {"kernel": np.random.RandomState(0).randn(4, 3).astype(np.float32)}, "b": np.arange(5)}
  checkpoint.save_params(str(tmp_path / "p"), params)
  back = checkpoint.restore_params(str(tmp_path / "p"))
  np.testing.assert_array_equal(np.asarray(back["a"]["kernel"]), params["a"]["kernel"])
  np.testing.assert_array_equal(np.asarray(back["b"]), params["b"])
