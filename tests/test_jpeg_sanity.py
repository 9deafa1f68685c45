"""The JPEG sanity experiment (unirl.md §5.1) on the tiny model: from one start, GRPO on compressibility shrinks
the images' JPEG size and GRPO on incompressibility grows it, far beyond the start policy's batch-to-batch noise."""

import jax
import numpy as np
import pytest

from configs import t2i_jpeg_tiny
from unirl_jax import run_config, train_state
from unirl_jax.data.pipeline import to_uint8
from unirl_jax.rewards.jpeg import jpeg_kb
from unirl_jax.rl.trainer import GRPOTrainer

STEPS = 30
EVAL_BATCHES = 6


def config(reward):
  c = t2i_jpeg_tiny.get_config()
  c.reward = reward
  c.train.total_steps = STEPS
  c.dm.steps = 3
  c.dm.beta = 0.0
  c.optim.lr = 1e-2
  c.progress = False
  c.train.checkpoint_every = 1000
  c.train.sample_every = 0
  c.mesh.data = 1
  return c


def eval_kb(t: GRPOTrainer, trainable) -> np.ndarray:
  """Mean JPEG KB of each of EVAL_BATCHES held-out rollouts (prompts and noise fixed, unseen in training)."""
  out = []
  for k in range(EVAL_BATCHES):
    cond = t.put_rows(t.task.condition(t.prompts.captions(10_000 + k)))
    _, images = t.task._rollout(trainable, t.frozen, cond, t.task.schedule, jax.random.PRNGKey(10_000 + k))
    out.append(jpeg_kb(to_uint8(jax.device_get(images))).mean())
  return np.asarray(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = {}
  # The random DC-AE is fitted once (config.model.vae_fit_steps) and both runs start from the same params.
  init = train_state.build_model(run_config.load(config("jpeg_compressibility")).model, 0)
  for reward in ("jpeg_compressibility", "jpeg_incompressibility"):
    t = GRPOTrainer(config(reward), str(tmp_path_factory.mktemp(reward)), init=init)
    start = eval_kb(t, t.ref_trainable)
    history = t.run()
    out[reward] = (start, eval_kb(t, t.state["trainable"]), [r["reward_mean"] for r in history])
  return out


def test_both_runs_start_from_the_same_policy(runs):
  np.testing.assert_array_equal(runs["jpeg_compressibility"][0], runs["jpeg_incompressibility"][0])


@pytest.mark.parametrize("reward,sign", [("jpeg_compressibility", -1), ("jpeg_incompressibility", 1)])
def test_jpeg_size_moves_with_the_reward(runs, reward, sign):
  start, end, rewards = runs[reward]
  noise = start.std(ddof=1) / np.sqrt(len(start))  # standard error of the start policy's mean size
  shift = sign * (end.mean() - start.mean())
  print(f"{reward}: {start.mean():.3f} -> {end.mean():.3f} KB (s.e. {noise:.4f})")
  assert shift > 8 * noise, (start, end)
  assert np.mean(rewards[-5:]) > np.mean(rewards[:5]), rewards
