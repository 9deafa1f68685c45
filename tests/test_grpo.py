"""The GRPO engine on a tiny unified model (t2i): the same metrics as before the task interface, what moves and
what never does, groups and their advantages, resuming, and 8 devices with the batch sharded vs 2."""

import json
import os

import jax
import numpy as np
import pytest

from configs import t2i_jpeg_tiny
from unirl_jax import rewards
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.rl.trainer import GRPOTrainer

GOLDEN = os.path.join(os.path.dirname(__file__), "data")


def config(steps=4, data=2):
  """Two prompts x G=4 per step; the metrics of this run at 4 steps are tests/data/golden_t2i_metrics.json."""
  c = t2i_jpeg_tiny.get_config()
  c.train.total_steps = steps
  c.prompts_per_step = 2
  c.group_size = 4
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


def assert_same_metrics(got, golden_file):
  """Every metric of the golden run (written by the pre-task-interface trainer at 7770d4b) within 1e-6."""
  want = json.load(open(os.path.join(GOLDEN, golden_file)))
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert set(w) <= set(g), set(w) - set(g)
    for k, v in w.items():
      assert g[k] == pytest.approx(v, rel=1e-6, abs=1e-6), (g["step"], k, g[k], v)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("grpo"))
  t = GRPOTrainer(config(), wd)
  init = t.params()
  t.run()
  return t, init, wd


def test_same_metrics_as_before_the_task_interface(unbroken):
  assert_same_metrics(rows(unbroken[2]), "golden_t2i_metrics.json")


def test_frozen_params_are_bit_identical_and_trained_ones_move(unbroken):
  t, init, wd = unbroken
  now = t.params()
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for k in ("lm", "vae", "i2i_queries"):
    assert same(now[k], init[k]), k
  for k in ("dit", "connector", "t2i_queries"):
    assert not same(now[k], init[k]), k
  r = rows(wd)
  assert [x["step"] for x in r] == [1, 2, 3, 4] and all(x["skipped"] == 0 for x in r)
  assert all(x["logp_mismatch"] < 1e-4 for x in r)  # rollout vs recomputation
  assert os.path.exists(os.path.join(wd, "reward_curve.png"))
  assert sorted(os.listdir(os.path.join(wd, "samples"))) == ["step_000002.png", "step_000004.png"]


def test_each_group_is_one_prompt_and_its_advantages_come_from_its_own_rewards(unbroken):
  t = unbroken[0]
  step, g = 3, t.config.group_size
  captions = t.prompts.captions(step)
  assert len(set(captions)) == 2
  roll = t.task.rollout(step, jax.random.PRNGKey(7))
  ri = roll.rewards
  assert ri.prompts == [c for c in captions for _ in range(g)]
  assert ri.metadata == [{}] * len(ri.prompts)  # built-in prompts carry no record fields
  ids = np.asarray(roll.experience.dm.condition.ids)
  mask = np.asarray(roll.experience.dm.condition.mask)
  for i, c in enumerate(captions):
    for j in range(i * g, (i + 1) * g):
      assert t.tok.decode(ids[j][mask[j] == 1]) == prompt_lib.t2i(c)
  # Two groups with rewards on different scales: each group is normalised by its own mean and std only.
  r = np.concatenate([rewards.score(t.config.reward, ri)[0][:g], np.array([10., 20., 30., 70.])])
  adv = t.advantages(r)
  for k in range(2):
    x = r[k * g:(k + 1) * g]
    np.testing.assert_allclose(adv[k * g:(k + 1) * g], (x - x.mean()) / (x.std(ddof=1) + 1e-4), rtol=1e-5)


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


def test_a_reward_served_on_loopback_gives_the_same_steps(unbroken, tmp_path):
  """The fixture's reward served by `python -m unirl_jax.rewards.serve`'s server: the same first two steps."""
  import threading
  from unirl_jax.rewards.serve import make_server
  _, _, wd = unbroken
  server = make_server(rewards.get("jpeg_compressibility"))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    c = config()
    c.reward = "served_jpeg"
    c.remote_rewards = {"served_jpeg": "http://%s:%d/" % server.server_address[:2]}
    GRPOTrainer(c, str(tmp_path)).run(stop_after=2)
  finally:
    server.shutdown()
    server.server_close()
  got, want = rows(str(tmp_path)), rows(wd)[:2]
  assert [r["step"] for r in got] == [1, 2]
  for g, w in zip(got, want):
    assert g == pytest.approx(w, rel=1e-6, abs=1e-6)


def test_8_devices_with_the_batch_sharded_equal_2(unbroken, tmp_path):
  """The same 4 steps on 8 devices (one trajectory each) as on the fixture's 2: metrics and parameters."""
  t, _, wd = unbroken
  b = GRPOTrainer(config(data=8), str(tmp_path / "eight"))
  b.run()
  for got, want in zip(rows(b.workdir), rows(wd), strict=True):
    for k, v in want.items():
      assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-5), (got["step"], k, got[k], v)
  for x, y in zip(jax.tree.leaves(t.params()), jax.tree.leaves(b.params()), strict=True):
    # 4 Adam steps: Adam's normalised update turns the two reductions' ulp-level gradient differences into up to
    # ~3e-5 on near-zero-gradient elements (seen on AMD EPYC); the full-model fp32 tolerance, 1e-4.
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-5)
  # The step's rows arrive split over the 8 devices, one trajectory each, and the compiled update takes them so.
  roll = b.task.rollout(2, jax.random.PRNGKey(0))
  exp = roll.experience.replace(advantages=b.put_rows(np.zeros(8, np.float32)))
  batch_spec = jax.sharding.PartitionSpec(("data", "fsdp"))
  for x in (exp.advantages, exp.dm.condition.ids, exp.dm.trajectory.latents):
    assert x.sharding.spec[0] == batch_spec[0] and len(x.sharding.device_set) == 8
    assert {s.data.shape[0] for s in x.addressable_shards} == {1}
  compiled = b.update_fn(exp).lower(b.state, b.frozen, b.ref_trainable, exp).compile()
  exp_in = compiled.input_shardings[0][3]
  assert exp_in.advantages.spec[0] == batch_spec[0] and exp_in.dm.trajectory.latents.spec[0] == batch_spec[0]
  assert exp_in.schedule.sigmas.is_fully_replicated


def test_frozen_weights_in_bf16(tmp_path):
  c = config(steps=1, data=1)
  c.model.frozen_dtype = "bfloat16"
  t = GRPOTrainer(c, str(tmp_path))
  (row,) = t.run()
  dtypes = {x.dtype for x in jax.tree.leaves((t.frozen, t.ref_trainable))}
  assert dtypes == {np.dtype(jax.numpy.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(t.state["trainable"])} == {np.dtype(np.float32)}
  assert row["skipped"] == 0 and row["grad_norm"] > 0 and np.isfinite(row["loss"])
