"""Every config in configs/ becomes a typed run config; unknown keys fail at start naming the nearest known key;
the real-size ones describe the original's run."""

import glob
import importlib
import os

import pytest

from unirl_jax import rewards, run_config, scenarios, train
from unirl_jax.models import unified

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs",
                                                                           "*.py")) if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds(name):
  run = run_config.load(importlib.import_module(f"configs.{name}").get_config())
  assert isinstance(run, (run_config.GRPORun, run_config.PretrainRun))
  if run.mode == "grpo":
    # every reward local, served (gen_eval), a CLIP reward loaded at start, or the task's own (reflection's)
    fns = {**dict(run.remote_rewards), **dict(run.clip_rewards)}
    fns.update(scenarios.get(run.task).rewards(run, fns))
    assert rewards.check(run.reward, fns)
  if run.model.init.startswith("preset:"):
    assert hasattr(unified, run.model.init.split(":", 1)[1])


def test_unknown_keys_fail_naming_the_nearest_known_key():
  from configs import pretrain_tiny, t2i_jpeg_tiny
  c = t2i_jpeg_tiny.get_config()
  c.dm.stepz = 3
  with pytest.raises(run_config.ConfigError, match=r"unknown setting 'dm\.stepz'; did you mean 'dm\.steps'"):
    run_config.load(c)
  c = pretrain_tiny.get_config()
  c.train.totl_steps = 3
  with pytest.raises(run_config.ConfigError, match=r"'train\.totl_steps'; did you mean 'train\.total_steps'"):
    run_config.load(c)
  with pytest.raises(run_config.ConfigError, match=r"model\.remat.*one policy, or a dict"):
    run_config.load({"mode": "grpo", "model": {"remat": "dit:full,lm:none"}})
  with pytest.raises(run_config.ConfigError, match="group_size must be int"):
    run_config.load({"mode": "grpo", "group_size": "8"})


def test_command_line_overrides_are_typed_and_checked(capsys):
  run, workdir = train.parse(["train", "--config.dm.steps=3", "--config.train.total_steps=5", "--workdir=/tmp/w"])
  assert (run.dm.steps, run.train.total_steps, workdir, run.task) == (3, 5, "/tmp/w", "t2i")
  assert train.main(["train", "--config.group_sise=2"]) == 2
  err = capsys.readouterr().err
  assert "unknown setting 'group_sise'" in err and "did you mean 'group_size'" in err and "Traceback" not in err


def test_real_size_editing_settings_are_the_originals():
  from configs import i2i_unirl_zero
  c = run_config.load(i2i_unirl_zero.get_config())
  assert (c.task, c.group_size, c.prompts_per_step, c.dm.steps, c.image_size, c.edit.vit_size) == ("i2i", 8, 8, 10,
                                                                                                 1024, 672)
  assert (c.dm.cfg, c.dm.ref_cfg, c.dm.beta, c.dm.clip_eps, c.optim.lr, c.train.epochs) == (3.0, 1.0, 3e-4, 1e-4,
                                                                                            1e-5, 200)
  assert {t.name: t.weight for t in c.reward} == {"clip_direction": 4.0, "clip_image_similarity": 1.0}
  assert c.edit.cycle and not c.dm.mismatched  # the loss guides as the rollout did unless dm.loss_cfg is set
  assert set(c.train.trainable) == {"dit", "connector", "i2i_queries"}
  c = train.parse(["train", "--config=configs/i2i_unirl_zero.py", "--config.dm.loss_cfg=3.5",
                   "--config.edit.literal_vision_end=True"])[0]
  assert c.dm.mismatched and c.dm.loss_guidance.scale == 3.5 and c.edit.literal_vision_end


def test_real_size_grpo_settings_are_the_originals():
  from configs import t2i_jpeg_unirl_zero, t2icot_unirl_zero
  c = run_config.load(t2i_jpeg_unirl_zero.get_config())
  assert (c.group_size, c.dm.steps, c.dm.cfg, c.optim.lr, c.dm.beta, c.dm.clip_eps) == (8, 10, 3.5, 1e-5, 4e-3, 1e-4)
  assert (c.dm.noise_level, c.dm.shift, c.advantage.clip, c.advantage.std, c.image_size) == (0.7, 3.0, 5.0,
                                                                                              "unbiased", 1024)
  assert c.rows == 64 and c.optim.schedule == "linear" and c.optim.warmup_steps == 0 and c.optim.grad_clip == 0
  # The lr decays over the original's horizon: 10 epochs over the prompts, 8 prompts per step.
  assert c.train.total_steps == 0 and c.total_steps(n_prompts=1000) == 1250
  assert c.max_text_len == 8192 and c.text_pad == "longest"
  cot = run_config.load(t2icot_unirl_zero.get_config())
  assert (cot.optim.lr, dict(cot.optim.group_lr), cot.lm.beta, cot.lm.top_k, cot.lm.max_new_tokens) == (
      3e-6, {"lm": 5e-7}, 0.01, 50, 512)
  assert cot.lm.cond_padding == "right"


def test_real_size_reasoning_settings():
  from configs import reason_mm_unirl_zero, reason_text_unirl_zero
  for mod, new in ((reason_text_unirl_zero, 1024), (reason_mm_unirl_zero, 512)):
    c = run_config.load(mod.get_config())
    assert c.task == "reason" and c.train.trainable == ("lm/language_model",)
    assert (c.group_size, c.lm.temperature, c.lm.top_k, c.lm.beta, c.lm.max_new_tokens) == (8, 1.0, 50, 0.01, new)
    assert c.lm.aggregation == "seq_mean_token_mean" and c.optim.lr == 1e-6
    assert {t.name for t in c.reward} == {"think_format", "accuracy"} and c.reason.vit_size == 448
