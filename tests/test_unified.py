"""The unified model's conditioning path vs a torch composition, and which params receive gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import image_prompt, left_pad

from unirl_jax.convert.connector import connector_params
from unirl_jax.models import unified


@pytest.fixture(scope="module")
def setup(jax_model, hf_model):
  """A tiny unified model whose LM is the conftest HF model and whose connector is a torch module."""
  from test_connector import torch_connector
  cfg = unified.tiny()
  model = unified.UnifiedModel(cfg)
  params = model.init_params(jax.random.PRNGKey(0), lm=jax_model[1])
  tconn = torch_connector(cfg.connector, seed=3)
  params["connector"] = connector_params({k: v.numpy() for k, v in tconn.state_dict().items()}, cfg.connector)
  return model, params, tconn


def torch_condition(hf, tconn, ids, mask, queries, pv=None, grid=None):
  """The original's path: embeddings (+ ViT features), queries appended, decoder called without position_ids."""
  with torch.no_grad():
    ids_t = torch.tensor(ids)
    emb = hf.model.get_input_embeddings()(ids_t)
    if pv is not None:
      feats = hf.model.get_image_features(torch.tensor(pv), torch.tensor(grid)).pooler_output
      feats = torch.cat(list(feats))
      emb = emb.masked_scatter((ids_t == hf.config.image_token_id)[..., None], feats)
    q = torch.tensor(queries).expand(ids.shape[0], -1, -1)
    emb = torch.cat([emb, q], 1)
    m = torch.cat([torch.tensor(mask), torch.ones(ids.shape[0], q.shape[1], dtype=torch.long)], 1)
    h = hf.model.language_model(inputs_embeds=emb, attention_mask=m).last_hidden_state
    return tconn(h[:, -q.shape[1]:]).numpy()


def test_t2i_condition_matches_torch(setup, hf_model):
  model, params, tconn = setup
  ids, mask = left_pad([[5, 6, 7, 8, 9], [11, 12, 13]])
  ref = torch_condition(hf_model, tconn, ids, mask, np.asarray(params["t2i_queries"]))
  out = model.condition(params, jnp.asarray(ids), jnp.asarray(mask), task="t2i")
  assert out.shape == (2, model.config.num_queries, model.config.dit.caption_channels)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)


def test_edit_condition_with_image_matches_torch(setup, hf_model, images):
  model, params, tconn = setup
  pv, grid = images
  n0 = int(np.prod(grid[0]))
  ids = np.array([image_prompt(model.config.lm, n0 // 4)])
  ref = torch_condition(hf_model, tconn, ids, np.ones_like(ids), np.asarray(params["i2i_queries"]), pv[:n0], grid[:1])
  out = model.condition(params, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), jnp.asarray(pv[:n0]), grid[:1],
                        task="i2i")
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)


def test_3d_position_switch_changes_the_condition(setup, images):
  model, params, _ = setup
  pv, grid = images
  n0 = int(np.prod(grid[0]))
  ids = jnp.asarray([image_prompt(model.config.lm, n0 // 4)])
  m3 = unified.UnifiedModel(model.config.replace(positions="3d"))
  a = model.condition(params, ids, jnp.ones(ids.shape, jnp.int32), jnp.asarray(pv[:n0]), grid[:1], task="i2i")
  b = m3.condition(params, ids, jnp.ones(ids.shape, jnp.int32), jnp.asarray(pv[:n0]), grid[:1], task="i2i")
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


def test_gradients_reach_queries_connector_dit_and_spare_frozen_params(setup):
  model, params, _ = setup
  cfg = model.config
  mask = unified.trainable_mask(params)
  ids = jnp.asarray([[5, 6, 7, 8]])
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, cfg.dit.in_channels))

  def loss(p):
    p = unified.freeze(p, mask)
    c = model.condition(p, ids, jnp.ones_like(ids), task="t2i")
    v = model.velocity(p, x, c, jnp.array([500.0]), ref_latents=jnp.zeros_like(x))
    return jnp.mean(v ** 2)

  g = jax.jit(jax.grad(loss))(params)
  norm = lambda t: float(sum(jnp.sum(jnp.abs(a)) for a in jax.tree.leaves(t)))
  for k in ("t2i_queries", "connector", "dit"):
    assert norm(g[k]) > 0, k
  for k in ("lm", "vae", "i2i_queries"):
    assert norm(g[k]) == 0, k


def test_config_validation():
  cfg = unified.tiny()
  with pytest.raises(ValueError, match="caption_channels"):
    cfg.replace(connector=cfg.connector.replace(out_dim=7))
  with pytest.raises(ValueError, match="ref_branch"):
    cfg.replace(dit=cfg.dit.replace(ref_branch=False))


def test_real_size_preset_is_abstractly_initialisable():
  model = unified.UnifiedModel(unified.unirl_zero_3b_1600m())
  shapes = model.abstract_params()
  assert shapes["lm"]["language_model"]["embed_tokens"]["embedding"].shape == (151668, 2048)
  assert shapes["t2i_queries"].shape == (1, 256, 2048)
  n = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in shapes.items()}
  assert 1.55e9 < n["dit"] < 1.70e9 and 500e6 < n["connector"] < 515e6


def test_execution_knobs_per_sub_model():
  """model.remat takes one policy or one per sub-model (the others keep their preset's); bad names are errors
  that name the setting."""
  from unirl_jax import run_config, train_state
  knobs = lambda remat: train_state.execution_knobs(run_config.ModelSettings(dtype="bfloat16", remat=remat))
  cfg = unified.with_execution(unified.tiny(), **knobs({"dit": "full", "lm": "save_dots"}))
  assert (cfg.dit.remat, cfg.lm.remat, cfg.connector.remat) == ("full", "save_dots", "none")
  assert {cfg.dit.dtype, cfg.lm.dtype, cfg.connector.dtype, cfg.vae.dtype} == {"bfloat16"}
  cfg = unified.with_execution(unified.tiny(), **knobs("full"))
  assert (cfg.dit.remat, cfg.lm.remat, cfg.connector.remat) == ("full",) * 3
  with pytest.raises(run_config.ConfigError, match="unknown sub-model"):
    knobs({"dit": "full", "decoder": "none"})
  with pytest.raises(run_config.ConfigError, match="model.remat"):
    knobs("dit:full,dit:none")
  with pytest.raises(run_config.ConfigError, match=r"model\.remat\.dit 'sometimes'"):
    knobs({"dit": "sometimes"})
