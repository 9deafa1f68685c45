"""A synthetic dataset so the tiny configs train out of the box: coloured shapes with captions, and their edits.

`python -m unirl_jax.data.synthetic --out DIR [--n 512] [--size 64] [--edit-fraction 0.25]` writes
DIR/images/*.png and DIR/train.jsonl (see `unirl_jax.data.records` for the format); `--format tar` also writes
them as WebDataset shards DIR/shards/t2i-*.tar and DIR/shards/edit-*.tar (`--shard-size` records each), which
pretraining reads as `data.sources = ("t2i:DIR/shards/t2i-*.tar", "edit:DIR/shards/edit-*.tar")`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from unirl_jax.data.shapes import COLORS, SHAPES, draw_shape

def draw(shape: str, color: str, background: str, size: int, box: tuple) -> Image.Image:
  img = Image.new("RGB", (size, size), COLORS[background])
  draw_shape(ImageDraw.Draw(img), shape, color, box)
  return img


def generate(out: str, n: int = 512, size: int = 64, edit_fraction: float = 0.25, seed: int = 0) -> str:
  rs = np.random.RandomState(seed)
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  names = list(COLORS)
  lines = []
  for i in range(n):
    shape = SHAPES[rs.randint(len(SHAPES))]
    color, background = rs.choice(names, 2, replace=False)
    r = rs.randint(size // 5, size // 3)
    cx, cy = rs.randint(r, size - r, size=2)
    box = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))
    img = draw(shape, color, background, size, box)
    path = f"images/{i:05d}.png"
    img.save(os.path.join(out, path))
    if rs.rand() < edit_fraction:
      new_color = rs.choice([c for c in names if c not in (color, background)])
      edited = draw(shape, new_color, background, size, box)
      epath = f"images/{i:05d}_edit.png"
      edited.save(os.path.join(out, epath))
      lines.append({"type": "edit", "source": path, "edited": epath,
                    "instruction": f"make the {shape} {new_color}"})
    else:
      lines.append({"type": "t2i", "image": path, "caption": f"a {color} {shape} on a {background} background"})
  manifest = os.path.join(out, "train.jsonl")
  with open(manifest, "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return manifest


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.data.synthetic", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--n", type=int, default=512)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--edit-fraction", type=float, default=0.25)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--format", choices=("jsonl", "tar"), default="jsonl")
  p.add_argument("--shard-size", type=int, default=1000)
  a = p.parse_args(argv)
  manifest = generate(a.out, a.n, a.size, a.edit_fraction, a.seed)
  print(manifest)
  if a.format == "tar":
    for path in write_tar_shards(manifest, os.path.join(a.out, "shards"), a.shard_size):
      print(path)
  return 0


def write_tar_shards(manifest: str, out_dir: str, shard_size: int = 1000) -> list[str]:
  """A manifest's records as WebDataset shards, one set per kind (t2i-*.tar, edit-*.tar), in manifest order."""
  from unirl_jax.data import records, sources
  recs, _ = records.read_sources([manifest])
  paths = []
  for kind, cls in (("t2i", records.T2IRecord), ("edit", records.EditRecord)):
    mine = [r for r in recs if isinstance(r, cls)]
    if mine:
      paths += sources.write_shards(mine, out_dir, kind, shard_size)
  return paths


if __name__ == "__main__":
  sys.exit(main())
