"""CLIP against transformers' `CLIPModel` on a tiny random config (random biases and norms, 30 px images, padded
text): embeddings within 1e-5 through `python -m convert clip`, the export bit-exact, and the CLIP rewards
against the same formulas computed with transformers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unirl_jax.convert.pipeline import export_kind, import_kind
from unirl_jax.models import clip
from unirl_jax.rewards import clip as clip_rewards

from conftest import randomize_biases_and_norms

TOL = dict(rtol=1e-5, atol=1e-5)


def hf_model(cfg: clip.CLIPConfig, seed=0):
  from transformers import CLIPConfig, CLIPModel
  torch.manual_seed(seed)
  m = CLIPModel(CLIPConfig(**cfg.to_hf_dict())).eval()
  with torch.no_grad():  # random class / position embeddings and a non-default temperature
    m.vision_model.embeddings.class_embedding.normal_()
    m.logit_scale.fill_(3.1)
  return randomize_biases_and_norms(m, seed)


def text_batch(cfg: clip.CLIPConfig):
  """Three prompts of different lengths, right-padded with pad_token_id after their end-of-text token."""
  t = cfg.text
  rng = np.random.default_rng(0)
  ids = np.full((3, 9), t.pad_token_id, np.int64)
  mask = np.zeros((3, 9), np.int64)
  for row, n in enumerate((9, 5, 3)):
    ids[row, :n] = [t.bos_token_id, *rng.integers(3, 90, n - 2), t.eos_token_id]
    mask[row, :n] = 1
  return ids, mask


CAPTIONS = ("a red circle", "a blue square on grey", "two green triangles", "a circle")


def save_tokenizer_and_processor(path: str, cfg: clip.CLIPConfig):
  """A word-level tokenizer over CAPTIONS' words (CLIP's bos/eos/pad ids) and a 30 px CLIP image processor."""
  from unirl_jax import clip_fit
  clip_fit.write_processors(path, cfg, clip_fit.word_tokenizer({w for c in CAPTIONS for w in c.split()}, cfg.text))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  cfg = clip.tiny()
  m = hf_model(cfg)
  root = tmp_path_factory.mktemp("clip")
  m.save_pretrained(root / "hf")
  save_tokenizer_and_processor(str(root / "hf"), cfg)
  import_kind("clip", str(root / "hf"), str(root / "jax"))
  model, params = clip.load(str(root / "jax"))
  return m, model, params, root


def test_embeddings_match_transformers(converted):
  m, model, params, _ = converted
  cfg = model.config
  pixels = np.random.default_rng(1).normal(size=(2, 3, 30, 30)).astype(np.float32)
  ids, mask = text_batch(cfg)
  with torch.no_grad():
    want_img = m.get_image_features(pixel_values=torch.from_numpy(pixels))
    want_txt = m.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
  want_img = getattr(want_img, "pooler_output", want_img).numpy()
  want_txt = getattr(want_txt, "pooler_output", want_txt).numpy()
  img = model.apply({"params": params}, jnp.asarray(pixels), method="image_features")
  txt = model.apply({"params": params}, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                    method="text_features")
  np.testing.assert_allclose(np.asarray(img), want_img, **TOL)
  np.testing.assert_allclose(np.asarray(txt), want_txt, **TOL)
  assert float(params["logit_scale"]) == pytest.approx(3.1)


def test_legacy_eos_id_pools_at_the_largest_id():
  """Configs from before transformers#24773 have eos_token_id 2 and pool where the id is largest."""
  cfg = clip.tiny()
  cfg = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "eos_token_id": 2}))
  m = hf_model(cfg, seed=1)
  params = clip.init_params(cfg)
  from unirl_jax.convert.table import flatten, to_params
  sd = {k: v.numpy() for k, v in m.state_dict().items()}
  from unirl_jax.convert import clip as clip_convert
  expected = {k: v.shape for k, v in flatten(clip.abstract_params(cfg)).items()}
  params = to_params(list(sd), sd.__getitem__, clip_convert.RULES, expected, np.float32,
                     skip=clip_convert.SPEC.skip(cfg))
  ids = np.array([[97, 5, 98, 40, 0], [97, 91, 4, 3, 0]])  # the largest id sits mid-sequence in both rows
  with torch.no_grad():
    want = m.get_text_features(input_ids=torch.from_numpy(ids))
  want = getattr(want, "pooler_output", want).numpy()
  got = clip.CLIP(cfg).apply({"params": params}, jnp.asarray(ids, jnp.int32), method="text_features")
  np.testing.assert_allclose(np.asarray(got), want, **TOL)


def test_export_round_trip_is_bit_exact(converted):
  m, _, _, root = converted
  export_kind("clip", str(root / "jax"), str(root / "back"))
  from safetensors.numpy import load_file
  back = load_file(os.path.join(root / "back", "model.safetensors"))
  want = {k: v.numpy() for k, v in m.state_dict().items() if not k.endswith("position_ids")}
  assert set(back) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def _cos(a, b):
  return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_rewards_equal_the_formulas_in_transformers(converted):
  m, model, params, _ = converted
  rng = np.random.default_rng(2)
  src, edit, recon = (rng.normal(size=(3, 3, 30, 30)).astype(np.float32) for _ in range(3))
  edit[2] = src[2]  # a no-op edit: zero image direction, cosine 0 as in torch
  ids, mask = text_batch(model.config)
  tgt_ids, tgt_mask = ids[::-1].copy(), mask[::-1].copy()
  t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  feats = lambda f: getattr(f, "pooler_output", f)
  with torch.no_grad():
    img = lambda x: torch.nn.functional.normalize(feats(m.get_image_features(pixel_values=t(x))), dim=-1)
    txt = lambda i, k: torch.nn.functional.normalize(feats(m.get_text_features(input_ids=t(i), attention_mask=t(k))),
                                                     dim=-1)
    want_dir = _cos(img(edit) - img(src), txt(tgt_ids, tgt_mask) - txt(ids, mask)).numpy()
    want_sim = _cos(img(recon), img(src)).numpy()
    want_score = (img(edit) * txt(ids, mask)).sum(-1).numpy()
    want_pick = (m.logit_scale.exp() * (img(edit) * txt(ids, mask)).sum(-1) / 26).numpy()
  s = clip_rewards.Scorer(model, params)
  j = lambda a: jnp.asarray(a)
  i32 = lambda a: jnp.asarray(a, jnp.int32)
  np.testing.assert_allclose(s.direction(j(src), j(edit), i32(ids), i32(mask), i32(tgt_ids), i32(tgt_mask)),
                             want_dir, **TOL)
  assert want_dir[2] == 0
  np.testing.assert_allclose(s.image_similarity(j(recon), j(src)), want_sim, **TOL)
  np.testing.assert_allclose(s.text_image(j(edit), i32(ids), i32(mask)), want_score, **TOL)
  np.testing.assert_allclose(s.text_image(j(edit), i32(ids), i32(mask), pickscore=True), want_pick, **TOL)


def test_presets_have_the_published_parameter_counts():
  """openai/clip-vit-large-patch14 and laion/CLIP-ViT-H-14-laion2B-s32B-b79K, counted without allocating."""
  from unirl_jax.models import param_utils
  assert param_utils.num_params(clip.abstract_params(clip.vit_l_14())) == 427_616_513
  assert param_utils.num_params(clip.abstract_params(clip.vit_h_14())) == 986_109_441


def test_preprocessor_with_a_clip_tokenizer_and_image_processor(tmp_path):
  """`rewards.clip.Preprocessor` on a converted dir holding a CLIP tokenizer (end-of-text doubles as the pad, as
  in openai's) and the PIL CLIP image processor: the embeddings of raw captions and uint8 images equal
  transformers' on the same processor outputs."""
  import string
  from transformers import CLIPImageProcessorPil, CLIPTokenizer
  vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
  for suffix in ("", "</w>"):
    vocab.update({c + suffix: len(vocab) + i for i, c in enumerate(string.ascii_lowercase)})
  tok = CLIPTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>")
  cfg = clip.tiny()
  cfg = cfg.replace(text=clip.TextConfig(32, 64, 2, 4, vocab_size=99, max_position_embeddings=16, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1))
  m = hf_model(cfg, seed=3)
  m.save_pretrained(tmp_path / "hf")
  tok.save_pretrained(tmp_path / "hf")
  CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
      tmp_path / "hf")
  import_kind("clip", str(tmp_path / "hf"), str(tmp_path / "jax"))
  model, params = clip.load(str(tmp_path / "jax"))
  pre = clip_rewards.Preprocessor(str(tmp_path / "jax"), max_length=16)
  images = np.random.default_rng(0).integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
  captions = ["a red cat", "two dogs on grass"]
  pixels, (ids, mask) = pre.pixels(images), pre.text(captions)
  assert pixels.shape == (2, 3, 30, 30) and ids.shape == (2, 16) and (ids[:, -1] == 1).all()  # padded with eos
  s = clip_rewards.Scorer(model, params)
  with torch.no_grad():
    out = m.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)),
                              attention_mask=torch.from_numpy(mask.astype(np.int64)))
  want = torch.nn.functional.normalize(getattr(out, "pooler_output", out), dim=-1).numpy()
  np.testing.assert_allclose(np.asarray(s.text_embeds(jnp.asarray(ids), jnp.asarray(mask))), want, **TOL)
  from PIL import Image
  ref = CLIPImageProcessorPil.from_pretrained(str(tmp_path / "hf"))
  want_px = ref(images=[Image.fromarray(x) for x in images], return_tensors="np")["pixel_values"]
  np.testing.assert_array_equal(pixels, want_px)


def _edit_inputs():
  from unirl_jax import rewards
  rng = np.random.default_rng(3)
  images, src, recon = (rng.integers(0, 256, (3, 40, 36, 3), dtype=np.uint8) for _ in range(3))
  meta = [{"caption": CAPTIONS[i], "target_caption": CAPTIONS[i + 1]} for i in range(3)]
  return rewards.RewardInputs(images, list(CAPTIONS[:3]), metadata=meta, sources=src, reconstructions=recon)


def test_registered_clip_rewards_equal_transformers_from_images_and_captions(converted):
  """`clip_rewards` / `serve --clip`: uint8 images and captions through transformers' processor and tokenizer
  (read from the converted dir), each reward against the same formula computed with transformers."""
  from transformers import AutoTokenizer, CLIPImageProcessorPil
  m, model, _, root = converted
  inputs = _edit_inputs()
  fns = clip_rewards.from_config([(k, str(root / "jax")) for k in clip_rewards.KINDS])
  proc = CLIPImageProcessorPil.from_pretrained(str(root / "hf"))
  tok = AutoTokenizer.from_pretrained(str(root / "hf"))
  pix = lambda x: torch.from_numpy(np.asarray(proc(images=list(x), return_tensors="np")["pixel_values"]))
  feats = lambda f: getattr(f, "pooler_output", f)
  n = model.config.text.max_position_embeddings

  def txt(captions):
    enc = tok(list(captions), padding="max_length", max_length=n, return_tensors="pt")
    return torch.nn.functional.normalize(feats(m.get_text_features(**enc)), dim=-1)

  with torch.no_grad():
    img = lambda x: torch.nn.functional.normalize(feats(m.get_image_features(pixel_values=pix(x))), dim=-1)
    score = (img(inputs.images) * txt(inputs.prompts)).sum(-1)
    want = {"clip_score": score.numpy(), "pickscore": (m.logit_scale.exp() * score / 26).numpy(),
            "clip_direction": _cos(img(inputs.images) - img(inputs.sources),
                                   txt([r["target_caption"] for r in inputs.metadata])
                                   - txt([r["caption"] for r in inputs.metadata])).numpy(),
            "clip_image_similarity": _cos(img(inputs.reconstructions), img(inputs.sources)).numpy(),
            "clip_cycle_gain": (_cos(img(inputs.reconstructions), img(inputs.sources))
                                - _cos(img(inputs.images), img(inputs.sources))).numpy(),
            "clip_reverse_direction": _cos(img(inputs.reconstructions) - img(inputs.images),
                                           txt([r["caption"] for r in inputs.metadata])
                                           - txt([r["target_caption"] for r in inputs.metadata])).numpy()}
  assert set(fns) == set(want)
  for kind, fn in fns.items():
    np.testing.assert_allclose(fn(inputs), want[kind], err_msg=kind, **TOL)
  chunked = clip_rewards.reward("clip_direction", str(root / "jax"), chunk=2)  # 2 + a padded 1
  np.testing.assert_allclose(chunked(inputs), want["clip_direction"], **TOL)


def test_clip_rewards_name_what_is_missing(converted, tmp_path, capsys):
  import dataclasses
  from unirl_jax import run_config
  from unirl_jax.rewards import serve
  root = str(converted[3] / "jax")
  inputs = _edit_inputs()
  fns = clip_rewards.from_config([("clip_direction", root), ("clip_image_similarity", root)])
  bad = dataclasses.replace(inputs, metadata=[*inputs.metadata[:2], {"caption": "a circle"}])
  with pytest.raises(ValueError, match="'clip_direction' needs .*row 2 has no 'target_caption'"):
    fns["clip_direction"](bad)
  with pytest.raises(ValueError, match="'clip_image_similarity' needs `reconstructions`"):
    fns["clip_image_similarity"](dataclasses.replace(inputs, reconstructions=None))
  with pytest.raises(FileNotFoundError, match="clip_rewards.clip_score: .* has no config.json"):
    clip_rewards.from_config([("clip_score", str(tmp_path))])
  with pytest.raises(run_config.ConfigError, match="clip_rewards.clip_dir: not a CLIP reward"):
    run_config.GRPORun(clip_rewards={"clip_dir": root})
  with pytest.raises(run_config.ConfigError, match="'clip_score' is in both"):
    run_config.GRPORun(clip_rewards={"clip_score": root}, remote_rewards={"clip_score": "http://h:1/"})
  run = run_config.GRPORun(clip_rewards={"clip_score": root}, reward="clip_score:2,jpeg_compressibility")
  assert run.clip_rewards == (("clip_score", root),)
  assert serve.main(["--reward", "jpeg_compressibility", "--clip", root]) == 2
  assert "give --reward one of ['clip_cycle_gain', 'clip_direction'" in capsys.readouterr().err
  assert serve.main(["--reward", "clip_score", "--clip", str(tmp_path)]) == 2
  assert "has no config.json" in capsys.readouterr().err
