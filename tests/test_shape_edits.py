"""The shapes edit generator (every edit drawn as its captions say, undone by its reverse) and the edit-record
reader (JSONL and parquet alike, bad records named)."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from unirl_jax.data import edits, records, shape_edits
from unirl_jax.rewards.shapes import detect


def _seen(image) -> set:
  """(shape, colour) of every object the shapes detector finds."""
  return {(s, d.color) for s, ds in detect(np.asarray(image)).items() for d in ds}


def test_each_edit_changes_one_attribute_and_its_reverse_undoes_it():
  kinds = set()
  for kind, src, dst, fwd, rev in shape_edits.records(64, seed=3):
    kinds.add(kind)
    changed = [f for f in ("shape", "color", "col", "size") if getattr(src[0], f) != getattr(dst[0], f)]
    assert changed == [{"color": "color", "shape": "shape", "position": "col", "size": "size"}[kind]]
    assert src[1:] == dst[1:]
    # the reverse instruction names the edited object and the source's value: applying it gives the source back
    assert shape_edits._name(dst[0]) in rev and shape_edits._name(src[0]) in fwd
    a, b = shape_edits.caption(src).split(), shape_edits.caption(dst).split()
    assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
    big = shape_edits.draw(src, 96), shape_edits.draw(dst, 96)  # large enough for the detector at every size
    assert _seen(big[0]) == {(o.shape, o.color) for o in src}
    assert _seen(big[1]) == {(o.shape, o.color) for o in dst}
  assert kinds == set(shape_edits.KINDS)


def test_written_files_read_back_with_all_five_fields(tmp_path):
  paths = shape_edits.write(str(tmp_path), n_train=8, n_eval=4, size=32, seed=0)
  train, held_out = edits.read_edit_file(paths["train_edits"]), edits.read_edit_file(paths["eval_edits"])
  assert len(train) == 8 and len(held_out) == 4
  r = train[0]
  assert set(r.metadata) >= {"image", "reverse_prompt", "caption", "target_caption", "origin", "kind"}
  assert r.metadata["origin"] == f"{paths['train_edits']}:1"
  assert Image.open(r.metadata["image"]).size == (32, 32)
  pairs = records.read_manifest(paths["edit_pairs"])
  assert len(pairs) == 4 * 8
  fwd, rev = pairs[0], pairs[1]
  assert (fwd.instruction, rev.instruction) == (r.text, r.metadata["reverse_prompt"])
  assert (fwd.source, fwd.edited) == (rev.edited, rev.source) == (r.metadata["image"], fwd.edited)
  np.testing.assert_array_equal(  # the held-out split is drawn from another seed
      [e.metadata["caption"] for e in held_out],
      [shape_edits.caption(x[1]) for x in shape_edits.records(4, seed=1)])


def test_kinds_restricts_the_written_edits(tmp_path, capsys):
  paths = shape_edits.write(str(tmp_path), n_train=6, n_eval=2, size=32, seed=0, kinds=("color",))
  assert {r.metadata["kind"] for r in edits.read_edit_file(paths["train_edits"])} == {"color"}
  with pytest.raises(ValueError, match=r"edit kinds \('hue',\): each must be one of"):
    shape_edits.write(str(tmp_path), kinds=("hue",))
  with pytest.raises(SystemExit):
    shape_edits.main(["--out", str(tmp_path), "--kinds", "color,hue"])
  assert "--kinds 'color,hue': give some of color,shape,position,size" in capsys.readouterr().err


def _row(img_bytes, **kw):
  d = {"image": {"bytes": img_bytes, "path": None}, "prompt": "make the red circle blue",
       "reverse_prompt": "make the blue circle red", "caption": "a photo of a red circle",
       "target_caption": "a photo of a blue circle"}
  d.update(kw)
  return d


def _png() -> bytes:
  buf = io.BytesIO()
  shape_edits.draw((shape_edits.Obj("circle", "red", 1, 1),), 32).save(buf, format="PNG")
  return buf.getvalue()


def test_parquet_and_jsonl_give_the_same_records(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  png = _png()
  pq.write_table(pa.Table.from_pylist([_row(png), _row(png, prompt="make the red circle bigger")]),
                 tmp_path / "e.parquet")
  (tmp_path / "img.png").write_bytes(png)
  with open(tmp_path / "e.jsonl", "w") as f:
    for p in ("make the red circle blue", "make the red circle bigger"):
      f.write(json.dumps({**_row(None, prompt=p), "image": "img.png"}) + "\n")
  a, b = edits.read_edit_file(str(tmp_path / "e.parquet")), edits.read_edit_file(str(tmp_path / "e.jsonl"))
  assert [r.text for r in a] == [r.text for r in b] == ["make the red circle blue", "make the red circle bigger"]
  for x, y in zip(a, b):
    assert {k: v for k, v in x.metadata.items() if k not in ("image", "origin")} == \
        {k: v for k, v in y.metadata.items() if k not in ("image", "origin")}
    np.testing.assert_array_equal(np.asarray(records.open_image(x.metadata["image"], "")),
                                  np.asarray(records.open_image(y.metadata["image"], "")))
  assert a[1].metadata["origin"].endswith("e.parquet: row 1")


@pytest.mark.parametrize("bad, msg", [
    (dict(reverse_prompt=None), r"e.parquet: row 1: missing field 'reverse_prompt'"),
    (dict(target_caption="  "), r"e.parquet: row 1: field 'target_caption' must be non-empty"),
    (dict(image=b"not a png"), r"e.parquet: row 1: unreadable image"),
])
def test_a_bad_record_names_its_file_row_and_field(tmp_path, bad, msg):
  import pyarrow as pa
  import pyarrow.parquet as pq
  png = _png()
  rows = [_row(png), _row(png, **bad)]
  pq.write_table(pa.Table.from_pylist([{**r, "image": r["image"] if not isinstance(r["image"], dict) else png}
                                       for r in rows]), tmp_path / "e.parquet")
  with pytest.raises(records.DataError, match=msg):
    edits.read_edit_file(str(tmp_path / "e.parquet"))


def test_a_bad_jsonl_line_is_named(tmp_path):
  p = tmp_path / "e.jsonl"
  p.write_text('{"image": "x.png"}\nnot json\n')
  with pytest.raises(records.DataError, match=r"e.jsonl:1: missing field 'prompt'"):
    edits.read_edit_file(str(p))
  p.write_text(json.dumps({**_row(None), "image": "missing.png"}) + "\n")
  with pytest.raises(records.DataError, match=r"e.jsonl:1: image file not found: .*missing.png"):
    edits.read_edit_file(str(p))
  p.write_text("\n")
  with pytest.raises(records.DataError, match="holds no records"):
    edits.read_edit_file(str(p))


def test_edit_kinds_keeps_the_named_kinds_in_file_order(tmp_path):
  """`edit.kinds` (configs/i2i_tiny.py trains on colour edits only) filters the task's records by their "kind";
  a record without one, or a file with none of the kinds, is an error naming it."""
  from types import SimpleNamespace

  from unirl_jax.scenarios.i2i import Editing
  paths = shape_edits.write(str(tmp_path), n_train=12, n_eval=2, size=32, seed=0)
  every = edits.read_edit_file(paths["train_edits"])
  run = lambda kinds: SimpleNamespace(prompt_file=paths["train_edits"], edit=SimpleNamespace(kinds=kinds))
  color = Editing.records(run(("color",)))
  want = [r.metadata["origin"] for r in every if r.metadata["kind"] == "color"]
  assert 0 < len(want) < len(every) and [r.metadata["origin"] for r in color] == want
  two = Editing.records(run(("size", "color")))
  assert [r.metadata["origin"] for r in two] == [r.metadata["origin"] for r in every
                                                  if r.metadata["kind"] in ("size", "color")]
  assert len(Editing.records(run(()))) == len(every)
  with pytest.raises(records.DataError, match=r"no record of edit.kinds \('spin',\) \(its kinds: color, position"):
    Editing.records(run(("spin",)))
  p = tmp_path / "e.jsonl"
  p.write_text(json.dumps({**_row(None), "image": os.path.relpath(every[0].metadata["image"], tmp_path)}) + "\n")
  with pytest.raises(records.DataError, match=r"e.jsonl:1: edit.kinds \('color',\) is set but the record has no 'kind'"):
    edits.select_kinds(edits.read_edit_file(str(p)), ("color",), str(p))
