"""Instructional edits in the synthetic shapes domain: the offline data of the editing scenario.

Each record is a source scene (one object, sometimes a second that stays put) and one edit of the first object's
colour, shape, column or size, with the original's five fields (`image`, `prompt` = the instruction,
`reverse_prompt` = the instruction that undoes it, `caption`, `target_caption`); the captions name every
attribute, so an edit changes one phrase. `python -m unirl_jax.data.shape_edits --out DIR` writes RL records for
training and a held-out split (DIR/train_edits.jsonl, DIR/eval_edits.jsonl, source images only) and, for the cold
start, a pretraining manifest with both directions of every training edit and each image's caption
(DIR/edit_pairs.jsonl).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from unirl_jax.data.shapes import BACKGROUND, COLORS, SHAPES, draw_shape

KINDS = ("color", "shape", "position", "size")
COLUMNS = ("left", "middle", "right")
SIZES = {"small": 0.28, "big": 0.45}  # half the object's side, as a fraction of a grid cell


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  color: str
  row: int
  col: int
  size: str = "small"

  def phrase(self) -> str:
    return f"a {self.size} {self.color} {self.shape} on the {COLUMNS[self.col]}"


def caption(objs: tuple[Obj, ...]) -> str:
  return "a photo of " + " and ".join(o.phrase() for o in objs)


def draw(objs: tuple[Obj, ...], size: int) -> Image.Image:
  """The objects on a 3 x 3 grid of cells over the grey background (as `data.shapes` draws scenes)."""
  img = Image.new("RGB", (size, size), BACKGROUND)
  d = ImageDraw.Draw(img)
  w = size / 3
  for o in objs:
    half = w * SIZES[o.size]
    cx, cy = (o.col + 0.5) * w, (o.row + 0.5) * w
    draw_shape(d, o.shape, o.color, (round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
  return img


def _name(o: Obj) -> str:
  return f"{o.color} {o.shape}"


def make_edit(kind: str, rs: np.random.RandomState) -> tuple[tuple[Obj, ...], tuple[Obj, ...], str, str]:
  """(source objects, edited objects, instruction, reverse instruction); the edit changes the first object."""
  pick = lambda seq: seq[rs.randint(len(seq))]
  colors = list(COLORS)
  row = rs.randint(3)
  col = rs.randint(3) if kind != "position" else pick((0, 2))
  a = Obj(pick(SHAPES), pick(colors), row, col, pick(tuple(SIZES)))
  if kind == "color":
    b = dataclasses.replace(a, color=pick([c for c in colors if c != a.color]))
    fwd, rev = f"make the {_name(a)} {b.color}", f"make the {_name(b)} {a.color}"
  elif kind == "shape":
    b = dataclasses.replace(a, shape=pick([s for s in SHAPES if s != a.shape]))
    fwd, rev = f"turn the {_name(a)} into a {b.shape}", f"turn the {_name(b)} into a {a.shape}"
  elif kind == "position":  # across the scene: left <-> right
    b = dataclasses.replace(a, col=2 - a.col)
    fwd = f"move the {_name(a)} to the {COLUMNS[b.col]}"
    rev = f"move the {_name(b)} to the {COLUMNS[a.col]}"
  elif kind == "size":
    b = dataclasses.replace(a, size="big" if a.size == "small" else "small")
    verb = lambda s: "bigger" if s == "big" else "smaller"
    fwd, rev = f"make the {_name(a)} {verb(b.size)}", f"make the {_name(b)} {verb(a.size)}"
  else:
    raise ValueError(f"edit kind {kind!r} not one of {KINDS}")
  others = ()
  if rs.rand() < 0.5:  # a second object that stays put, in a row of its own
    other_row = pick([r for r in range(3) if r != row])
    others = (Obj(pick(SHAPES), pick(colors), other_row, rs.randint(3), pick(tuple(SIZES))),)
  return (a,) + others, (b,) + others, fwd, rev


def records(n: int, seed: int, kinds=KINDS) -> list[tuple]:
  """n edits, kinds in turn, from one seeded stream."""
  rs = np.random.RandomState(seed)
  return [(kinds[i % len(kinds)],) + make_edit(kinds[i % len(kinds)], rs) for i in range(n)]


def write(out: str, n_train: int = 1024, n_eval: int = 64, size: int = 32, seed: int = 0, kinds=KINDS) -> dict:
  """The RL edit files (train and held out, drawn from different seeds) and the cold start's edit manifest, the
  edits of `kinds` in turn."""
  if not kinds or any(k not in KINDS for k in kinds):
    raise ValueError(f"edit kinds {tuple(kinds)}: each must be one of {KINDS}")
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  paths = {}
  for split, n, s in (("train", n_train, seed), ("eval", n_eval, seed + 1)):
    rl, pairs = [], []
    for i, (kind, src, dst, fwd, rev) in enumerate(records(n, s, tuple(kinds))):
      src_path, dst_path = f"images/{split}_{i:05d}.png", f"images/{split}_{i:05d}_edited.png"
      draw(src, size).save(os.path.join(out, src_path))
      rl.append({"image": src_path, "prompt": fwd, "reverse_prompt": rev, "caption": caption(src),
                 "target_caption": caption(dst), "kind": kind})
      if split == "train":
        draw(dst, size).save(os.path.join(out, dst_path))
        pairs += [{"type": "edit", "source": src_path, "edited": dst_path, "instruction": fwd},
                  {"type": "edit", "source": dst_path, "edited": src_path, "instruction": rev},
                  {"type": "t2i", "image": src_path, "caption": caption(src)},
                  {"type": "t2i", "image": dst_path, "caption": caption(dst)}]
    files = [(f"{split}_edits", rl)] + ([("edit_pairs", pairs)] if pairs else [])
    for name, rows in files:
      paths[name] = os.path.join(out, f"{name}.jsonl")
      with open(paths[name], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
  return paths


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.data.shape_edits", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--n-train", type=int, default=1024)
  p.add_argument("--n-eval", type=int, default=64)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated edit kinds, in turn (default: all)")
  a = p.parse_args(argv)
  kinds = tuple(k.strip() for k in a.kinds.split(",") if k.strip())
  if not kinds or any(k not in KINDS for k in kinds):
    p.error(f"--kinds {a.kinds!r}: give some of {','.join(KINDS)}")
  for name, path in write(a.out, a.n_train, a.n_eval, a.size, a.seed, kinds).items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
