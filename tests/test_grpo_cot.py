"""CoT GRPO (t2icot): the LM's completions condition the DM, the joint loss trains the LM decoder with the
DiT/connector/queries while the vision tower and VAE stay frozen; micro-batched gradients equal one batch's."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import t2icot_tiny
from unirl_jax.rl import update
from unirl_jax.rl.trainer import GRPOTrainer


def config(steps=2):
  c = t2icot_tiny.get_config()
  c.total_steps = steps
  c.group_size = 4
  c.lm.max_new_tokens = 8
  c.lm.max_cond_len = 100
  c.dm.steps = 3
  c.model.vae_fit_steps = 0
  c.progress = False
  c.train.checkpoint_every = 100
  c.train.sample_every = 1
  c.mesh.data = 1
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("cot"))
  t = GRPOTrainer(config(), wd)
  init = t.params()
  history = t.run()
  return t, init, history, wd


def test_joint_update_moves_the_lm_and_dm_and_nothing_frozen(run):
  t, init, history, wd = run
  now = t.params()
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for k in (("lm", "visual"), ("vae",), ("i2i_queries",)):
    a, b = now, init
    for p in k:
      a, b = a[p], b[p]
    assert same(a, b), k
  for k in ("dit", "connector", "t2i_queries"):
    assert not same(now[k], init[k]), k
  assert not same(now["lm"]["language_model"], init["lm"]["language_model"])
  for row in history:
    assert row["skipped"] == 0 and np.isfinite(row["loss"])
    assert 0 < row["completion_tokens"] <= 8
    assert row["lm_kl"] >= 0 and row["logp_mismatch"] < 1e-4
    assert {"reward_jpeg_compressibility", "reward_format"} <= set(row)
  sample = json.load(open(os.path.join(wd, "samples", "step_000001.json")))
  assert len(sample["completions"]) == 4 and sample["captions"] == t.captions(1)


def test_cot_condition_is_the_decoded_dialogue(run):
  t = run[0]
  ids, mask, lm_batch, completions = t.cot_rollout(t.captions(1), jax.random.PRNGKey(3))
  text = t.tok.decode(np.asarray(ids[0])[np.asarray(mask[0]) == 1])
  assert text.startswith("system\nYou are a helpful assistant.\nuser\nPlease enhance the following prompt")
  assert text.endswith("assistant\n" + completions[0])
  assert "<|im_start|>" not in text


@pytest.mark.parametrize("micro_batch", [1, 2])
def test_micro_batched_joint_gradient_equals_one_batch(run, micro_batch):
  t = run[0]
  ids, mask, batch, _ = t.cot_rollout(t.captions(1), jax.random.PRNGKey(4))
  roll, _ = t._rollout(t.state["trainable"], t.frozen, ids, mask, jax.random.PRNGKey(5))
  batch.update(ids=ids, mask=mask, roll=roll, advantages=jnp.asarray([1.0, -0.5, 0.25, -0.75]))
  grads = jax.jit(lambda b, mb: update.grpo_grads(t.model, t.state["trainable"], t.frozen, t.ref_trainable, b,
                                                  t.dc, t.lc, mb)[:2], static_argnums=1)
  loss_1, g_1 = grads(batch, 0)
  loss_m, g_m = grads(batch, micro_batch)
  np.testing.assert_allclose(loss_m, loss_1, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(g_m), jax.tree.leaves(g_1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
