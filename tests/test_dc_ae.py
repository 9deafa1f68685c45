"""DC-AE parity with diffusers' AutoencoderDC (fp32 and bf16), pixel-shuffle layout, conversion round trip, errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unirl_jax.convert.dc_ae import batch_norm_keys, export_dc_ae, import_dc_ae, rules
from unirl_jax.convert.safetensors_io import SafetensorsDir, save_file
from unirl_jax.convert.table import ConversionError, default_hf_shape
from unirl_jax.models import dc_ae
from unirl_jax.models.dc_ae_blocks import pixel_shuffle, pixel_unshuffle

TOL = 1e-4
KINDS = ("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock")
CASES = {
    # diffusers' default block mix: rms_norm, pixel_unshuffle / pixel_shuffle; stage 0 empty (conv_in / conv_out
    # become down / up blocks, as in dc-ae-f32c32-in); two attention scales; the last stage runs diffusers'
    # quadratic branch (2x3 tokens <= head dim 8), the one before its linear branch.
    "default": dict(encoder_block_types=KINDS, decoder_block_types=KINDS, encoder_block_out_channels=(8, 16, 32, 32),
                    decoder_block_out_channels=(8, 16, 32, 32), encoder_layers_per_block=(0, 1, 1, 2),
                    decoder_layers_per_block=(0, 1, 2, 1), encoder_qkv_multiscales=((), (), (3, 5), (5,)),
                    decoder_qkv_multiscales=((), (), (3,), ()), decoder_in_shortcut=False),
    # SANA's kinds (conv downsample, nearest-interpolate upsample) with batch_norm / relu decoder stages,
    # batch_norm in an EfficientViT block too, and a non-default final activation.
    "sana_bn": dict(downsample_block_type="conv", upsample_block_type="interpolate",
                    decoder_norm_types=("batch_norm", "rms_norm", "batch_norm"),
                    decoder_act_fns=("relu", "silu", "relu"), encoder_layers_per_block=(1, 1, 2),
                    decoder_layers_per_block=(1, 2, 1), decoder_conv_act_fn="silu", encoder_out_shortcut=False),
}


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().float().numpy().transpose(0, 2, 3, 1)


def diffusers_model(cfg, seed=0):
  """A random AutoencoderDC; norms and batch-norm statistics get non-trivial values too."""
  from diffusers import AutoencoderDC
  torch.manual_seed(seed)
  d = {k: v for k, v in cfg.to_diffusers_dict().items() if not k.startswith("_")}
  m = AutoencoderDC(**d).eval()
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "norm" in name:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
    for name, b in m.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.2 * torch.randn_like(b))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand_like(b))
  return m


class Case:
  def __init__(self, name, tmp):
    self.cfg = dc_ae.tiny(**CASES[name])
    self.torch = diffusers_model(self.cfg)
    self.src = str(tmp / "hf")
    self.torch.save_pretrained(self.src)
    self.dst = import_dc_ae(self.src, str(tmp / "jax"))
    self.model, self.params = dc_ae.load(self.dst)
    f = self.cfg.spatial_compression_ratio
    rs = np.random.RandomState(0)
    self.x = rs.uniform(-1, 1, (2, 2 * f, 3 * f, 3)).astype(np.float32)
    self.z = rs.randn(2, 2, 3, self.cfg.latent_channels).astype(np.float32)
    self.encode = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method="encode"))
    self.decode = jax.jit(lambda p, z: self.model.apply({"params": p}, z, method="decode"))

  def reference(self, m=None):
    m = m or self.torch
    with torch.no_grad():
      return (nhwc(m.encode(nchw(self.x).to(m.dtype)).latent), nhwc(m.decode(nchw(self.z).to(m.dtype)).sample))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
  return {name: Case(name, tmp_path_factory.mktemp(name)) for name in CASES}


def test_pixel_shuffle_layout_matches_torch():
  x = np.random.RandomState(0).randn(2, 3, 4, 12).astype(np.float32)  # NHWC, 12 = 3 * 2 * 2 channels
  want = nhwc(torch.nn.functional.pixel_shuffle(nchw(x), 2))
  np.testing.assert_array_equal(np.asarray(pixel_shuffle(jnp.asarray(x), 2)), want)
  y = np.random.RandomState(1).randn(2, 4, 6, 5).astype(np.float32)
  want = nhwc(torch.nn.functional.pixel_unshuffle(nchw(y), 2))
  np.testing.assert_array_equal(np.asarray(pixel_unshuffle(jnp.asarray(y), 2)), want)
  np.testing.assert_array_equal(np.asarray(pixel_shuffle(pixel_unshuffle(jnp.asarray(y), 2), 2)), y)


@pytest.mark.parametrize("name", list(CASES))
def test_encode_decode_match_diffusers(cases, name):
  c = cases[name]
  latent, sample = c.reference()
  got = np.asarray(c.encode(c.params, c.x))
  assert got.shape == latent.shape == (2, 2, 3, c.cfg.latent_channels)
  assert 0.5 < np.abs(latent).max() < 10  # outputs of order 1: an absolute 1e-4 means something
  np.testing.assert_allclose(got, latent, atol=TOL, rtol=0)
  got = np.asarray(c.decode(c.params, c.z))
  assert got.shape == sample.shape == (2, 2 * c.cfg.spatial_compression_ratio, 3 * c.cfg.spatial_compression_ratio, 3)
  assert 0.5 < np.abs(sample).max() < 10
  np.testing.assert_allclose(got, sample, atol=TOL, rtol=0)


def test_scaled_helpers_apply_the_scaling_factor(cases):
  c = cases["default"]
  sf = c.cfg.scaling_factor
  assert sf == 0.5
  encode = jax.jit(lambda p, x: dc_ae.encode_scaled(c.model, p, x))
  decode = jax.jit(lambda p, z: dc_ae.decode_scaled(c.model, p, z))
  np.testing.assert_allclose(np.asarray(encode(c.params, c.x)), np.asarray(c.encode(c.params, c.x)) * sf, atol=1e-6)
  np.testing.assert_allclose(np.asarray(decode(c.params, c.z * sf)), np.asarray(c.decode(c.params, c.z)), atol=1e-5)
  with pytest.raises(ValueError, match="multiples of 8"):
    c.model.apply({"params": c.params}, c.x[:, :12], method="encode")


def tensors(path):
  r = SafetensorsDir(path)
  return {k: np.array(r.get(k)) for k in r.keys()}


def test_round_trip_is_bit_exact_and_loads_in_diffusers(cases, tmp_path):
  from diffusers import AutoencoderDC
  c = cases["sana_bn"]
  assert json.load(open(os.path.join(c.dst, "unirl_jax.json"))) == {"kind": "dc_ae", "param_dtype": "float32"}
  out = export_dc_ae(c.dst, str(tmp_path / "hf"))
  a, b = tensors(c.src), tensors(os.path.join(out, "diffusion_pytorch_model.safetensors"))
  # Batch-norm step counters are dropped on import and written back as 0 (what an eval-only model holds).
  assert sorted(a) == sorted(b) and any(k.endswith("running_var") for k in a)
  assert all(int(a[k]) == 0 for k in a if k.endswith("num_batches_tracked"))
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert json.load(open(os.path.join(out, "config.json"))) == json.load(open(os.path.join(c.src, "config.json")))
  out = export_dc_ae(c.dst, str(tmp_path / "sharded"), max_shard_bytes=20_000)  # shards + diffusers' index json
  assert os.path.exists(os.path.join(out, "diffusion_pytorch_model.safetensors.index.json"))
  m = AutoencoderDC.from_pretrained(out).eval()
  for want, got in zip(c.reference(), c.reference(m)):
    np.testing.assert_array_equal(got, want)


def test_spec_works_with_the_generic_pipeline(cases, tmp_path):
  """`convert.pipeline.import_model(SPEC, ...)` (what `python -m convert dc_ae` runs once registered) agrees."""
  from unirl_jax.convert.dc_ae import SPEC
  from unirl_jax.convert.pipeline import import_model
  c = cases["sana_bn"]
  _, params = dc_ae.load(import_model(SPEC, c.src, str(tmp_path / "jax")))
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(c.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def copy_with(src, dst, edit):
  shutil.copytree(src, dst)
  t = edit(tensors(os.path.join(src, "diffusion_pytorch_model.safetensors")))
  save_file(t, os.path.join(dst, "diffusion_pytorch_model.safetensors"))
  return str(dst)


def test_bad_keys_and_shapes_are_named(cases, tmp_path):
  src = cases["default"].src
  key = "encoder.down_blocks.2.0.attn.to_qkv_multiscale.1.proj_in.weight"

  def rename(t):
    t["encoder.down_blocks.2.0.attn.to_qkv_multiscale.1.proj_in.weihgt"] = t.pop(key)
    return t

  def reshape(t):
    t[key] = t[key][:, :, :3, :3].copy()
    return t

  bad = copy_with(src, tmp_path / "renamed", rename)
  with pytest.raises(ConversionError, match="proj_in.weihgt"):
    import_dc_ae(bad, str(tmp_path / "out"))
  bad = copy_with(src, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != key})
  with pytest.raises(ConversionError, match=f"missing keys: '{key}'"):
    import_dc_ae(bad, str(tmp_path / "out"))
  bad = copy_with(src, tmp_path / "reshaped", reshape)
  with pytest.raises(ConversionError, match=rf"{key}.*\(96, 1, 3, 3\).*\(96, 1, 5, 5\)"):
    import_dc_ae(bad, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")  # nothing half-written


def test_bf16_source_and_compute(cases, tmp_path):
  """A pipeline folder whose vae/ holds fp32 and bf16 files; the bf16 variant imported and run in bf16."""
  c = cases["default"]
  pipe = tmp_path / "pipeline"
  shutil.copytree(c.src, pipe / "vae")
  m16 = diffusers_model(c.cfg).to(torch.bfloat16)
  m16.save_pretrained(str(pipe / "vae"), variant="bf16")
  assert os.path.exists(pipe / "vae" / "diffusion_pytorch_model.bf16.safetensors")
  dst = import_dc_ae(str(pipe), str(tmp_path / "jax16"), dtype="bfloat16", variant="bf16")
  model, params = dc_ae.load(dst, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  want = m16.state_dict()["encoder.conv_out.weight"].float().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(np.asarray(params["encoder"]["conv_out"]["kernel"], np.float32), want)
  latent = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, c.x), np.float32)
  sample = np.asarray(jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))(params, c.z), np.float32)
  assert np.isfinite(latent).all() and np.isfinite(sample).all()
  # Reference: the same bf16 weights upcast, run in fp32. bf16 compute drifts by a few percent of the output's
  # magnitude (0.09 on latents of max 2.9, 0.025 on samples of max 1.7); diffusers' own bf16 run drifts as much
  # (0.15, 0.017). Bound: 5% of max |reference| and 1.5x diffusers' drift + 0.01.
  m32 = diffusers_model(c.cfg).to(torch.bfloat16).float()
  ref_latent, ref_sample = c.reference(m32)
  torch_latent, torch_sample = c.reference(m16)
  for got, ref, theirs in ((latent, ref_latent, torch_latent), (sample, ref_sample, torch_sample)):
    err, their_err = np.abs(got - ref).max(), np.abs(theirs - ref).max()
    assert err < 0.05 * np.abs(ref).max() and err < 1.5 * their_err + 0.01, (err, their_err)


def test_sana_preset_matches_diffusers_on_meta_device():
  from diffusers import AutoencoderDC
  cfg = dc_ae.dc_ae_f32c32_sana()
  d = {k: v for k, v in cfg.to_diffusers_dict().items() if not k.startswith("_")}
  with torch.device("meta"):
    m = AutoencoderDC(**d)
  shapes = dc_ae.abstract_params(cfg)
  assert dc_ae.num_params(shapes) == sum(p.numel() for p in m.parameters())
  state = {k: tuple(v.shape) for k, v in m.state_dict().items()}
  flat = {"/".join(k.key for k in path): x.shape for path, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}
  table = {r.hf: default_hf_shape(r, flat[r.path]) for r in rules(cfg)}
  assert table == state and len(table) == len(flat)  # the key table covers exactly diffusers' state dict
  assert cfg.spatial_compression_ratio == 32 and cfg.scaling_factor == 0.41407


def test_batch_norm_buffers_are_params(cases):
  c = cases["sana_bn"]
  state = c.torch.state_dict()
  assert dc_ae.num_params(c.params) == sum(v.numel() for k, v in state.items() if "num_batches_tracked" not in k)
  assert sorted(f"{k}.num_batches_tracked" for k in batch_norm_keys(c.cfg)) == \
      sorted(k for k in state if k.endswith("num_batches_tracked"))
  bn = c.params["decoder"]["up_blocks_0_1"]["norm"]
  assert sorted(bn) == ["bias", "mean", "scale", "var"]
  np.testing.assert_array_equal(np.asarray(bn["var"]), state["decoder.up_blocks.0.1.norm.running_var"].numpy())


def test_config_round_trip_and_validation(tmp_path):
  cfg = dc_ae.tiny(**CASES["sana_bn"])
  assert dc_ae.DCAEConfig.from_diffusers(cfg.to_diffusers_dict()) == cfg
  (tmp_path / "vae").mkdir()
  (tmp_path / "vae" / "config.json").write_text(json.dumps({**cfg.to_diffusers_dict(), "_diffusers_version": "x"}))
  assert dc_ae.DCAEConfig.from_diffusers(str(tmp_path)) == cfg  # a pipeline folder: its vae/
  assert dc_ae.DCAEConfig(decoder_norm_types="batch_norm").decoder_norm_types == ("batch_norm",) * 6
  for kw, msg in [(dict(decoder_norm_types=("rms_norm", "layer_norm", "rms_norm")), "norm_types.1. 'layer_norm'"),
                  (dict(encoder_layers_per_block=(1, 1)), "encoder_layers_per_block has 2"),
                  (dict(decoder_layers_per_block=(1, 0, 1)), "only stage 0 may have 0 layers"),
                  (dict(decoder_act_fns="relu6"), "decoder_act_fns.0. 'relu6'"),
                  (dict(downsample_block_type="pixelunshuffle"), "downsample_block_type"),
                  (dict(latent_channels=3), "divisible by latent_channels 3"),
                  (dict(encoder_qkv_multiscales=((), (), (4,))), "odd"),
                  (dict(encoder_block_types=("ResBlock", "ResBlock", "EViTS5_GLU")), "EViTS5_GLU")]:
    with pytest.raises(ValueError, match=msg):
      dc_ae.tiny(**kw)
  specs = jax.tree.leaves(dc_ae.logical_axes(cfg), is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
  shapes = jax.tree.leaves(dc_ae.abstract_params(cfg))
  assert len(specs) == len(shapes)
  for spec, x in zip(specs, shapes):
    assert len(spec) == x.ndim and set(spec) <= {None, "ae_embed", "ae_mlp", "ae_heads", "ae_io", "norm"}, spec


def test_sharded_batch_equals_single_device(cases):
  """Images split over 8 CPU devices (data x fsdp), params placed by their logical axes."""
  from unirl_jax import sharding
  c = cases["default"]
  mesh = sharding.make_mesh(sharding.MeshConfig(4, 2, 1))
  params = sharding.shard_params(c.params, dc_ae.logical_axes(c.cfg), mesh)
  x = np.concatenate([c.x] * 4)
  z = np.concatenate([c.z] * 4)
  single_x, single_z = np.asarray(c.encode(c.params, x)), np.asarray(c.decode(c.params, z))
  xs, zs = sharding.shard_batch((jnp.asarray(x), jnp.asarray(z)), mesh)
  np.testing.assert_allclose(np.asarray(c.encode(params, xs)), single_x, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(c.decode(params, zs)), single_z, atol=1e-5, rtol=0)


def test_only_variants_present_is_a_clear_error(cases, tmp_path):
  c = cases["default"]
  c.torch.save_pretrained(str(tmp_path / "v"), variant="fp16")
  with pytest.raises(FileNotFoundError, match=r"variants \['fp16'\]: pass one with --variant"):
    import_dc_ae(str(tmp_path / "v"), str(tmp_path / "out"))
  assert dc_ae.load(import_dc_ae(str(tmp_path / "v"), str(tmp_path / "out"), variant="fp16"))[1] is not None
