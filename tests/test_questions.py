"""Reasoning question records: the public layouts (GSM8K, MATH, multimodal-open-r1, Geometry3K) from JSONL and
parquet, bad records named by file and line, and the synthetic sets' answers and worked solutions."""

import io
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unirl_jax import rewards
from unirl_jax.data import questions, synthetic_questions
from unirl_jax.data.records import DataError, open_image
from unirl_jax.rewards import RewardInputs


def png_bytes(color=(200, 30, 30)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (20, 20), color).save(buf, format="PNG")
  return buf.getvalue()


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_public_layouts(tmp_path):
  Image.new("RGB", (30, 20), (0, 0, 255)).save(tmp_path / "g.png")
  f = write_jsonl(tmp_path / "q.jsonl", [
      {"question": "Tom has 1,000 coins ...?", "answer": "He has 1,000 + 234 = 1,234.\n#### 1,234"},  # GSM8K
      {"problem": "What is 1/2 of 1?", "solution": "Half of one is $\\boxed{\\frac{1}{2}}$.", "level": 2},  # MATH
      {"problem": "<image>Find x.", "answer": "B", "choices": ["2", "3", "4"], "images": ["g.png"]},  # Geometry3K
      {"problem": "How many?", "answer": 7},  # a numeric answer
  ])
  gsm, math, geo, num = questions.read_question_file(f)
  assert (gsm.text, gsm.metadata["answer"]) == ("Tom has 1,000 coins ...?", "1234")
  assert gsm.metadata["solution"].endswith("#### 1,234") and gsm.metadata["origin"] == f"{f}:1"
  assert math.metadata["answer"] == "\\frac{1}{2}" and math.metadata["level"] == 2
  assert geo.text == "Find x." and geo.metadata["choices"] == ["2", "3", "4"] and geo.metadata["answer"] == "B"
  assert open_image(geo.metadata["image"], "x").size == (30, 20)
  assert num.metadata["answer"] == "7" and "solution" not in num.metadata and "image" not in num.metadata
  # multimodal-open-r1-8k-verified: problem / solution in answer tags / embedded image bytes, from parquet
  p = str(tmp_path / "mm.parquet")
  pq.write_table(pa.Table.from_pylist([{"problem": "Count the shapes.", "solution": "<answer> 3 </answer>",
                                        "image": {"bytes": png_bytes(), "path": None}}]), p)
  (rec,) = questions.read_question_file(p)
  assert rec.metadata["answer"] == "3" and rec.metadata["origin"] == f"{p}: row 0"
  assert open_image(rec.metadata["image"], "x").getpixel((0, 0)) == (200, 30, 30)


@pytest.mark.parametrize("row,msg", [
    ({"answer": "4"}, "no question (a question record needs one of question, problem, prompt)"),
    ({"question": "2+2?"}, "no answer (a question record needs one of answer, solution)"),
    ({"question": "  ", "answer": "4"}, "the question must be non-empty text"),
    ({"question": "2+2?", "answer": ""}, "the answer must be non-empty text or a number"),
    ({"question": "2+2?", "answer": "4", "choices": "ABCD"}, "choices must be a non-empty list"),
    ({"question": "2+2?", "answer": "4", "images": ["a.png", "b.png"]}, "2 images; a question takes one"),
    ({"question": "2+2?", "answer": "4", "image": "missing.png"}, "image file not found"),
])
def test_a_bad_record_names_its_file_and_line(tmp_path, row, msg):
  f = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1?", "answer": "2"}, row])
  with pytest.raises(DataError, match=re.escape(f"{f}:2: {msg}")):
    questions.read_question_file(f)


def test_unreadable_image_and_empty_file_are_named(tmp_path):
  (tmp_path / "bad.png").write_bytes(b"not a png")
  f = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "1", "image": "bad.png"}])
  with pytest.raises(DataError, match=re.escape(f"{f}:1: unreadable image")):
    questions.read_question_file(f)
  (tmp_path / "e.jsonl").write_text("\n")
  with pytest.raises(DataError, match="holds no records"):
    questions.read_question_file(str(tmp_path / "e.jsonl"))


def test_gold_answer_forms():
  assert questions.gold_answer("so \\boxed{\\frac{a}{\\sqrt{2}}} done") == "\\frac{a}{\\sqrt{2}}"
  assert questions.gold_answer("\\boxed{1} then \\boxed{2}") == "2"
  assert questions.gold_answer("plain") == "plain"


@pytest.mark.parametrize("kind", synthetic_questions.KINDS)
def test_synthetic_sets_are_consistent(tmp_path, kind):
  paths = synthetic_questions.write(str(tmp_path), kind, n_train=64, n_eval=16, size=28)
  train = questions.read_question_file(paths["train_questions"])
  held_out = questions.read_question_file(paths["eval_questions"])
  assert len(train) == 64 and len(held_out) == 16
  assert {r.text for r in held_out} != {r.text for r in train[:16]}  # another seed
  sft = [json.loads(line) for line in open(paths["sft"])]
  assert len(sft) == 64 and all(s["messages"][1]["role"] == "assistant" for s in sft)
  # the worked solutions are right and well formed by the rewards' own rules
  x = RewardInputs(None, [r.text for r in train], completions=[s["messages"][1]["content"] for s in sft],
                   metadata=[r.metadata for r in train])
  assert rewards.get("accuracy")(x).min() == 1.0 and rewards.get("think_format")(x).min() == 1.0
  if kind == "arithmetic":
    for r in train:
      a, b = map(int, re.findall(r"\d+", r.text)[:2])
      assert int(r.metadata["answer"]) == (a + b if "gets" in r.text else a - b)
  else:
    assert all(open_image(r.metadata["image"], "x").size == (28, 28) for r in train[:4])
    assert {r.metadata["kind"] for r in train} == {"count", "color", "position"}


def test_shape_answers_match_the_scene():
  rs = np.random.RandomState(0)
  for _ in range(200):
    objs = synthetic_questions.scene(rs)
    rec = synthetic_questions.shape_question(objs, rs)
    if rec["kind"] == "count":
      shape = rec["question"].split()[2][:-1]
      assert rec["answer"] == str(sum(o.shape == shape for o in objs))
    else:
      matches = [o for o in objs if f"the {o.color} {o.shape}" in rec["question"] or
                 rec["question"].endswith(f" {o.shape}?") or f" {o.size} {o.shape}?" in rec["question"]]
      assert matches, rec
      answer = (lambda o: o.color) if rec["kind"] == "color" else (lambda o: synthetic_questions.COLUMNS[o.col])
      assert rec["answer"] in {answer(o) for o in matches}
