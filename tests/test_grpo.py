"""The GRPO loop on a tiny unified model: what moves, what never does, resuming, and 8 devices vs 1."""

import json
import os

import jax
import numpy as np
import pytest

from configs import t2i_jpeg_tiny
from unirl_jax.rl.trainer import GRPOTrainer


def config(steps=4, data=2):
  c = t2i_jpeg_tiny.get_config()
  c.total_steps = steps
  c.dm.steps = 3
  c.model.vae_fit_steps = 0  # what moves or resumes does not depend on the VAE
  c.progress = False
  c.train.checkpoint_every = 2
  c.train.sample_every = 2
  c.mesh.data = data
  return c


def rows(workdir):
  out = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if k != "step_time"} for r in out]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("grpo"))
  t = GRPOTrainer(config(), wd)
  init = t.params()
  t.run()
  return t, init, wd


def test_frozen_params_are_bit_identical_and_trained_ones_move(unbroken):
  t, init, wd = unbroken
  now = t.params()
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for k in ("lm", "vae", "i2i_queries"):
    assert same(now[k], init[k]), k
  for k in ("dit", "connector", "t2i_queries"):
    assert not same(now[k], init[k]), k
  r = rows(wd)
  assert [x["step"] for x in r] == [1, 2, 3, 4]
  assert all(np.isfinite(x["loss"]) and x["skipped"] == 0 for x in r)
  assert all(x["logp_mismatch"] < 1e-4 for x in r)  # rollout vs recomputation
  assert all(x["ratio_min"] == 1.0 == x["ratio_max"] and x["approx_kl"] == 0.0 for x in r)  # on-policy
  assert os.path.exists(os.path.join(wd, "reward_curve.png"))
  assert sorted(os.listdir(os.path.join(wd, "samples"))) == ["step_000002.png", "step_000004.png"]


def tensorboard_scalars(workdir):
  from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
  mux = EventMultiplexer().AddRunsFromDirectory(os.path.join(workdir, "tensorboard"))
  mux.Reload()
  (run,) = mux.Runs()
  return mux, run


def test_tensorboard_holds_the_metrics_and_samples(unbroken):
  _, _, wd = unbroken
  mux, run = tensorboard_scalars(wd)
  for key in ("reward_mean", "loss", "kl", "clip_frac", "grad_norm", "logp_mismatch"):
    got = [(e.step, e.value) for e in mux.Scalars(run, key)]
    want = [(r["step"], r[key]) for r in rows(wd)]
    assert [s for s, _ in got] == [s for s, _ in want], key
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=key)
  assert [e.step for e in mux.Images(run, "samples")] == [2, 4]


def test_killed_run_resumes_to_the_same_metrics(unbroken, tmp_path):
  _, _, wd = unbroken
  broken = str(tmp_path / "broken")
  GRPOTrainer(config(), broken).run(stop_after=3)  # killed one step after its step-2 checkpoint
  GRPOTrainer(config(), broken).run()
  assert rows(broken) == rows(wd)
  mux, run = tensorboard_scalars(broken)  # the step-3 point of the killed run is dropped
  assert [(e.step, e.value) for e in mux.Scalars(run, "loss")] == [(r["step"], r["loss"]) for r in rows(wd)]


def test_update_on_8_devices_equals_one(tmp_path):
  a = GRPOTrainer(config(steps=1, data=1), str(tmp_path / "one"))
  a.run()
  b = GRPOTrainer(config(steps=1, data=8), str(tmp_path / "eight"))
  b.run()
  assert len(b.state["trainable"]["dit"]["proj_out"]["kernel"].sharding.device_set) == 8
  for x, y in zip(jax.tree.leaves(a.params()), jax.tree.leaves(b.params())):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5, rtol=1e-5)


def test_frozen_weights_in_bf16(tmp_path):
  c = config(steps=1, data=1)
  c.model.frozen_dtype = "bfloat16"
  t = GRPOTrainer(c, str(tmp_path))
  (row,) = t.run()
  dtypes = {x.dtype for x in jax.tree.leaves((t.frozen, t.ref_trainable))}
  assert dtypes == {np.dtype(jax.numpy.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(t.state["trainable"])} == {np.dtype(np.float32)}
  assert np.isfinite(row["loss"]) and row["skipped"] == 0
