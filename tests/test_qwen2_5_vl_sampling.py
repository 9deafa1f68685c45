"""KV-cache decoding and the jitted sampler against full forwards and transformers `generate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import image_prompt, left_pad

from unirl_jax.models import qwen2_5_vl
from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig, filter_logits, generate


@pytest.fixture(scope="module")
def batch(jax_model, images):
  pv, grid = images
  rows = [image_prompt(jax_model[0].config, int(np.prod(g)) // 4) for g in grid]
  rows[1] = [11, 12, 13, 14] + rows[1]  # different lengths -> left padding
  ids, mask = left_pad(rows)
  return ids, mask, pv, grid


def test_greedy_matches_transformers_generate(hf_model, jax_model, batch):
  ids, mask, pv, grid = batch
  model, params = jax_model
  out = generate(model, params, ids, mask, jnp.asarray(pv), grid, greedy=True, max_new_tokens=20)
  hf_model.model.rope_deltas = None
  with torch.no_grad():
    ref = hf_model.generate(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pv),
        image_grid_thw=torch.tensor(grid), mm_token_type_ids=torch.tensor((ids == 505).astype(np.int64)),
        max_new_tokens=20, do_sample=False, eos_token_id=2, pad_token_id=0)[:, ids.shape[1]:].numpy()
  ref = np.pad(ref, ((0, 0), (0, 20 - ref.shape[1])))
  tokens = np.asarray(out["tokens"])
  assert len(set(tokens.reshape(-1).tolist())) > 3, "degenerate test: the model repeats one token"
  np.testing.assert_array_equal(tokens, ref)


def test_text_only_greedy_matches_transformers(hf_model, jax_model):
  rs = np.random.RandomState(4)
  ids, mask = left_pad([rs.randint(3, 500, 7).tolist(), rs.randint(3, 500, 4).tolist()])
  model, params = jax_model
  out = generate(model, params, ids, mask, greedy=True, max_new_tokens=20)
  with torch.no_grad():
    ref = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20,
                            do_sample=False, eos_token_id=2, pad_token_id=0)[:, ids.shape[1]:].numpy()
  np.testing.assert_array_equal(np.asarray(out["tokens"]), np.pad(ref, ((0, 0), (0, 20 - ref.shape[1]))))


def test_cached_decode_equals_full_forward(jax_model, batch):
  """Prefill + one-token cached steps give the logits of a full forward at every position."""
  ids, mask, pv, grid = batch
  model, params = jax_model
  cfg = model.config
  new = np.random.RandomState(5).randint(3, 500, size=(2, 6))
  full_ids = np.concatenate([ids, new], 1)
  full_mask = np.concatenate([mask, np.ones_like(new)], 1)
  pos, _ = qwen2_5_vl.get_rope_index(jnp.asarray(full_ids), grid, jnp.asarray(full_mask), cfg)
  full = np.asarray(model.apply({"params": params}, input_ids=jnp.asarray(full_ids),
                                attention_mask=jnp.asarray(full_mask), pixel_values=jnp.asarray(pv),
                                image_grid_thw=grid, position_ids=pos))
  t = ids.shape[1]
  cache = qwen2_5_vl.init_cache(cfg, 2, t + new.shape[1])
  logits, cache = model.apply({"params": params}, input_ids=jnp.asarray(ids), attention_mask=jnp.asarray(mask),
                              pixel_values=jnp.asarray(pv), image_grid_thw=grid, position_ids=pos[:, :, :t],
                              cache=cache)
  steps = [np.asarray(logits)]
  step = jax.jit(lambda p, tok, ps, c: model.apply({"params": p}, input_ids=tok, position_ids=ps, cache=c,
                                                   attention_mask=jnp.ones(tok.shape, bool)))
  for i in range(new.shape[1]):
    logits, cache = step(params, jnp.asarray(new[:, i:i + 1]), pos[:, :, t + i:t + i + 1], cache)
    steps.append(np.asarray(logits))
  cached = np.concatenate(steps, 1)
  m = full_mask.astype(bool)
  np.testing.assert_allclose(cached[m], full[m], atol=1e-4, rtol=0)
  assert int(cache["index"]) == full_ids.shape[1]


def test_logprobs_match_a_full_forward(jax_model, batch):
  """Sampled tokens' log-probs equal log_softmax(logits / T) recomputed by a forward over the completion."""
  ids, mask, pv, grid = batch
  model, params = jax_model
  temp = 0.7
  out = generate(model, params, ids, mask, jnp.asarray(pv), grid, temperature=temp, top_k=50, top_p=0.9,
                 max_new_tokens=8, rng=jax.random.PRNGKey(3), eos_token_ids=())
  toks = np.asarray(out["tokens"])
  full_ids = np.concatenate([ids, toks], 1)
  full_mask = np.concatenate([mask, np.ones_like(toks)], 1)
  logits = model.apply({"params": params}, input_ids=jnp.asarray(full_ids), attention_mask=jnp.asarray(full_mask),
                       pixel_values=jnp.asarray(pv), image_grid_thw=grid)
  t = ids.shape[1]
  logp = jax.nn.log_softmax(np.asarray(logits)[:, t - 1:-1] / temp, axis=-1)
  ref = np.take_along_axis(np.asarray(logp), toks[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(out["logprobs"]), ref, atol=1e-4)


def test_eos_stops_and_pads(jax_model, batch):
  ids, mask, pv, grid = batch
  model, params = jax_model
  greedy = np.asarray(generate(model, params, ids, mask, jnp.asarray(pv), grid, greedy=True,
                               max_new_tokens=10)["tokens"])
  eos = int(greedy[0, 3])  # pretend the 4th greedy token of row 0 is EOS
  out = generate(model, params, ids, mask, jnp.asarray(pv), grid, greedy=True, max_new_tokens=10,
                 eos_token_ids=(eos,), pad_token_id=0)
  toks, lps = np.asarray(out["tokens"]), np.asarray(out["logprobs"])
  first = int(np.argmax(greedy[0] == eos))
  np.testing.assert_array_equal(toks[0, :first + 1], greedy[0, :first + 1])
  assert (toks[0, first + 1:] == 0).all() and (lps[0, first + 1:] == 0).all()
  assert int(out["lengths"][0]) == first + 1


def test_filters():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  keep = lambda **kw: (np.asarray(filter_logits(logits, SamplingConfig(**kw))) > -1e30)[0].tolist()
  assert keep(top_k=2) == [True, True, False, False, False]
  assert keep(top_p=0.6) == [True, True, False, False, False]  # 0.5 < 0.6, 0.7 >= 0.6
  assert keep(top_p=0.5) == [True, False, False, False, False]
  assert keep(top_p=0.01) == [True, False, False, False, False]
  assert keep() == [True] * 5


def test_top_k_one_is_greedy(jax_model, batch):
  ids, mask, pv, grid = batch
  model, params = jax_model
  a = generate(model, params, ids, mask, jnp.asarray(pv), grid, greedy=True, max_new_tokens=6)
  b = generate(model, params, ids, mask, jnp.asarray(pv), grid, top_k=1, max_new_tokens=6,
               rng=jax.random.PRNGKey(9))
  np.testing.assert_array_equal(np.asarray(a["tokens"]), np.asarray(b["tokens"]))


def test_sampling_follows_the_distribution(jax_model):
  """Temperature sampling: empirical first-token frequencies match softmax(logits / T)."""
  model, params = jax_model
  ids = np.full((256, 3), 7, np.int64)
  ids[:, 1] = 9
  s = Sampler(model, SamplingConfig(max_new_tokens=1, temperature=3.0, eos_token_ids=()))
  toks = np.asarray(s(params, ids, rng=jax.random.PRNGKey(0))["tokens"][:, 0])
  logits = np.asarray(model.apply({"params": params}, input_ids=jnp.asarray(ids[:1])))[0, -1]
  p = np.asarray(jax.nn.softmax(logits / 3.0))
  top = np.argsort(-p)[:3]
  for t in top:
    assert abs((toks == t).mean() - p[t]) < 4 * np.sqrt(p[t] * (1 - p[t]) / 256) + 1e-3


def test_top_k_top_p_sampling_follows_the_renormalised_distribution(jax_model):
  """top-k then top-p (drawn among the k candidates): frequencies match the masked, renormalised softmax."""
  model, params = jax_model
  ids = np.full((512, 3), 7, np.int64)
  ids[:, 1] = 9
  sc = SamplingConfig(max_new_tokens=1, temperature=3.0, top_k=4, top_p=0.7, eos_token_ids=())
  toks = np.asarray(Sampler(model, sc)(params, ids, rng=jax.random.PRNGKey(1))["tokens"][:, 0])
  logits = model.apply({"params": params}, input_ids=jnp.asarray(ids[:1]))[:, -1]
  p = np.asarray(jax.nn.softmax(filter_logits(logits, sc)))[0]
  assert set(np.unique(toks)) <= set(np.flatnonzero(p > 0))
  for t in np.flatnonzero(p > 0):
    assert abs((toks == t).mean() - p[t]) < 4 * np.sqrt(p[t] * (1 - p[t]) / 512) + 1e-3


def test_bad_sampling_config():
  with pytest.raises(ValueError, match="top_p"):
    SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingConfig(temperature=0.0)


def test_right_padding_is_rejected(jax_model):
  model, params = jax_model
  with pytest.raises(ValueError, match="left-padded"):
    generate(model, params, np.array([[5, 6, 0]]), np.array([[1, 1, 0]]), greedy=True, max_new_tokens=2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unscanned_decoding_form_equals_the_scanned_model(dtype):
  """The Sampler's form (layers_i modules over `unstack_layers` params, one cache array per layer) computes
  what the scanned model does, prefill and a cached step, fp32 up to rounding, bf16 within a few ulps."""
  from unirl_jax.models.qwen2_5_vl.text import unstack_layers
  cfg = qwen2_5_vl.tiny().replace(dtype=dtype)
  params = qwen2_5_vl.init_params(cfg, jax.random.PRNGKey(0))
  scanned, flat = qwen2_5_vl.Qwen2_5_VL(cfg), qwen2_5_vl.Qwen2_5_VL(cfg.replace(scan_layers=False))
  flat_params = unstack_layers(cfg, params)
  assert "layers" not in flat_params["language_model"]
  assert {x.dtype for x in jax.tree.leaves(flat_params["language_model"])} == {jnp.dtype(dtype)}
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 7), 0, 100)
  pos = jnp.broadcast_to(jnp.arange(7)[None, None], (3, 2, 7))
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
  outs = []
  for m, p in ((scanned, params), (flat, flat_params)):
    cache = qwen2_5_vl.init_cache(m.config, 2, 8)
    logits, cache = m.apply({"params": p}, ids, position_ids=pos, cache=cache)
    step, cache = m.apply({"params": p}, ids[:, :1], position_ids=pos[:, :, :1] + 7, cache=cache)
    outs.append((logits, step, np.stack([np.asarray(c, np.float32) for c in cache["k"]])))
  for a, b in zip(*outs):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
