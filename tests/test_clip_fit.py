"""The shapes CLIP (`python -m unirl_jax.clip_fit`): its contrastive loss against the formula written with
transformers' CLIPModel, a short fit that learns, and the saved dir scoring like any converted CLIP."""

import numpy as np
import pytest
import torch

from unirl_jax import clip_fit, rewards
from unirl_jax.models import clip
from unirl_jax.rewards import clip as clip_rewards


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  cfg = clip_fit.shapes_config()
  tok = clip_fit.word_tokenizer(clip_fit.shapes_vocabulary(), cfg.text)
  images, captions = clip_fit.shapes_data(256, cfg.vision.image_size, seed=0)
  x, ids, mask = clip_fit.inputs(cfg, tok, images, captions)
  params, losses = clip_fit.fit(cfg, x, ids, mask, steps=150, batch=32)
  out = clip_fit.save(str(tmp_path_factory.mktemp("clip") / "shapes_clip"), cfg, params, tok)
  return cfg, params, losses, out, (images, captions, x, ids, mask)


def test_every_caption_word_is_in_the_vocabulary(fitted):
  cfg, _, _, _, (_, captions, _, ids, mask) = fitted
  assert not np.any((ids == 1) & (mask == 1))  # no <unk>
  assert (ids[:, 0] == cfg.text.bos_token_id).all()
  assert (np.take_along_axis(ids, mask.sum(1, keepdims=True) - 1, 1) == cfg.text.eos_token_id).all()


def test_contrastive_loss_equals_transformers(fitted):
  from transformers import CLIPModel
  cfg, params, _, out, (_, _, x, ids, mask) = fitted
  from unirl_jax.convert.pipeline import export_kind
  export_kind("clip", out, out + "_hf")
  m = CLIPModel.from_pretrained(out + "_hf").eval()
  with torch.no_grad():
    o = m(input_ids=torch.from_numpy(ids[:16].astype(np.int64)), attention_mask=torch.from_numpy(mask[:16]),
          pixel_values=torch.from_numpy(x[:16]), return_loss=True)
  got = clip_fit.contrastive_loss(clip.CLIP(cfg), params, x[:16], ids[:16], mask[:16])
  np.testing.assert_allclose(float(got), float(o.loss), rtol=1e-5)


def test_a_short_fit_learns_and_the_saved_dir_scores_with_the_fitted_params(fitted):
  cfg, params, losses, out, (images, captions, x, ids, mask) = fitted
  assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10])  # from ln(32) = 3.47
  score = clip_rewards.from_config([("clip_score", out)])["clip_score"]
  imgs = np.stack(images[:32])
  right = score(rewards.RewardInputs(imgs, captions[:32]))
  model = clip.CLIP(cfg)
  want = np.sum(np.asarray(clip.normalize(model.apply({"params": params}, x[:32], method="image_features")))
                * np.asarray(clip.normalize(model.apply({"params": params}, ids[:32], mask[:32],
                                                        method="text_features"))), -1)
  np.testing.assert_allclose(right, want, rtol=1e-5, atol=1e-6)
  wrong = score(rewards.RewardInputs(imgs, captions[2:34]))  # another record's caption
  assert np.mean(right > wrong) > 0.7


def test_noise_augmentation_draws_one_std_per_image_and_reaches_the_fit(fitted):
  """`augment` adds N(0, s_i^2) with s_i ~ U(0, noise) per image; fit(noise > 0) trains on such batches (the
  python -m unirl_jax.clip_fit default), fit(noise=0) on the clean ones."""
  import jax
  cfg, _, _, _, (_, _, x, ids, mask) = fitted
  base = np.zeros((512, 3, 32, 32), np.float32)
  out = np.asarray(clip_fit.augment(base, jax.random.PRNGKey(0), 0.8))
  std = out.reshape(512, -1).std(1)
  assert std.max() < 0.84 and std.min() < 0.1 and abs(std.mean() - 0.4) < 0.05  # U(0, 0.8): mean 0.4
  np.testing.assert_allclose(out.reshape(512, -1).mean(1), 0, atol=0.05)
  flat = lambda p: np.concatenate([np.ravel(v) for v in jax.tree.leaves(p)])
  run = lambda noise: flat(clip_fit.fit(cfg, x[:64], ids[:64], mask[:64], steps=2, batch=32, noise=noise)[0])
  clean = run(0.0)
  np.testing.assert_array_equal(clean, run(0.0))
  assert np.abs(run(0.8) - clean).max() > 1e-6
  assert clip_fit.NOISE > 0
