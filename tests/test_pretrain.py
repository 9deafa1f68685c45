"""Flow-matching pretraining: the loss falls, a killed run resumes onto the unbroken curve, frozen params stay."""

import json
import os

import jax
import numpy as np
import pytest

from configs import pretrain_tiny
from unirl_jax.pretrain import Pretrainer, edit_region_weights, flow_matching_loss, flow_matching_terms


def config(steps, every):
  c = pretrain_tiny.get_config()
  c.data.synthetic_n = 96
  c.train.total_steps = steps
  c.train.checkpoint_every = every
  c.train.log_every = 1000
  c.mesh.data, c.mesh.fsdp = 2, 1  # a sharded step on 2 of the 8 test devices (cheaper to compile than 8)
  return c


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("unbroken"))
  t = Pretrainer(config(60, 30), wd)
  init = jax.device_get({**t.state["trainable"], **t.frozen})
  hist = t.run()
  return t, init, hist, wd


def test_flow_matching_terms_by_hand():
  """x_σ = (1−σ)·x₀ + σ·ε, target ε − x₀, and the dropout bands [0,p) text, [p,2p) reference, [2p,3p) both."""
  x0 = np.full((6, 2, 2, 1), 2.0, np.float32)
  eps = np.arange(24, dtype=np.float32).reshape(6, 2, 2, 1) / 10
  sigma = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 0.1], np.float32)
  r = np.array([0.01, 0.049, 0.05, 0.12, 0.149, 0.15], np.float32)
  x_t, target, drop_text, drop_ref = flow_matching_terms(x0, eps, sigma, r, 0.05)
  np.testing.assert_allclose(np.asarray(x_t)[1], 0.75 * 2.0 + 0.25 * eps[1], rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(x_t)[0], x0[0])
  np.testing.assert_array_equal(np.asarray(x_t)[4], eps[4])
  np.testing.assert_allclose(np.asarray(target), eps - 2.0, rtol=1e-6)
  assert np.asarray(drop_text).tolist() == [True, True, False, True, True, False]
  assert np.asarray(drop_ref).tolist() == [False, False, True, True, True, False]


def test_edit_region_weights_by_hand():
  """1 + w·d/max(d) with d the mean |Δ| over channels, normalised to mean 1 per image; an unchanged image: all 1."""
  src = np.zeros((2, 2, 2, 2), np.float32)
  x0 = src.copy()
  x0[0, 0, 0] = [1.0, 3.0]  # d = 2 (the max)
  x0[0, 1, 1] = [-1.0, 0.0]  # d = 0.5
  got = np.asarray(edit_region_weights(x0, src, 4.0))
  raw = np.array([[1 + 4.0, 1.0], [1.0, 1 + 4.0 * 0.25]])
  np.testing.assert_allclose(got[0, ..., 0], raw / raw.mean(), rtol=1e-6)
  np.testing.assert_array_equal(got[1], np.ones((2, 2, 1), np.float32))


def test_edit_region_weight_reweights_edit_batches_only(unbroken):
  """`loss.edit_region_weight` changes the loss of an edit batch and leaves a text-to-image batch's as it was."""
  import dataclasses

  import grain
  t, _, _, _ = unbroken
  lc = t.config.loss
  params, rng = t.params(), jax.random.PRNGKey(0)
  batches = {}
  for b in t.dataset.to_iter_dataset(grain.ReadOptions(num_threads=1)):
    batches.setdefault("edit" if b.edit else "t2i", b)
    if len(batches) == 2:
      break
  for task, b in batches.items():
    grid = t.image_spec.vit_grid
    plain, _ = flow_matching_loss(t.model, params, b, rng, lc, grid)
    heavy, _ = flow_matching_loss(t.model, params, b, rng, dataclasses.replace(lc, edit_region_weight=8.0), grid)
    if task == "edit":
      assert abs(float(heavy) - float(plain)) > 1e-4 * float(plain), task
    else:
      assert float(heavy) == float(plain), task


def test_loss_falls(unbroken):
  _, _, hist, _ = unbroken
  losses = [h["loss"] for h in hist]
  assert {h["task"] for h in hist} == {"t2i", "edit"}
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
  assert all(h["skipped"] == 0 for h in hist)


def test_frozen_params_never_change_and_trainable_do(unbroken):
  t, init, _, _ = unbroken
  now = t.params()
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for k in ("lm", "vae"):
    assert same(now[k], init[k]), k
  for k in ("dit", "connector", "t2i_queries", "i2i_queries"):
    assert not same(now[k], init[k]), k
  assert "lm" not in t.state["opt_state"][1][0].mu  # frozen groups get no optimizer state


def test_killed_run_resumes_onto_the_unbroken_curve(unbroken, tmp_path):
  _, _, hist, _ = unbroken
  wd = str(tmp_path / "broken")
  first = Pretrainer(config(60, 30), wd).run(stop_after=33)  # killed 3 steps after its step-30 checkpoint
  rest = Pretrainer(config(60, 30), wd).run()
  assert [h["step"] for h in rest] == list(range(31, 61))
  np.testing.assert_array_equal([h["loss"] for h in first[:30] + rest], [h["loss"] for h in hist])
  rows = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == list(range(1, 61))


def test_export_is_a_loadable_unified_checkpoint(unbroken, tmp_path):
  from unirl_jax.models import unified
  t, _, _, _ = unbroken
  model, params = unified.load(t.export(str(tmp_path / "final")))
  assert model.config == t.model.config
  np.testing.assert_array_equal(np.asarray(params["t2i_queries"]), np.asarray(t.params()["t2i_queries"]))
