"""The GenEval-on-shapes scenario end to end (`python -m unirl_jax.demo` with a few steps of each stage: cold
start, GenEval before, GRPO, GenEval after), and two of its GRPO steps with the reward served on loopback."""

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from unirl_jax import demo, metrics, rewards, train

GRPO = ["prompts_per_step=2", "group_size=4", "dm.steps=3", "dm.sde_steps=2", "progress=False"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("demo"))
  small = [x for kv in GRPO for x in ("--grpo", kv)]
  assert demo.main(["--workdir", wd, "--vae-fit-steps", "20", "--pretrain-steps", "2", "--grpo-steps", "2",
                    "--eval-prompts", "6", "--seeds", "2", "--eval-steps", "4", *small]) == 0
  return wd


def test_the_demo_leaves_curve_grids_and_before_after_scores(run):
  rows = metrics.read(os.path.join(run, "grpo", "metrics.jsonl"))
  assert [r["step"] for r in rows] == [1, 2]
  assert {"reward_geneval_shapes", "reward_geneval_shapes_correct"} <= set(rows[0])
  for f in ("grpo/reward_curve.png", "grpo/final/unified.json", "summary.md"):
    assert os.path.exists(os.path.join(run, f)), f
  before = json.load(open(os.path.join(run, "eval_before", "results.json")))
  after = json.load(open(os.path.join(run, "eval_after", "results.json")))
  assert before["images"] == after["images"] == 12
  assert before["ckpt"].endswith(os.path.join("cold_start", "final"))
  assert after["ckpt"].endswith(os.path.join("grpo", "final"))
  summary = open(os.path.join(run, "summary.md")).read()
  for tag in before["tags"]:
    assert f"| {tag} | {before['tags'][tag]['score']:.3f} -> {after['tags'][tag]['score']:.3f} |" in summary
  grid = np.asarray(Image.open(os.path.join(run, "before_after.png")))
  assert grid.shape == (6 * 32, 2 * 32 + 2, 3)
  first = np.asarray(Image.open(os.path.join(run, "eval_before", "images", "00000_0.png")))
  np.testing.assert_array_equal(grid[:32, :32], first)


class Stop(Exception):
  pass


def test_a_second_demo_reuses_the_cold_start(run, capsys, monkeypatch):
  calls = []

  def stop(*args):
    raise Stop

  monkeypatch.setattr(demo, "_train", lambda config, workdir, overrides: calls.append(config))
  monkeypatch.setattr(demo, "_eval", stop)
  with pytest.raises(Stop):
    demo.main(["--workdir", run, "--eval-prompts", "6"])
  assert calls == [] and "reusing" in capsys.readouterr().out


def test_a_misspelled_grpo_override_is_a_one_line_error(run, capsys):
  assert demo.main(["--workdir", run, "--eval-prompts", "6", "--grpo", "dm.stepz=3"]) == 2
  assert "did you mean 'dm.steps'" in capsys.readouterr().err


def test_two_steps_with_the_geneval_reward_served_on_loopback_equal_local(run, tmp_path):
  from unirl_jax.rewards.serve import make_server
  server = make_server(rewards.get("geneval_shapes"))
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = "http://%s:%d/" % server.server_address[:2]
  cold = os.path.join(run, "cold_start")
  try:
    cfg, _ = train.parse(["t", f"--config={os.path.join(demo.CONFIGS, 't2i_geneval_tiny.py')}",
                          f"--config.model.init={cold}/final", "--config.train.total_steps=2",
                          f"--config.prompt_file={cold}/synthetic_data/train_prompts.jsonl",
                          "--config.reward=served_geneval,geneval_shapes_correct:0",
                          *[f"--config.{kv}" for kv in GRPO]])
    import dataclasses
    from unirl_jax.rl.trainer import GRPOTrainer
    cfg = dataclasses.replace(cfg, remote_rewards={"served_geneval": url})
    GRPOTrainer(cfg, str(tmp_path)).run()
  finally:
    server.shutdown()
    server.server_close()
  got = metrics.read(str(tmp_path / "metrics.jsonl"))
  want = metrics.read(os.path.join(run, "grpo", "metrics.jsonl"))
  assert [r["step"] for r in got] == [1, 2]
  for g, w in zip(got, want):
    assert g["reward_served_geneval"] == pytest.approx(w["reward_geneval_shapes"], abs=1e-7)
    for k in ("reward_mean", "reward_std", "loss", "kl", "grad_norm"):
      assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-6), (g["step"], k)


def test_the_cold_start_dc_ae_gives_unit_scale_latents(run):
  """The scenes recipe of unirl_jax.vae_fit stores the scaling factor that puts its latents at the N(0, 1)
  scale the DiT samples at (a random tiny DC-AE's latents sit near 0.1: sampling then draws only noise)."""
  from unirl_jax import vae_fit
  from unirl_jax.models import unified
  model, params = unified.load(os.path.join(run, "cold_start", "final"))
  assert model.config.vae.scaling_factor != unified.shapes().vae.scaling_factor
  import jax
  z = np.asarray(jax.jit(model.encode)(params, vae_fit.scene_images(1024, 32, seed=0)[:256]))
  assert abs(z.std() - 1) < 0.05  # exactly 1 over all 1024 fitted scenes
