"""The GRPO LM recomputation: completion log-probs (the t−1 offset, left-padded prompts, an image prompt) equal
transformers' log-softmax of the logits of the same sequences, and the sampler's own log-probs."""

import jax.numpy as jnp
import numpy as np
import torch
from conftest import image_prompt, left_pad

from unirl_jax.models.qwen2_5_vl import grid_tuple
from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
from unirl_jax.rl.lm import completion_log_probs
from unirl_jax.rl.losses import completion_mask

TOL = 1e-5


def prompts(cfg, images):
  """Row 0: an image prompt; row 1: a shorter text prompt, left-padded."""
  pv, grid = images
  n = int(np.prod(grid[0]))
  ids, mask = left_pad([image_prompt(cfg, n // 4), [11, 12, 13, 14]], pad_id=cfg.pad_token_id)
  return ids, mask, pv[:n], grid[:1]


def test_completion_log_probs_equal_transformers(hf_model, jax_model, images):
  model, params = jax_model
  cfg = model.config
  ids, mask, pv, grid = prompts(cfg, images)
  assert mask.min() == 0
  rs = np.random.RandomState(0)
  comp = rs.randint(20, 400, size=(2, 6))
  comp[1, 3] = cfg.eos_token_id[0]  # row 1 ends early: its tokens after the EOS are masked
  cmask = np.asarray(completion_mask(jnp.asarray(comp), cfg.eos_token_id))
  ours = np.asarray(completion_log_probs(model, params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(comp),
                                         jnp.asarray(cmask), jnp.asarray(pv), grid_tuple(grid)))
  full = np.concatenate([ids, comp], axis=1)
  hf_model.model.rope_deltas = None
  with torch.no_grad():
    logits = hf_model(input_ids=torch.tensor(full), attention_mask=torch.tensor(np.concatenate(
        [mask, cmask.astype(np.int64)], axis=1)), pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(grid),
        mm_token_type_ids=torch.tensor((full == cfg.image_token_id).astype(np.int64))).logits
  logp = torch.log_softmax(logits.double(), dim=-1).numpy()
  p = ids.shape[1]
  ref = np.take_along_axis(logp[:, p - 1:p - 1 + comp.shape[1]], comp[..., None], axis=-1)[..., 0]
  m = cmask.astype(bool)
  assert m.sum() == 6 + 4
  np.testing.assert_allclose(ours[m], ref[m], atol=TOL, rtol=0)


def test_completion_log_probs_equal_the_samplers(jax_model, images):
  model, params = jax_model
  cfg = model.config
  ids, mask, pv, grid = prompts(cfg, images)
  sampler = Sampler(model, SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=0,
                                          eos_token_ids=tuple(cfg.eos_token_id), pad_token_id=cfg.pad_token_id))
  out = sampler(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pv), grid_tuple(grid),
                rng=__import__("jax").random.PRNGKey(3))
  toks = out["tokens"]
  cmask = completion_mask(toks, cfg.eos_token_id)
  ours = np.asarray(completion_log_probs(model, params, jnp.asarray(ids), jnp.asarray(mask), toks, cmask,
                                         jnp.asarray(pv), grid_tuple(grid)))
  m = np.asarray(cmask).astype(bool)
  np.testing.assert_allclose(ours[m], np.asarray(out["logprobs"])[m], atol=TOL, rtol=0)
  assert np.asarray(out["logprobs"])[m].min() < -1.0  # sampled, not greedy: the tokens are not all near-certain
