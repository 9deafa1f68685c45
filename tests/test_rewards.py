"""Reward inputs as data, reward specs with weights, and prompt records that keep their metadata."""

import json

import numpy as np
import pytest

from unirl_jax import rewards, run_config
from unirl_jax.data import prompts
from unirl_jax.rewards import RewardInputs, Term


def inputs(n=3, **kw):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
  return RewardInputs(images, [f"p{i}" for i in range(n)], **kw)


@pytest.mark.parametrize("spec,want", [
    ("jpeg_compressibility", (Term("jpeg_compressibility", 1.0),)),
    ("a, b", (Term("a", 1.0), Term("b", 1.0))),
    ("a:4,b:1", (Term("a", 4.0), Term("b", 1.0))),
    ({"a": 4, "b": 0.5}, (Term("a", 4.0), Term("b", 0.5))),
    (("a", "b"), (Term("a", 1.0), Term("b", 1.0))),
])
def test_spec_forms(spec, want):
  assert rewards.parse(spec) == want


@pytest.mark.parametrize("spec,msg", [("", "empty reward name"), ("a:x", "weight 'x' of 'a'"),
                                      ("a,a", "twice"), ("a:nan", "not finite")])
def test_bad_specs_name_the_problem(spec, msg):
  with pytest.raises(ValueError, match=msg):
    rewards.parse(spec)


def test_run_config_takes_weights_and_refuses_bad_specs():
  from configs import t2i_jpeg_tiny
  c = t2i_jpeg_tiny.get_config()
  c.reward = "jpeg_compressibility:2,jpeg_incompressibility:0.5"
  assert run_config.load(c).reward == (Term("jpeg_compressibility", 2.0), Term("jpeg_incompressibility", 0.5))
  c.reward = "jpeg_compressibility:two"
  with pytest.raises(run_config.ConfigError, match="weight 'two'"):
    run_config.load(c)


def test_total_is_the_weighted_sum_of_the_parts():
  x = inputs(4, completions=["<answer>a</answer>", "no", "<answer>b</answer> more", " x"])
  total, parts = rewards.score("jpeg_incompressibility:0.25,format:3", x)
  kb = rewards.jpeg.jpeg_kb(x.images)
  np.testing.assert_allclose(parts["jpeg_incompressibility"], kb)
  np.testing.assert_array_equal(parts["format"], [1, 0, 1, 0])
  np.testing.assert_allclose(total, 0.25 * kb + 3 * np.array([1, 0, 1, 0]), rtol=1e-6)


def test_unknown_reward_and_missing_inputs_are_named():
  with pytest.raises(KeyError, match="unknown reward 'gen_evl'"):
    rewards.score("gen_evl", inputs())
  with pytest.raises(ValueError, match="reward 'format' needs `completions`"):
    rewards.score("format", inputs())
  with pytest.raises(ValueError, match="metadata has 2 rows, prompts has 3"):
    inputs(3, metadata=[{}, {}])


def test_a_reward_returning_nan_or_a_wrong_length_is_refused():
  rewards.register("test_nan")(lambda x: np.array([0.0, np.nan, 1.0]))
  rewards.register("test_short")(lambda x: np.zeros(2))
  try:
    with pytest.raises(ValueError, match=r"'test_nan' returned a non-finite value at rows \[1\]"):
      rewards.score("test_nan", inputs())
    with pytest.raises(ValueError, match=r"'test_short' returned shape \(2,\), expected \(3,\)"):
      rewards.score("test_short", inputs())
  finally:
    del rewards.REGISTRY["test_nan"], rewards.REGISTRY["test_short"]


def test_jsonl_prompts_keep_their_metadata(tmp_path):
  """GenEval's metadata layout: the prompt, and the tag/include fields the scorer needs."""
  rows = [{"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}],
           "prompt": "a photo of a cat and a dog"},
          {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}]
  path = tmp_path / "meta.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  recs = prompts.read_prompt_file(str(path))
  assert [r.text for r in recs] == ["a photo of a cat and a dog", "a photo of a bench"]
  assert recs[0].metadata == {"tag": "two_object", "include": rows[0]["include"]}
  src = prompts.PromptSource(recs, per_step=2, seed=0)
  step = src.step_records(1)
  assert [r.text for r in step] == src.captions(1) and {r.metadata["tag"] for r in step} == {"two_object",
                                                                                            "single_object"}
