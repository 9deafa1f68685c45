"""Records (JSONL / parquet) with clear errors, the synthetic dataset, and resumable grain batches."""

import json
import os

import jax
import numpy as np
import pytest

from unirl_jax.data import pipeline, records, synthetic
from unirl_jax.data.records import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("synthetic")
  return synthetic.generate(str(d), n=40, size=32, edit_fraction=0.3, seed=1)


@pytest.fixture(scope="module")
def tok():
  from unirl_jax import tokenizer
  return tokenizer.qwen2_tokenizer()


def write_manifest(tmp_path, lines):
  p = tmp_path / "m.jsonl"
  p.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
  return str(p)


def test_synthetic_manifest_reads(dataset):
  recs, stats = records.read_sources([dataset])
  assert stats.read == 40 and stats.skipped == 0
  kinds = {type(r).__name__ for r in recs}
  assert kinds == {"T2IRecord", "EditRecord"}
  edit = next(r for r in recs if isinstance(r, records.EditRecord))
  assert edit.instruction.startswith("make the ") and os.path.exists(edit.source)


@pytest.mark.parametrize("line,msg", [
    ({"type": "t2i", "image": "images/00000.png"}, r"m.jsonl:2: missing field 'caption'"),
    ({"type": "t2i", "image": "nope.png", "caption": "x"}, r"m.jsonl:2: image file not found: .*nope.png"),
    ("{not json", r"m.jsonl:2: not valid JSON"),
    ({"type": "video", "caption": "x"}, r"m.jsonl:2: unknown record type 'video'"),
    ({"type": "edit", "source": "images/00000.png", "edited": "images/00000.png"},
     r"m.jsonl:2: missing field 'instruction' or 'edited_prompt_list'"),
])
def test_bad_records_name_file_and_line(dataset, tmp_path, line, msg):
  base = os.path.dirname(dataset)
  good = {"type": "t2i", "image": os.path.join(base, "images/00000.png"), "caption": "ok"}
  if isinstance(line, dict):
    line = {k: (os.path.join(base, v) if k in ("image", "source", "edited") and v.startswith("images") else v)
            for k, v in line.items()}
  path = write_manifest(tmp_path, [good, line])
  with pytest.raises(DataError, match=msg):
    records.read_manifest(path)
  stats = records.ReadStats()
  assert len(records.read_manifest(path, skip_bad=True, stats=stats)) == 1
  assert stats.skipped == 1 and stats.read == 1


def test_unreadable_image_is_named_at_load_or_skipped(dataset, tmp_path, tok):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a png")
  good = {"type": "t2i", "image": os.path.join(os.path.dirname(dataset), "images/00000.png"), "caption": "ok"}
  path = write_manifest(tmp_path, [good, {"type": "t2i", "image": str(bad), "caption": "x"}])
  recs = records.read_manifest(path)  # existence is checked here, decoding when loaded
  pre = pipeline.Preprocessor(tok, pipeline.ImageSpec(32, 56), 64, 151643)
  with pytest.raises(DataError, match=r"m.jsonl:2: unreadable image .*broken.png"):
    pre(recs[1])
  stats = records.ReadStats()
  assert len(records.read_manifest(path, skip_bad=True, stats=stats)) == 1 and stats.skipped == 1


def test_parquet_sources(tmp_path, dataset):
  import pyarrow as pa
  import pyarrow.parquet as pq
  base = os.path.dirname(dataset)
  png = open(os.path.join(base, "images/00001.png"), "rb").read()
  pq.write_table(pa.table({"image": [{"bytes": png, "path": None}] * 3, "prompt": ["a", "b", None]}),
                 tmp_path / "t2i.parquet")
  pq.write_table(pa.table({"src_img": [png], "edited_img": [png], "edited_prompt_list": [["first", "last one"]]}),
                 tmp_path / "edit.parquet")
  with pytest.raises(DataError, match=r"t2i.parquet: row 2: missing field"):
    records.read_sources([f"t2i:{tmp_path / 't2i.parquet'}"])
  recs, stats = records.read_sources([f"t2i:{tmp_path / 't2i.parquet'}", f"edit:{tmp_path / 'edit.parquet'}"],
                                     skip_bad=True)
  assert stats.skipped == 1 and len(recs) == 3
  assert recs[-1].instruction == "last one" and recs[0].image == png


def test_batches_have_fixed_shapes_and_resume_exactly(dataset, tok):
  recs, _ = records.read_sources([dataset])
  spec = pipeline.ImageSpec(32, 56)
  pre = pipeline.Preprocessor(tok, spec, 64, 151643)
  ds = pipeline.make_dataset(recs, pre, batch_size=4, seed=0)
  it = iter(ds.to_iter_dataset())
  seen = [next(it) for _ in range(6)]
  tasks = [b.task for b in seen]
  assert set(tasks) == {"t2i", "edit"}
  for b in seen:
    assert b.input_ids.shape == (4, 64) and b.images.shape == (4, 32, 32, 3)
    assert b.images.min() >= -1 and b.images.max() <= 1
    assert (b.attention_mask[:, -1] == 1).all()  # left padded
    if b.edit:
      assert b.pixel_values.shape == (4 * 16, 1176) and b.src_images.shape == (4, 32, 32, 3)
      assert ((b.input_ids == 151655).sum(1) == spec.vit_tokens).all()
    else:
      assert b.pixel_values is None and b.src_images is None
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  it2 = iter(ds.to_iter_dataset())
  it2.set_state(json.loads(json.dumps(state)))
  for a, b in zip(after, [next(it2) for _ in range(3)]):
    assert a.task == b.task
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_prompt_formats():
  from unirl_jax.data import prompts
  assert prompts.t2i("a cat", pretrain=True).endswith(
      "user\nPlease generate image based on the following caption: a cat<|im_end|>\n"
      "<|im_start|>assistant\n<|im_end|>\n")
  assert prompts.t2i("a cat").endswith("Please generate the image given the following caption: a cat<|im_end|>\n"
                                       "<|im_start|>assistant\n")
  assert "folllowing instruction: blue." in prompts.edit("blue", pretrain=True)


def test_task_weights_keep_one_task_and_bad_ones_are_named(dataset, tok):
  recs, _ = records.read_sources([dataset])
  pre = pipeline.Preprocessor(tok, pipeline.ImageSpec(32, 56), 64, 151643)
  for w, task in (({"edit": 1.0}, "edit"), ({"edit": 0.0, "t2i": 1.0}, "t2i")):
    it = iter(pipeline.make_dataset(recs, pre, batch_size=4, seed=0, weights=w).to_iter_dataset())
    assert {next(it).task for _ in range(4)} == {task}
  for bad in ({"edit": -1.0}, {"edits": 1.0}, {"t2i": 0.0}):
    with pytest.raises(ValueError, match=r"data.task_weights .*: give shares >= 0 \(not all 0\) of"):
      pipeline.make_dataset(recs, pre, batch_size=4, seed=0, weights=bad)
  t2i_only = [r for r in recs if isinstance(r, records.T2IRecord)]
  with pytest.raises(ValueError, match=r"data.task_weights \{'edit': 1.0\} leaves no records: .*'t2i': "):
    pipeline.make_dataset(t2i_only, pre, batch_size=4, seed=0, weights={"edit": 1.0})
