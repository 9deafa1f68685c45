"""Multi-object shape scenes with GenEval-format prompts: the offline domain of the GenEval scenario.

Classes are shapes (circle, square, triangle), colours a subset of GenEval's, on a grey background. Each prompt
record carries GenEval's metadata (tag, include, exclude) so `rewards.geneval` scores it, and `render` draws a
scene that satisfies it (the cold start's training images). `python -m unirl_jax.data.shapes --out DIR` writes
train/held-out prompt files and a pretraining manifest of rendered scenes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
          "white": (245, 245, 245), "black": (20, 20, 20)}
BACKGROUND = (128, 128, 128)
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _a(shape: str) -> str:
  return f"a {shape}"


def make_prompt(tag: str, rs: np.random.RandomState) -> dict:
  """One GenEval-format record of `tag` in the shapes domain."""
  pick = lambda seq, k=1: [seq[i] for i in rs.choice(len(seq), k, replace=False)]
  colors = list(COLORS)
  if tag == "single_object":
    (s,) = pick(SHAPES)
    return {"tag": tag, "prompt": f"a photo of {_a(s)}", "include": [{"class": s, "count": 1}]}
  if tag == "two_object":
    a, b = pick(SHAPES, 2)
    return {"tag": tag, "prompt": f"a photo of {_a(a)} and {_a(b)}",
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}]}
  if tag == "counting":
    (s,) = pick(SHAPES)
    n = int(rs.choice(list(NUMBERS)))
    return {"tag": tag, "prompt": f"a photo of {NUMBERS[n]} {s}s", "include": [{"class": s, "count": n}],
            "exclude": [{"class": s, "count": n + 1}]}
  if tag == "colors":
    (s,), (c,) = pick(SHAPES), pick(colors)
    return {"tag": tag, "prompt": f"a photo of a {c} {s}", "include": [{"class": s, "count": 1, "color": c}]}
  if tag == "position":
    a, b = pick(SHAPES, 2)
    (rel,) = pick(RELATIONS)
    return {"tag": tag, "prompt": f"a photo of {_a(a)} {rel} {_a(b)}",
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]}
  if tag == "color_attr":
    a, b = pick(SHAPES, 2)
    ca, cb = pick(colors, 2)
    return {"tag": tag, "prompt": f"a photo of a {ca} {a} and a {cb} {b}",
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]}
  raise ValueError(f"tag {tag!r} not one of {TAGS}")


def prompts(n: int, seed: int, tags=TAGS) -> list[dict]:
  """n records, tags in turn, each drawn from its own seeded stream."""
  rs = np.random.RandomState(seed)
  return [make_prompt(tags[i % len(tags)], rs) for i in range(n)]


def draw_shape(d: ImageDraw.ImageDraw, shape: str, color: str, box: tuple) -> None:
  x0, y0, x1, y1 = box
  if shape == "circle":
    d.ellipse(box, fill=COLORS[color])
  elif shape == "square":
    d.rectangle(box, fill=COLORS[color])
  else:
    d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=COLORS[color])


def layout(record: dict, rs: np.random.RandomState) -> list[tuple[str, str, tuple[int, int]]]:
  """The objects of a scene satisfying `record` on a 3 x 3 grid of cells, as (shape, colour, (row, col)): each
  included object in its colour (else a random one); a position clause's target in the centre cell and the
  object beside it."""
  free = [(r, c) for r in range(3) for c in range(3)]
  rs.shuffle(free)
  include = record["include"]
  targets = {req["position"][1] for req in include if "position" in req}
  beside = {"left of": (1, 0), "right of": (1, 2), "above": (0, 1), "below": (2, 1)}
  objects = []
  for i, req in enumerate(include):
    for _ in range(req["count"]):
      cell = (1, 1) if i in targets else beside[req["position"][0]] if "position" in req else None
      cell = cell or next(c for c in free if c != (1, 1) or not targets)
      free.remove(cell)
      objects.append((req["class"], req.get("color") or list(COLORS)[rs.randint(len(COLORS))], cell))
  return objects


def draw(objects, size: int, rs: np.random.RandomState) -> Image.Image:
  """(shape, colour, (row, col)) objects drawn in their cells at random sizes (objects never touch)."""
  img = Image.new("RGB", (size, size), BACKGROUND)
  d = ImageDraw.Draw(img)
  w = size / 3
  for shape, color, (r, c) in objects:
    half = w * rs.uniform(0.3, 0.42)
    cx, cy = (c + 0.5) * w, (r + 0.5) * w
    draw_shape(d, shape, color, (round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
  return img


def render(record: dict, size: int, rs: np.random.RandomState) -> Image.Image:
  """A scene satisfying `record` (`layout`, then `draw`)."""
  return draw(layout(record, rs), size, rs)


def write(out: str, n_train: int = 512, n_eval: int = 96, size: int = 64, seed: int = 0, tags=TAGS) -> dict:
  """DIR/train_prompts.jsonl and DIR/eval_prompts.jsonl (GenEval metadata; the held-out set drawn from another
  seed), and DIR/scenes.jsonl + DIR/images/ (each training prompt rendered, a t2i pretraining manifest); the
  prompts of `tags` in turn."""
  if not tags or any(t not in TAGS for t in tags):
    raise ValueError(f"tags {tuple(tags)}: each must be one of {TAGS}")
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  train, held_out = prompts(n_train, seed, tuple(tags)), prompts(n_eval, seed + 1, tuple(tags))
  rs = np.random.RandomState(seed + 2)
  scenes = []
  for i, rec in enumerate(train):
    path = f"images/{i:05d}.png"
    render(rec, size, rs).save(os.path.join(out, path))
    scenes.append({"type": "t2i", "image": path, "caption": rec["prompt"]})
  paths = {}
  for name, rows in (("train_prompts", train), ("eval_prompts", held_out), ("scenes", scenes)):
    paths[name] = os.path.join(out, f"{name}.jsonl")
    with open(paths[name], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return paths


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.data.shapes", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--n-train", type=int, default=512)
  p.add_argument("--n-eval", type=int, default=96)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--tags", default=",".join(TAGS), help="comma-separated GenEval tags, in turn (default: all)")
  a = p.parse_args(argv)
  tags = tuple(t.strip() for t in a.tags.split(",") if t.strip())
  if not tags or any(t not in TAGS for t in tags):
    p.error(f"--tags {a.tags!r}: give some of {','.join(TAGS)}")
  for name, path in write(a.out, a.n_train, a.n_eval, a.size, a.seed, tags).items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
