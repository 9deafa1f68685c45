"""The shapes domain of the GenEval scenario: GenEval-format prompts, scenes rendered to satisfy them, and the
built-in detector that finds their objects, counts, colours and positions."""

import json

import numpy as np
import pytest

from unirl_jax import rewards
from unirl_jax.data import shapes
from unirl_jax.rewards import RewardInputs, geneval
from unirl_jax.rewards.shapes import detect


def test_every_tag_and_its_metadata():
  recs = shapes.prompts(12, seed=0)
  assert [r["tag"] for r in recs] == list(shapes.TAGS) * 2
  for r in recs:
    assert set(r) <= {"tag", "prompt", "include", "exclude"} and r["include"]
    for req in r["include"]:
      assert req["class"] in shapes.SHAPES and req["count"] >= 1
      assert req.get("color", "red") in geneval.COLORS
  assert shapes.prompts(12, seed=0) == recs and shapes.prompts(12, seed=1) != recs


def test_detector_finds_each_object_of_a_hand_drawn_scene():
  from PIL import Image, ImageDraw
  img = Image.new("RGB", (90, 90), shapes.BACKGROUND)
  d = ImageDraw.Draw(img)
  shapes.draw_shape(d, "square", "red", (5, 5, 25, 25))
  shapes.draw_shape(d, "circle", "blue", (60, 5, 84, 29))
  shapes.draw_shape(d, "triangle", "yellow", (5, 55, 35, 85))
  shapes.draw_shape(d, "circle", "white", (55, 55, 80, 80))
  found = detect(np.asarray(img))
  got = sorted((k, d.color, tuple(round(v) for v in d.box)) for k, ds in found.items() for d in ds)
  assert got == [("circle", "blue", (60, 5, 85, 30)), ("circle", "white", (55, 55, 81, 81)),
                 ("square", "red", (5, 5, 26, 26)), ("triangle", "yellow", (5, 55, 36, 86))]
  assert all(d.score > 0.5 for ds in found.values() for d in ds)


def test_rendered_scenes_satisfy_their_prompts():
  recs = shapes.prompts(60, seed=3)
  rs = np.random.RandomState(0)
  images = np.stack([np.asarray(shapes.render(r, 64, rs)) for r in recs])
  results = [geneval.evaluate(rewards.shapes.detect(img), r) for img, r in zip(images, recs)]
  bad = [(r["prompt"], x) for r, x in zip(recs, results) if not (x.score == 1 and x.correct and x.strict_correct)]
  assert not bad, bad[:3]


def test_the_reward_falls_when_the_scene_does_not_match():
  rec = {"tag": "color_attr", "prompt": "a photo of a red circle and a blue square",
         "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]}
  wrong = dict(rec, include=[{"class": "circle", "count": 1, "color": "red"},
                             {"class": "square", "count": 1, "color": "green"}])
  rs = np.random.RandomState(0)
  images = np.stack([np.asarray(shapes.render(r, 64, rs)) for r in (rec, wrong)])
  x = RewardInputs(images, [rec["prompt"]] * 2, metadata=[rec, rec])
  np.testing.assert_allclose(rewards.get("geneval_shapes")(x), [1.0, 0.75])  # parts [1, 1, 1, 0]
  np.testing.assert_array_equal(rewards.get("geneval_shapes_correct")(x), [1.0, 0.0])


def test_write_makes_prompt_files_and_a_pretraining_manifest(tmp_path):
  from unirl_jax.data import prompts, records
  paths = shapes.write(str(tmp_path), n_train=12, n_eval=6, size=32)
  recs = prompts.read_prompt_file(paths["eval_prompts"])
  assert len(recs) == 6 and recs[0].metadata["tag"] == "single_object"
  scenes, _ = records.read_sources([paths["scenes"]])
  assert len(scenes) == 12
  assert [json.loads(line)["prompt"] for line in open(paths["train_prompts"])] == [s.caption for s in scenes]


def test_write_tags_restricts_the_prompts(tmp_path, capsys):
  paths = shapes.write(str(tmp_path), n_train=6, n_eval=3, size=32, seed=0, tags=("colors",))
  for name in ("train_prompts", "eval_prompts"):
    assert {json.loads(line)["tag"] for line in open(paths[name])} == {"colors"}
  with pytest.raises(ValueError, match=r"tags \('hue',\): each must be one of"):
    shapes.write(str(tmp_path), tags=("hue",))
  with pytest.raises(SystemExit):
    shapes.main(["--out", str(tmp_path), "--tags", "colors,hue"])
  assert "--tags 'colors,hue': give some of single_object" in capsys.readouterr().err


def test_vae_fit_can_use_the_scenes():
  from unirl_jax import run_config, vae_fit
  x = vae_fit.scene_images(4, 32, seed=0)
  assert x.shape == (4, 32, 32, 3) and x.min() >= -1 and x.max() <= 1
  assert sorted(vae_fit.DATA) == ["geneval_scenes", "shapes"]
  with pytest.raises(run_config.ConfigError, match="model.vae_fit_data 'scenes'"):
    run_config.ModelSettings(vae_fit_data="scenes")
