"""fp32 parity of the JAX Qwen2.5-VL with transformers (eager attention) on a tiny random model."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import image_prompt, left_pad

from unirl_jax.models import qwen2_5_vl

TOL = 1e-4


def hf_logits(hf, ids, mask=None, pv=None, grid=None):
  hf.model.rope_deltas = None  # transformers caches it between calls
  kw = {"input_ids": torch.tensor(ids)}
  if mask is not None:
    kw["attention_mask"] = torch.tensor(mask)
  if pv is not None:
    kw.update(pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid),
              mm_token_type_ids=torch.tensor((ids == hf.config.image_token_id).astype(np.int64)))
  with torch.no_grad():
    return hf(**kw).logits.numpy()


def jax_logits(jm, ids, mask=None, pv=None, grid=None):
  model, params = jm
  return np.asarray(model.apply({"params": params}, input_ids=jnp.asarray(ids),
                                attention_mask=None if mask is None else jnp.asarray(mask),
                                pixel_values=None if pv is None else jnp.asarray(pv), image_grid_thw=grid))


def test_text_only(hf_model, jax_model):
  ids = np.random.RandomState(1).randint(3, 500, size=(2, 12))
  ref, out = hf_logits(hf_model, ids), jax_logits(jax_model, ids)
  assert out.shape == ref.shape == (2, 12, 512)
  np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_one_image(hf_model, jax_model, images):
  pv, grid = images
  cfg = jax_model[0].config
  n0 = int(np.prod(grid[0])) // 4
  ids = np.array([image_prompt(cfg, n0)])
  ref = hf_logits(hf_model, ids, np.ones_like(ids), pv[:int(np.prod(grid[0]))], grid[:1])
  out = jax_logits(jax_model, ids, np.ones_like(ids), pv[:int(np.prod(grid[0]))], grid[:1])
  np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_two_images_of_different_grids_left_padded(hf_model, jax_model, images):
  pv, grid = images
  assert tuple(grid[0]) != tuple(grid[1])
  cfg = jax_model[0].config
  rows = [image_prompt(cfg, int(np.prod(g)) // 4) for g in grid]
  ids, mask = left_pad(rows)
  assert mask.min() == 0  # the rows really differ in length
  ref = hf_logits(hf_model, ids, mask, pv, grid)
  out = jax_logits(jax_model, ids, mask, pv, grid)
  m = mask.astype(bool)
  np.testing.assert_allclose(out[m], ref[m], atol=TOL, rtol=0)


def test_two_images_in_one_row(hf_model, jax_model, images):
  pv, grid = images
  cfg = jax_model[0].config
  ids = np.array([image_prompt(cfg, int(np.prod(grid[0])) // 4, after=(8,)) +
                  image_prompt(cfg, int(np.prod(grid[1])) // 4, before=(9,))])
  np.testing.assert_allclose(jax_logits(jax_model, ids, None, pv, grid),
                             hf_logits(hf_model, ids, np.ones_like(ids), pv, grid), atol=TOL, rtol=0)


def test_left_padded_text(hf_model, jax_model):
  rs = np.random.RandomState(2)
  ids, mask = left_pad([rs.randint(3, 500, 9).tolist(), rs.randint(3, 500, 5).tolist()])
  # transformers' text-only forward ignores the mask for positions; generate() uses cumsum(mask) - 1,
  # which is what get_rope_index gives, so pass those positions to the reference explicitly.
  pos = np.asarray(qwen2_5_vl.get_rope_index(jnp.asarray(ids), None, jnp.asarray(mask), jax_model[0].config)[0])
  with torch.no_grad():
    ref = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   position_ids=torch.tensor(pos)).logits.numpy()
  out = jax_logits(jax_model, ids, mask)
  m = mask.astype(bool)
  np.testing.assert_allclose(out[m], ref[m], atol=TOL, rtol=0)
  # The short row equals the same tokens without padding.
  alone = jax_logits(jax_model, ids[1:, m[1]])
  np.testing.assert_allclose(out[1, m[1]], alone[0], atol=TOL, rtol=0)


def test_vision_tower(hf_model, jax_model, images):
  pv, grid = images
  model, params = jax_model
  with torch.no_grad():
    ref = hf_model.model.visual(torch.tensor(pv), grid_thw=torch.tensor(grid)).pooler_output.numpy()
  out = model.apply({"params": params}, jnp.asarray(pv), grid, method="get_image_features")
  assert out.shape == ref.shape == (int(np.prod(grid, axis=1).sum()) // 4, 64)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_rope_index_matches_transformers(hf_model, jax_model, images, with_mask):
  pv, grid = images
  cfg = jax_model[0].config
  rows = [image_prompt(cfg, int(np.prod(grid[0])) // 4), image_prompt(cfg, int(np.prod(grid[1])) // 4)]
  ids, mask = left_pad(rows)
  if not with_mask:  # equal lengths by extra text after the shorter image: no padding
    n = max(map(len, rows))
    ids, mask = left_pad([r + [7] * (n - len(r)) for r in rows])
    assert mask.min() == 1
  with torch.no_grad():
    ref_pos, ref_delta = hf_model.model.get_rope_index(
        torch.tensor(ids), image_grid_thw=torch.tensor(grid), attention_mask=torch.tensor(mask),
        mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)))
  pos, delta = qwen2_5_vl.get_rope_index(jnp.asarray(ids), grid, jnp.asarray(mask), cfg)
  np.testing.assert_array_equal(np.asarray(pos), ref_pos.numpy())
  np.testing.assert_array_equal(np.asarray(delta), ref_delta.numpy())


def test_plain_1d_positions_switch(jax_model):
  """(B, T) position_ids give the same positions on all three M-RoPE axes."""
  model, params = jax_model
  ids = jnp.asarray(np.random.RandomState(3).randint(3, 500, size=(1, 6)))
  a = model.apply({"params": params}, input_ids=ids, position_ids=jnp.arange(6)[None])
  b = model.apply({"params": params}, input_ids=ids, position_ids=jnp.broadcast_to(jnp.arange(6), (3, 1, 6)))
  c = model.apply({"params": params}, input_ids=ids, position_ids=jnp.arange(6)[None] * 2)  # rope is shift-invariant
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_image_token_count_mismatch_is_a_clear_error(jax_model, images):
  model, params = jax_model
  pv, grid = images
  ids = np.array([image_prompt(model.config, 3)])
  with pytest.raises(ValueError, match="Image features and image tokens do not match"):
    model.apply({"params": params}, input_ids=jnp.asarray(ids), pixel_values=jnp.asarray(pv), image_grid_thw=grid)


def test_bfloat16_error_is_no_worse_than_transformers_bf16(hf_dir, jax_model, images):
  """bf16 activations (params cast per matmul, as Flax does) drift from fp32 no more than transformers in bf16."""
  from transformers import Qwen2_5_VLForConditionalGeneration
  model, params = jax_model
  pv, grid = images
  cfg = model.config
  ids, mask = left_pad([image_prompt(cfg, int(np.prod(g)) // 4) for g in grid])
  kw = dict(input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask), pixel_values=jnp.asarray(pv),
            image_grid_thw=grid)
  ref = np.asarray(model.apply({"params": params}, **kw))
  out = qwen2_5_vl.Qwen2_5_VL(cfg.replace(dtype="bfloat16")).apply({"params": params}, **kw)
  assert out.dtype == jnp.bfloat16
  out = np.asarray(out.astype(jnp.float32))
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager",
                                                          dtype=torch.bfloat16).eval()
  with torch.no_grad():
    hf_out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                pixel_values=torch.tensor(pv, dtype=torch.bfloat16), image_grid_thw=torch.tensor(grid),
                mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64))).logits.float().numpy()
  m = mask.astype(bool)
  ours_err, hf_err = np.abs(out[m] - ref[m]).max(), np.abs(hf_out[m] - ref[m]).max()
  assert np.isfinite(out).all() and 0 < ours_err <= 1.5 * hf_err, (ours_err, hf_err)
