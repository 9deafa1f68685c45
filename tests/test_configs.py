"""Every config in configs/ builds, names known settings, and the real-size ones describe the original's run."""

import glob
import importlib
import os

import pytest

from unirl_jax import rewards
from unirl_jax.models import unified
from unirl_jax.rl import dm, lm

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                           "*.py")) if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
  c = importlib.import_module(f"configs.{name}").get_config()
  assert c.mode in ("pretrain", "grpo")
  if c.mode == "grpo":
    dm.DMConfig(**c.dm)
    if c.task == "t2icot":
      lm.LMConfig(**c.lm)
    for r in (c.reward.split(",") if isinstance(c.reward, str) else c.reward):
      if r != "gen_eval":  # the GenEval scorer is a service the user registers
        rewards.get(r)
  if c.model.init.startswith("preset:"):
    assert hasattr(unified, c.model.init.split(":", 1)[1])


def test_real_size_grpo_settings_are_the_originals():
  from configs import t2i_jpeg_unirl_zero, t2icot_unirl_zero
  c = t2i_jpeg_unirl_zero.get_config()
  assert (c.group_size, c.dm.steps, c.dm.cfg, c.optim.lr, c.dm.beta, c.dm.clip_eps) == (8, 10, 3.5, 1e-5, 4e-3, 1e-4)
  assert (c.dm.noise_level, c.dm.shift, c.adv_clip, c.adv_std, c.image_size) == (0.7, 3.0, 5.0, "unbiased", 1024)
  assert c.prompts_per_step * c.group_size == 64 and c.optim.schedule == "linear" and c.optim.warmup_steps == 0
  cot = t2icot_unirl_zero.get_config()
  assert (cot.optim.lr, dict(cot.optim.group_lr), cot.lm.beta, cot.lm.top_k, cot.lm.max_new_tokens) == (
      3e-6, {"lm": 5e-7}, 0.01, 50, 512)
