"""The shapes-domain cold-start records for CoT and reflection: readable as chat/t2i records, the judgement of
every reflection image agrees with the verifier (shapes detector + GenEval rules), a "no" carries a revision that
describes a scene satisfying the prompt, and the flawed share is the requested one."""

import json
import re

import numpy as np
from PIL import Image

from unirl_jax.data import records, shapes_sft
from unirl_jax.rewards import geneval
from unirl_jax.rewards.shapes import detect


def test_records_agree_with_the_verifier(tmp_path):
  out = str(tmp_path / "s")
  paths = shapes_sft.write(out, n_train=96, n_eval=6, size=32, seed=4, flawed_fraction=0.5)
  prompts = [json.loads(line) for line in open(paths["train_prompts"])]
  reflect = [json.loads(line) for line in open(paths["reflect_sft"])]
  cot = [json.loads(line) for line in open(paths["cot_sft"])]
  assert len(prompts) == len(reflect) == len(cot) == 96
  for rec, r, c in zip(prompts, reflect, cot):
    img = np.asarray(Image.open(f"{out}/{r['image']}").convert("RGB"))
    verdict = geneval.evaluate(detect(img), rec)
    answer = r["messages"][1]["content"]
    judge = re.fullmatch(r"<think>I see [^<]+\.</think><judge>(yes|no)</judge>(<answer>([^<]+)</answer>)?", answer)
    assert judge, answer
    assert judge.group(1) == ("yes" if verdict.correct else "no") == r["judge"]
    assert (judge.group(3) is not None) == (not verdict.correct)
    assert rec["prompt"] in r["messages"][0]["content"]
    # the unflawed scene satisfies the prompt, and the revision (like the CoT answer) describes it
    clean = np.asarray(Image.open(f"{out}/{r['image'].replace('_flawed', '')}").convert("RGB"))
    assert geneval.evaluate(detect(clean), rec).correct
    described = re.fullmatch(r"<answer>(.+), on a grey background</answer>", c["messages"][1]["content"]).group(1)
    if judge.group(3):
      assert judge.group(3) == described
  n_no = sum(r["judge"] == "no" for r in reflect)
  assert 0.3 < n_no / 96 < 0.7, n_no
  recs = records.read_manifest(paths["reflect_sft"]) + records.read_manifest(paths["cot_sft"])
  assert all(isinstance(r, records.ChatRecord) for r in recs)
  assert sum(r.image is not None for r in recs) == 96
  scenes = records.read_manifest(paths["scenes"])
  assert len(scenes) == 192 and all(isinstance(r, records.T2IRecord) for r in scenes)


def test_describe_and_flaws():
  objs = [("circle", "red", (1, 0)), ("square", "blue", (1, 1))]
  assert shapes_sft.describe(objs) == "a red circle on the left and a blue square in the centre"
  assert shapes_sft.describe(objs[:1]) == "a red circle on the left"
  rs = np.random.RandomState(0)
  for _ in range(50):
    f = shapes_sft.flaw(objs, rs)
    assert f != objs and len(f) >= 1 and len({o[2] for o in f}) == len(f)
  assert all(len(shapes_sft.flaw(objs[:1], rs)) == 1 for _ in range(20))  # the only object is never dropped

