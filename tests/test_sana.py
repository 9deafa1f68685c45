"""SANA DiT parity with diffusers' SanaTransformer2DModel (fp32), the UniRL reference branch, and conversion."""

import copy
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unirl_jax.convert.pipeline import export_kind, import_kind
from unirl_jax.convert.safetensors_io import SafetensorsDir
from unirl_jax.models import sana
from unirl_jax.models.sana_config import SanaConfig

TOL = 1e-5

VARIANTS = {
    "sana10": {},
    "patch2": dict(patch_size=2),
    "interp": dict(interpolation_scale=1.0),
    "qknorm_guidance": dict(qk_norm="rms_norm_across_heads", guidance_embeds=True),
    "affine_norm": dict(norm_elementwise_affine=True, attention_bias=True),
}


def diffusers_model(cfg: SanaConfig, seed=0):
  from diffusers import SanaTransformer2DModel
  torch.manual_seed(seed)
  d = cfg.to_diffusers_dict()
  d.pop("_class_name")
  m = SanaTransformer2DModel(**d).eval()
  with torch.no_grad():  # diffusers inits some weights to exact constants; randomise everything
    for p in m.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return m


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """variant -> (diffusers model, diffusers dir, (jax model, params))."""
  out = {}
  for name, kw in VARIANTS.items():
    cfg = sana.tiny(**kw)
    m = diffusers_model(cfg)
    src = str(tmp_path_factory.mktemp("sana") / name)
    m.save_pretrained(src)
    dst = import_kind("sana", src, str(tmp_path_factory.mktemp("sana_jax") / name))
    out[name] = (m, src, sana.load(dst))
  return out


def inputs(cfg, b=2, h=8, w=8, s=5, seed=0):
  rs = np.random.RandomState(seed)
  x = rs.randn(b, h, w, cfg.in_channels).astype(np.float32)
  ctx = rs.randn(b, s, cfg.caption_channels).astype(np.float32)
  t = np.array([999.0, 321.5][:b], np.float32)
  mask = np.ones((b, s), np.int64)
  mask[1, 3:] = 0
  return x, ctx, t, mask


def torch_velocity(m, x, ctx, t, mask=None, guidance=None):
  kw = {}
  if mask is not None:
    kw["encoder_attention_mask"] = torch.tensor(mask)
  if guidance is not None:
    kw["guidance"] = torch.tensor(guidance)
  with torch.no_grad():
    out = m(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(ctx), torch.tensor(t), **kw).sample
  return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("with_mask", [False, True])
def test_velocity_matches_diffusers(converted, name, with_mask):
  m, _, (model, params) = converted[name]
  cfg = model.config
  x, ctx, t, mask = inputs(cfg, h=8, w=12 if name != "interp" else 8)
  g = np.array([4.5, 3.0], np.float32) if cfg.guidance_embeds else None
  ref = torch_velocity(m, x, ctx, t, mask if with_mask else None, g)
  out = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(ctx), jnp.asarray(t),
                    encoder_attention_mask=jnp.asarray(mask) if with_mask else None, guidance=g)
  assert out.shape == x.shape[:3] + (cfg.out_channels,)
  np.testing.assert_allclose(np.asarray(out), ref, atol=TOL, rtol=0)


def test_interpolated_positions_at_another_size(converted):
  """interpolation_scale with a latent bigger than sample_size recomputes the sin-cos table like diffusers."""
  m, _, (model, params) = converted["interp"]
  x, ctx, t, _ = inputs(model.config, h=12, w=16)
  np.testing.assert_allclose(np.asarray(model.apply({"params": params}, x, ctx, t)),
                             torch_velocity(m, x, ctx, t), atol=TOL, rtol=0)


def test_mask_matters(converted):
  _, _, (model, params) = converted["sana10"]
  x, ctx, t, mask = inputs(model.config)
  a = model.apply({"params": params}, x, ctx, t, encoder_attention_mask=mask)
  b = model.apply({"params": params}, x, ctx, t)
  assert np.abs(np.asarray(a[1]) - np.asarray(b[1])).max() > 1e-4
  np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), atol=1e-6)


def test_reference_branch_matches_torch_composition(tmp_path):
  """UniRL's editing input: diffusers' patch tokens + ref_linear(ref_patch_embed(ref))."""
  cfg = sana.tiny()
  m = diffusers_model(cfg, seed=1)
  ref_patch_embed = copy.deepcopy(m.patch_embed)
  ref_linear = torch.nn.Linear(cfg.inner_dim, cfg.inner_dim)
  torch.manual_seed(2)
  with torch.no_grad():
    for p in list(ref_patch_embed.parameters()) + list(ref_linear.parameters()):
      p.copy_(0.2 * torch.randn_like(p))  # trained values, not the zero init
  x, ctx, t, _ = inputs(cfg)
  r = np.random.RandomState(3).randn(*x.shape).astype(np.float32)
  hook = m.patch_embed.register_forward_hook(
      lambda mod, args, out: out + ref_linear(ref_patch_embed(torch.tensor(r).permute(0, 3, 1, 2))))
  ref = torch_velocity(m, x, ctx, t)
  hook.remove()
  # A UniRL-style checkpoint: the diffusers keys plus ref_patch_embed.* and ref_linear.*
  from safetensors.torch import save_file
  src = tmp_path / "unirl_dit"
  m.save_pretrained(src)
  sd = {k: v.contiguous() for k, v in m.state_dict().items()}
  sd.update({f"ref_patch_embed.{k}": v.contiguous() for k, v in ref_patch_embed.state_dict().items()})
  sd.update({f"ref_linear.{k}": v.contiguous() for k, v in ref_linear.state_dict().items()})
  save_file(sd, str(src / "diffusion_pytorch_model.safetensors"))
  model, params = sana.load(import_kind("sana", str(src), str(tmp_path / "jax")))
  assert model.config.ref_branch
  out = model.apply({"params": params}, x, ctx, t, ref_latents=r)
  np.testing.assert_allclose(np.asarray(out), ref, atol=TOL, rtol=0)
  # Round trip keeps the extra keys.
  back = export_kind("sana", str(tmp_path / "jax"), str(tmp_path / "back"))
  b = SafetensorsDir(back)
  assert sorted(b.keys()) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(b.get(k), sd[k].numpy(), err_msg=k)


def test_fresh_reference_branch_starts_as_a_no_op():
  """init: ref_patch_embed = patch_embed and ref_linear = 0, so the branch adds nothing until trained."""
  cfg = sana.tiny(ref_branch=True)
  params = sana.init_params(cfg)
  np.testing.assert_array_equal(params["ref_patch_embed"]["proj"]["kernel"], params["patch_embed"]["proj"]["kernel"])
  model = sana.SanaTransformer(cfg)
  plain = sana.SanaTransformer(cfg.replace(ref_branch=False))
  x, ctx, t, _ = inputs(cfg)
  base = {k: v for k, v in params.items() if not k.startswith("ref_")}
  np.testing.assert_allclose(np.asarray(model.apply({"params": params}, x, ctx, t, ref_latents=x + 1)),
                             np.asarray(plain.apply({"params": base}, x, ctx, t)), atol=1e-6)
  with pytest.raises(ValueError, match="ref_branch"):
    plain.apply({"params": base}, x, ctx, t, ref_latents=x)


@pytest.mark.parametrize("name", ["sana10", "qknorm_guidance"])
def test_round_trip_is_bit_exact(converted, name, tmp_path):
  m, src, _ = converted[name]
  dst = import_kind("sana", src, str(tmp_path / "jax"))
  back = export_kind("sana", dst, str(tmp_path / "back"))
  a, b = SafetensorsDir(src), SafetensorsDir(back)
  assert sorted(a.keys()) == sorted(b.keys())
  for k in a.keys():
    np.testing.assert_array_equal(a.get(k), b.get(k), err_msg=k)
  from diffusers import SanaTransformer2DModel
  m2 = SanaTransformer2DModel.from_pretrained(back).eval()
  x, ctx, t, _ = inputs(sana.tiny())
  g = np.array([4.5, 3.0], np.float32) if m.config.guidance_embeds else None
  np.testing.assert_array_equal(torch_velocity(m2, x, ctx, t, guidance=g), torch_velocity(m, x, ctx, t, guidance=g))


def test_pipeline_folder_source(converted, tmp_path):
  _, src, _ = converted["sana10"]
  os.makedirs(tmp_path / "pipe")
  os.symlink(src, tmp_path / "pipe" / "transformer")
  model, params = sana.load(import_kind("sana", str(tmp_path / "pipe"), str(tmp_path / "jax")))
  assert model.config == converted["sana10"][2][0].config


def test_bad_shape_names_the_key(converted, tmp_path):
  from safetensors.torch import save_file
  from unirl_jax.convert.table import ConversionError
  m, src, _ = converted["sana10"]
  bad = tmp_path / "bad"
  m.save_pretrained(bad)
  sd = {k: v.contiguous() for k, v in m.state_dict().items()}
  sd["transformer_blocks.1.ff.conv_depth.weight"] = torch.zeros(10, 1, 3, 3)
  save_file(sd, str(bad / "diffusion_pytorch_model.safetensors"))
  with pytest.raises(ConversionError, match=r"transformer_blocks.1.ff.conv_depth.weight': checkpoint shape "
                                            r"\(10, 1, 3, 3\) but the model expects \(80, 1, 3, 3\)"):
    import_kind("sana", str(bad), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_bf16_is_close_to_fp32(converted):
  """bf16 activations (fp32 master params): the linear attention still runs in fp32; error within 2% of scale."""
  _, _, (model, params) = converted["sana10"]
  x, ctx, t, mask = inputs(model.config)
  ref = np.asarray(model.apply({"params": params}, x, ctx, t, encoder_attention_mask=mask))
  out = sana.SanaTransformer(model.config.replace(dtype="bfloat16")).apply(
      {"params": params}, x, ctx, t, encoder_attention_mask=mask)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out.astype(jnp.float32))
  assert np.isfinite(out).all()
  assert np.abs(out - ref).max() < 0.02 * np.abs(ref).max()


def test_sharded_equals_single_device(converted):
  from unirl_jax import sharding
  _, _, (model, params) = converted["qknorm_guidance"]
  cfg = model.config
  x, ctx, t, mask = inputs(cfg, b=4 if False else 2)
  x, ctx, t, mask = (np.concatenate([a, a]) for a in (x, ctx, t, mask))
  g = np.full((4,), 4.5, np.float32)
  f = jax.jit(lambda p, *a: model.apply({"params": p}, *a[:3], encoder_attention_mask=a[3], guidance=a[4]))
  single = np.asarray(f(params, x, ctx, t, mask, g))
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  sp = sharding.shard_params(params, sana.logical_axes(cfg), mesh)
  batch = sharding.shard_batch(tuple(jnp.asarray(a) for a in (x, ctx, t, mask, g)), mesh)
  np.testing.assert_allclose(np.asarray(f(sp, *batch)), single, atol=1e-5, rtol=0)


def test_preset_param_count_matches_diffusers():
  from diffusers import SanaTransformer2DModel
  cfg = sana.sana_1600m()
  d = cfg.to_diffusers_dict()
  d.pop("_class_name")
  with torch.device("meta"):
    ref = sum(p.numel() for p in SanaTransformer2DModel(**d).parameters())
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sana.abstract_params(cfg)))
  assert ours == ref and 1.55e9 < ours < 1.65e9


def test_remat_does_not_change_gradients(converted):
  _, _, (model, params) = converted["sana10"]
  x, ctx, t, _ = inputs(model.config)
  loss = lambda m: lambda p: jnp.mean(m.apply({"params": p}, x, ctx, t) ** 2)
  ref = jax.grad(loss(model))(params)
  got = jax.grad(loss(sana.SanaTransformer(dataclasses.replace(model.config, remat="full"))))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", list(VARIANTS) + ["ref"])
def test_every_param_has_a_sharding_rule(name):
  from jax.sharding import PartitionSpec as P
  from unirl_jax import sharding
  cfg = sana.tiny(ref_branch=True) if name == "ref" else sana.tiny(**VARIANTS[name])
  specs = sana.logical_axes(cfg)
  leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
  assert len(leaves) == len(jax.tree.leaves(sana.abstract_params(cfg)))
  sharding.param_shardings(specs, sharding.make_mesh(sharding.MeshConfig(2, 2, 2)))  # raises on unknown names


def test_depthwise_conv_impls_agree():
  """The CPU path (shifted multiply-adds) and the convolution compute the same thing, gradients included."""
  from unirl_jax.models.layers import DepthwiseConv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 2, 12))  # a side shorter than the kernel's reach
  conv = DepthwiseConv(12, 5, impl="conv")
  params = conv.init(jax.random.PRNGKey(1), x)["params"]
  params["bias"] = jax.random.normal(jax.random.PRNGKey(2), (12,))
  f = lambda impl: (lambda p, x: DepthwiseConv(12, 5, impl=impl).apply({"params": p}, x))
  np.testing.assert_allclose(f("shifted")(params, x), f("conv")(params, x), atol=1e-5, rtol=1e-5)
  g = lambda impl: jax.grad(lambda p, x: jnp.sum(f(impl)(p, x) ** 2), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g("shifted")), jax.tree.leaves(g("conv"))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_precomputed_context_gives_the_same_velocity_and_gradient():
  """SanaContext's per-layer caption K/V, fed back through `context=`, is the same forward and gradient as
  the caption path inside the model (what lets a rollout compute them once); the plain config's path is
  covered through the GRPO guided velocity (test_grpo_core)."""
  cfg = sana.tiny(num_layers=2, qk_norm="rms_norm_across_heads", remat="full", scan_unroll=2)
  params = sana.init_params(cfg, jax.random.PRNGKey(0))
  m, c = sana.SanaTransformer(cfg), sana.SanaContext(cfg)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, cfg.sample_size, cfg.sample_size, cfg.in_channels))
  ehs = jax.random.normal(jax.random.PRNGKey(2), (2, 5, cfg.caption_channels))
  mask, t = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]), jnp.array([100.0, 700.0])
  direct = lambda p, e: m.apply({"params": p}, x, e, t, encoder_attention_mask=mask)
  shared = lambda p, e: m.apply({"params": p}, x, None, t, context=c.apply({"params": p}, e, mask))
  np.testing.assert_allclose(shared(params, ehs), direct(params, ehs), rtol=1e-6, atol=1e-6)
  loss = lambda f: (lambda p, e: jnp.sum(f(p, e) ** 2))
  for a, b in zip(jax.tree.leaves(jax.grad(loss(shared), argnums=(0, 1))(params, ehs)),
                  jax.tree.leaves(jax.grad(loss(direct), argnums=(0, 1))(params, ehs))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="not both"):
    m.apply({"params": params}, x, ehs, t, context=c.apply({"params": params}, ehs))
