"""`python -m convert unirl`: a UniRL-layout checkpoint built here from torch modules, the round trip, errors,
and assembling a unified checkpoint from separately converted parts."""

import copy
import json
import os

import numpy as np
import pytest
import torch

from convert.__main__ import main as convert_main
from unirl_jax.convert.pipeline import import_kind, write_sharded
from unirl_jax.convert.safetensors_io import SafetensorsDir, save_file
from unirl_jax.convert.table import flatten
from unirl_jax.models import dc_ae, qwen2_5_vl, sana, unified


def tensors(path):
  r = SafetensorsDir(path)
  return {k: np.array(r.get(k)) for k in r.keys()}


def assert_tree_equal(a, b):
  fa, fb = flatten(a), flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def write_unirl(path, state, config_from):
  """A UniRL folder: the tensors (several shards + index) and the LM's config.json and side files."""
  os.makedirs(path)
  write_sharded(state, str(path), max_shard_bytes=100_000)
  for name in ("config.json", "generation_config.json"):
    with open(os.path.join(config_from, name)) as f, open(os.path.join(path, name), "w") as g:
      g.write(f.read())
  return str(path)


@pytest.fixture(scope="module")
def src(hf_dir, jax_dir, tmp_path_factory):
  """The UniRL folder, its torch-side pieces, and each part converted on its own."""
  from test_connector import torch_connector
  from test_dc_ae import diffusers_model as torch_dc_ae
  from test_sana import diffusers_model as torch_sana
  tmp = tmp_path_factory.mktemp("unirl")
  cfg = unified.tiny()
  dit = torch_sana(cfg.dit, seed=1)
  dit.save_pretrained(tmp / "dit_plain")
  ref_patch_embed, ref_linear = copy.deepcopy(dit.patch_embed), torch.nn.Linear(cfg.dit.inner_dim, cfg.dit.inner_dim)
  with torch.no_grad():
    for p in list(ref_patch_embed.parameters()) + list(ref_linear.parameters()):
      p.add_(0.2 * torch.randn_like(p))
  dit_sd = {**dit.state_dict(), **{f"ref_patch_embed.{k}": v for k, v in ref_patch_embed.state_dict().items()},
            **{f"ref_linear.{k}": v for k, v in ref_linear.state_dict().items()}}
  dit.save_pretrained(tmp / "dit")
  save_file({k: v.numpy() for k, v in dit_sd.items()}, str(tmp / "dit" / "diffusion_pytorch_model.safetensors"))
  vae = torch_dc_ae(cfg.vae, seed=2)
  vae.save_pretrained(tmp / "vae")
  conn = torch_connector(cfg.connector, seed=3)
  queries = {t: torch.randn(1, cfg.num_queries, cfg.lm.text.hidden_size) for t in ("t2i", "i2i")}
  state = {**tensors(hf_dir), **{f"model.{t}_queries": q.numpy() for t, q in queries.items()},
           **{f"model.down_projector.{k}": v.numpy() for k, v in conn.state_dict().items()},
           **{f"model.dit.{k}": v.numpy() for k, v in dit_sd.items()},
           **{f"model.gen_vision_tower.autoencoder.{k}": v.numpy() for k, v in vae.state_dict().items()}}
  parts = {"lm": jax_dir, "dit": import_kind("sana", str(tmp / "dit"), str(tmp / "dit_jax")),
           "dit_plain": import_kind("sana", str(tmp / "dit_plain"), str(tmp / "dit_plain_jax")),
           "vae": import_kind("dc_ae", str(tmp / "vae"), str(tmp / "vae_jax"))}
  return dict(dir=write_unirl(tmp / "src", state, hf_dir), state=state, tmp=tmp, parts=parts, cfg=cfg,
              conn=conn, queries=queries, flags=["--dit-config", str(tmp / "dit"),
                                                 "--vae-config", str(tmp / "vae" / "config.json")])


@pytest.fixture(scope="module")
def converted(src):
  dst = str(src["tmp"] / "converted")
  assert convert_main(["unirl", "--src", src["dir"], "--dst", dst, *src["flags"]]) == 0
  return dst


def test_conversion_equals_the_parts(src, converted):
  from unirl_jax.convert.connector import connector_params
  model, params = unified.load(converted)
  assert model.config.connector == src["cfg"].connector and model.config.num_queries == src["cfg"].num_queries
  assert model.config.dit == src["cfg"].dit and model.config.vae == src["cfg"].vae
  assert_tree_equal(params["lm"], qwen2_5_vl.load(src["parts"]["lm"])[1])
  assert_tree_equal(params["dit"], sana.load(src["parts"]["dit"])[1])
  assert_tree_equal(params["vae"], dc_ae.load(src["parts"]["vae"])[1])
  sd = {k: v.numpy() for k, v in src["conn"].state_dict().items()}
  assert_tree_equal(params["connector"], connector_params(sd, src["cfg"].connector))
  for t, q in src["queries"].items():
    np.testing.assert_array_equal(np.asarray(params[f"{t}_queries"]), q.numpy())
  assert os.path.exists(os.path.join(converted, "generation_config.json"))


def test_round_trip_is_bit_exact(src, converted, tmp_path):
  back = str(tmp_path / "back")
  assert convert_main(["export", "unirl", "--src", converted, "--dst", back]) == 0
  got = tensors(back)
  assert sorted(got) == sorted(src["state"])
  for k, v in src["state"].items():
    assert got[k].dtype == v.dtype, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  for name in ("config.json", "generation_config.json"):
    with open(os.path.join(back, name)) as f, open(os.path.join(src["dir"], name)) as g:
      assert json.load(f) == json.load(g)


def test_in_memory_lm_key_layout(src, converted, tmp_path):
  """transformers >= 4.52 names: model.language_model.* and model.visual.*."""
  def rename(k):
    if k.startswith("visual."):
      return "model." + k
    return "model.language_model." + k[len("model."):] if k.startswith(("model.layers.", "model.embed_tokens",
                                                                          "model.norm.")) else k
  state = {rename(k): v for k, v in src["state"].items()}
  assert "model.language_model.layers.0.mlp.up_proj.weight" in state and "model.visual.merger.ln_q.weight" in state
  d = write_unirl(tmp_path / "v5", state, src["dir"])
  assert convert_main(["unirl", "--src", d, "--dst", str(tmp_path / "out"), *src["flags"]]) == 0
  assert_tree_equal(unified.load(str(tmp_path / "out"))[1], unified.load(converted)[1])


def edited(state, drop=(), **replace):
  out = {k: v for k, v in state.items() if k not in drop}
  out.update(replace)
  return out


@pytest.mark.parametrize("case, message", [
    ("shape", "key 'model.dit.ref_linear.weight': checkpoint shape (16, 17)"),
    ("missing", "missing keys: 'model.i2i_queries'"),
    ("unexpected", "unexpected keys (no param for them): 'model.extra.weight'"),
    ("connector_width", "key 'model.down_projector.output_linear.weight': checkpoint shape (13, 64)"),
    ("no_dit_config", "channels 32/32 != vae latent channels 4 (the DiT is read as SANA-1600M: pass --dit-config"),
])
def test_bad_checkpoints_name_the_key_and_write_nothing(src, tmp_path, capsys, case, message):
  s = src["state"]
  state = {"shape": lambda: edited(s, **{"model.dit.ref_linear.weight": np.zeros((16, 17), np.float32)}),
           "missing": lambda: edited(s, drop=("model.i2i_queries",)),
           "unexpected": lambda: edited(s, **{"model.extra.weight": np.zeros(3, np.float32)}),
           "connector_width": lambda: edited(s, **{"model.down_projector.output_linear.weight":
                                                   np.zeros((13, 64), np.float32)}),
           "no_dit_config": lambda: s}[case]()
  d = write_unirl(tmp_path / "src", state, src["dir"])
  flags = src["flags"][2:] if case == "no_dit_config" else src["flags"]
  assert convert_main(["unirl", "--src", d, "--dst", str(tmp_path / "out"), *flags]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err, err
  assert not (tmp_path / "out").exists()
  assert [n for n in os.listdir(tmp_path) if n.startswith(".out")] == []


def test_assembly_from_parts(src, tmp_path, capsys):
  parts = src["parts"]
  dst = str(tmp_path / "assembled")
  assert convert_main(["unirl", "--lm", parts["lm"], "--dit", parts["dit_plain"], "--vae", parts["vae"],
                       "--dst", dst, "--seed", "1", "--vocab-size", "510"]) == 0
  out = capsys.readouterr().out
  assert "truncating the LM vocabulary from 512 to 510 rows" in out and "adding one" in out
  model, params = unified.load(dst)
  cfg = model.config
  assert cfg.lm.text.vocab_size == 510 and cfg.num_queries == 256 and cfg.connector.num_layers == 12
  assert (cfg.connector.hidden_size, cfg.connector.out_dim) == (64, src["cfg"].dit.caption_channels)
  lm = qwen2_5_vl.load(parts["lm"])[1]
  emb = lm["language_model"].pop("embed_tokens")["embedding"]
  got_emb = params["lm"]["language_model"].pop("embed_tokens")["embedding"]
  np.testing.assert_array_equal(np.asarray(got_emb), np.asarray(emb)[:510])
  assert_tree_equal(params["lm"], lm)
  assert_tree_equal(params["vae"], dc_ae.load(parts["vae"])[1])
  dit = params["dit"]
  assert_tree_equal({k: v for k, v in dit.items() if not k.startswith("ref_")}, sana.load(parts["dit_plain"])[1])
  assert_tree_equal(dit["ref_patch_embed"], dit["patch_embed"])
  assert not np.any(np.asarray(dit["ref_linear"]["kernel"])) and not np.any(np.asarray(dit["ref_linear"]["bias"]))
  for t in ("t2i", "i2i"):
    q = np.asarray(params[f"{t}_queries"])
    assert q.shape == (1, 256, 64) and abs(q.std() - 1) < 0.03 and abs(q.mean()) < 0.03
  assert not np.array_equal(np.asarray(params["t2i_queries"]), np.asarray(params["i2i_queries"]))
  assert os.path.exists(os.path.join(dst, "generation_config.json"))


@pytest.mark.parametrize("flags, message", [
    (["--lm", "{dit}", "--dit", "{dit}", "--vae", "{vae}"], "holds a 'sana' checkpoint, not 'qwen2_5_vl'"),
    (["--lm", "{lm}", "--dit", "{dit}", "--vae", "{vae}", "--vocab-size", "600"], "exceeds the LM's 512 rows"),
    (["--lm", "{lm}", "--dit", "{dit}"], "all of --lm, --dit and --vae"),
    (["--src", "{lm}", "--lm", "{lm}", "--dit", "{dit}", "--vae", "{vae}"], "not both"),
])
def test_assembly_errors(src, tmp_path, capsys, flags, message):
  p = src["parts"]
  flags = [f.format(lm=p["lm"], dit=p["dit_plain"], vae=p["vae"]) for f in flags]
  assert convert_main(["unirl", *flags, "--dst", str(tmp_path / "out")]) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


def test_real_size_table_matches_the_torch_modules():
  """The composed table at UniRL's real sizes gives exactly the keys and shapes of the torch modules (meta device)."""
  from diffusers import AutoencoderDC, SanaTransformer2DModel
  from test_connector import TorchConnector
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

  from unirl_jax.convert import qwen2_5_vl as qwen_rules
  from unirl_jax.convert import unirl
  cfg = unified.unirl_zero_3b_1600m()
  exported = unirl.to_hf(unified.UnifiedModel(cfg).abstract_params(), unirl.rules(cfg), unirl.hf_shape(cfg))
  want = {"model.t2i_queries": (1, 256, 2048), "model.i2i_queries": (1, 256, 2048)}
  with torch.device("meta"):
    lm = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg.lm.to_hf_dict()))
    dit = SanaTransformer2DModel(**{k: v for k, v in cfg.dit.to_diffusers_dict().items() if k[0] != "_"})
    dit.ref_patch_embed, dit.ref_linear = copy.deepcopy(dit.patch_embed), torch.nn.Linear(2240, 2240)
    vae = AutoencoderDC(**{k: v for k, v in cfg.vae.to_diffusers_dict().items() if k[0] != "_"})
    conn = TorchConnector(cfg.connector)
  for prefix, m in (("", lm), (unirl.DIT, dit), (unirl.VAE, vae), (unirl.CONNECTOR, conn)):
    want.update({prefix + qwen_rules.canonical_key(k): tuple(v.shape) for k, v in m.state_dict().items()})
  want.pop("lm_head.weight")  # tied
  assert want["model.embed_tokens.weight"] == (151668, 2048)
  assert want["model.down_projector.output_linear.weight"] == (2304, 2048)
  assert {k: tuple(v.shape) for k, v in exported.items()} == want
