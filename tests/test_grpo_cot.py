"""CoT GRPO (t2icot): the same metrics as before the task interface, the LM's completions condition the DM
(right-padded as the original), the joint loss trains the LM decoder with the DiT/connector/queries while the
vision tower and VAE stay frozen; micro-batched gradients equal one batch's."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import t2icot_tiny
from unirl_jax.rl import update
from unirl_jax.rl.trainer import GRPOTrainer
from test_grpo import assert_same_metrics, rows


def config(steps=2, cond_padding="left"):
  """Two prompts x G=2; with left padding the metrics are tests/data/golden_t2icot_metrics.json."""
  c = t2icot_tiny.get_config()
  c.train.total_steps = steps
  c.prompts_per_step = 2
  c.group_size = 2
  c.lm.max_new_tokens = 8
  c.lm.max_cond_len = 100
  c.lm.cond_padding = cond_padding
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


def test_same_metrics_as_before_the_task_interface(run):
  assert_same_metrics(rows(run[3]), "golden_t2icot_metrics.json")


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
  assert all({"reward_jpeg_compressibility", "reward_format", "lm_kl", "completion_tokens"} <= set(r) for r in history)
  sample = json.load(open(os.path.join(wd, "samples", "step_000001.json")))
  assert len(sample["completions"]) == 4 and sample["captions"] == t.prompts.captions(1)


def test_cot_condition_is_the_decoded_dialogue(run):
  t = run[0]
  _, completions, cond = t.task.complete(t.prompts.captions(1), jax.random.PRNGKey(3))
  text = t.tok.decode(np.asarray(cond.ids[0])[np.asarray(cond.mask[0]) == 1])
  assert text.startswith("system\nYou are a helpful assistant.\nuser\nPlease enhance the following prompt")
  assert text.endswith("assistant\n" + completions[0])
  assert "<|im_start|>" not in text and cond.query_shift is None


def test_right_padding_puts_the_pads_between_dialogue_and_queries(run, tmp_path):
  """The default (the original's layout): each group's dialogues right-padded to their longest, queries after
  the pads. The left-padded rows with their query shift give the same condition as that layout built directly."""
  t = GRPOTrainer(config(steps=1, cond_padding="right"), str(tmp_path))
  g = t.config.group_size
  _, _, cond = t.task.complete(t.prompts.captions(1), jax.random.PRNGKey(3))
  n = cond.mask.sum(axis=1)
  np.testing.assert_array_equal(cond.query_shift, (n.reshape(-1, g).max(1, keepdims=True) - n.reshape(-1, g)).ravel())
  assert cond.query_shift.max() > 0  # the draw has dialogues of different lengths
  params = t.params()
  ours = t.model.condition(params, cond.ids, cond.mask, query_shift=cond.query_shift)
  pad = t.model.config.lm.pad_token_id
  for grp in range(len(n) // g):
    rows_ = range(grp * g, (grp + 1) * g)
    width = int(n[list(rows_)].max())
    ids = np.full((g, width), pad, np.int32)
    mask = np.zeros((g, width), np.int32)
    for i, r in enumerate(rows_):
      ids[i, :n[r]], mask[i, :n[r]] = cond.ids[r][cond.mask[r] == 1], 1
    direct = t.model.condition(params, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours[grp * g:(grp + 1) * g]), np.asarray(direct), atol=1e-5, rtol=1e-5)


def test_micro_batched_joint_gradient_equals_one_batch(run, micro_batch=2):
  t = run[0]
  roll = t.task.rollout(1, jax.random.PRNGKey(4))
  exp = roll.experience.replace(advantages=t.put_rows(np.asarray([1.0, -0.5, 0.25, -0.75], np.float32)))
  grads = jax.jit(lambda e, mb: update.grpo_grads(t.parts, t.state["trainable"], t.frozen, t.ref_trainable, e,
                                                  mb)[:2], static_argnums=1)
  loss_1, g_1 = grads(exp, 0)
  loss_m, g_m = grads(exp, micro_batch)
  np.testing.assert_allclose(loss_m, loss_1, rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(loss_1)) > 0
  for a, b in zip(jax.tree.leaves(g_m), jax.tree.leaves(g_1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
