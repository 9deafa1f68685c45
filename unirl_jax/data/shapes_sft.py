"""Supervised cold-start records for the CoT and reflection scenarios in the shapes domain (ours: the original
released no recipe for either, docs/scenarios.md).

For GenEval-format prompts (`data.shapes`), each rendered as a scene that satisfies it:
- CoT: the LM turns the prompt into an explicit scene description in `<answer>` tags (chat records, the CoT
  prompt of `prompts.t2i_cot`), and the DM learns to draw from that description (t2i records).
- Reflection: image 1 is the scene or a flawed copy (an object recoloured, reshaped, moved or dropped); the
  shapes detector and GenEval's rules give the verdict, so the judgement `<judge>yes|no</judge>` and the reason
  in `<think>` agree with the verifier the RL reward uses; a "no" adds the revision, the explicit description of
  a scene that satisfies the prompt, in `<answer>` tags.

`python -m unirl_jax.data.shapes_sft --out DIR` writes DIR/cot_sft.jsonl, DIR/reflect_sft.jsonl (chat records),
DIR/scenes.jsonl (t2i records: the prompts and the descriptions with their scenes), DIR/train_prompts.jsonl and
DIR/eval_prompts.jsonl (GenEval metadata, for the RL configs) and DIR/images/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data import shapes
from unirl_jax.rewards import geneval
from unirl_jax.rewards.shapes import detect

CELLS = {(0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right", (1, 0): "on the left",
         (1, 1): "in the centre", (1, 2): "on the right", (2, 0): "at the bottom left", (2, 1): "at the bottom",
         (2, 2): "at the bottom right"}
FLAWS = ("recolour", "reshape", "move", "drop")


def describe(objects) -> str:
  """'a red circle on the left and a blue square in the centre' for (shape, colour, (row, col)) objects."""
  parts = [f"a {color} {shape} {CELLS[cell]}" for shape, color, cell in objects]
  return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def cot_answer(objects) -> str:
  return f"<answer>{describe(objects)}, on a grey background</answer>"


def flaw(objects, rs: np.random.RandomState):
  """A copy of the scene with one change: an object recoloured, reshaped, moved to a free cell, or dropped."""
  objects = list(objects)
  kind = FLAWS[rs.randint(len(FLAWS) - (len(objects) == 1))]  # never drop the only object
  i = rs.randint(len(objects))
  shape, color, cell = objects[i]
  if kind == "recolour":
    objects[i] = (shape, [c for c in shapes.COLORS if c != color][rs.randint(len(shapes.COLORS) - 1)], cell)
  elif kind == "reshape":
    objects[i] = ([s for s in shapes.SHAPES if s != shape][rs.randint(len(shapes.SHAPES) - 1)], color, cell)
  elif kind == "move":
    free = [c for c in CELLS if c not in {o[2] for o in objects}]
    objects[i] = (shape, color, free[rs.randint(len(free))])
  else:
    objects.pop(i)
  return objects


def judgement(seen, verdict: geneval.Result, intended) -> str:
  """The judge's target: what is in image 1, the verifier's verdict and, when it fails, the revision."""
  think = f"I see {describe(seen)}" if seen else "I see no shapes"
  if verdict.correct:
    return f"<think>{think}.</think><judge>yes</judge>"
  return (f"<think>{think}; {verdict.reasons[0] if verdict.reasons else 'it does not match'}.</think>"
          f"<judge>no</judge><answer>{describe(intended)}</answer>")


def write(out: str, n_train: int = 512, n_eval: int = 96, size: int = 32, seed: int = 0,
          flawed_fraction: float = 0.5) -> dict:
  os.makedirs(os.path.join(out, "images"), exist_ok=True)
  train, held_out = shapes.prompts(n_train, seed), shapes.prompts(n_eval, seed + 1)
  rs = np.random.RandomState(seed + 2)
  cot, reflect, scenes = [], [], []
  for i, rec in enumerate(train):
    objects = shapes.layout(rec, rs)
    path = f"images/{i:05d}.png"
    img = shapes.draw(objects, size, rs)
    img.save(os.path.join(out, path))
    scenes.append({"type": "t2i", "image": path, "caption": rec["prompt"]})
    scenes.append({"type": "t2i", "image": path, "caption": describe(objects) + ", on a grey background"})
    cot.append({"type": "chat", "messages": [
        {"role": "user", "content": prompt_lib.RL_T2I_COT.format(rec["prompt"])},
        {"role": "assistant", "content": cot_answer(objects)}]})
    seen, image = objects, path
    verdict = geneval.evaluate(detect(np.asarray(img)), rec)
    if rs.rand() < flawed_fraction:
      image = f"images/{i:05d}_flawed.png"
      for _ in range(8):  # a flaw the prompt notices (recolouring an object of no asked colour does not count)
        seen = flaw(objects, rs)
        img = shapes.draw(seen, size, rs)
        verdict = geneval.evaluate(detect(np.asarray(img)), rec)
        if not verdict.correct:
          break
      img.save(os.path.join(out, image))
    reflect.append({"type": "chat", "image": image, "messages": [
        {"role": "user", "content": prompt_lib.REFLECT.format(prompt=rec["prompt"])},
        {"role": "assistant", "content": judgement(seen, verdict, objects)}],
        "judge": "yes" if verdict.correct else "no"})
  paths = {}
  for name, rows in (("cot_sft", cot), ("reflect_sft", reflect), ("scenes", scenes), ("train_prompts", train),
                     ("eval_prompts", held_out)):
    paths[name] = os.path.join(out, f"{name}.jsonl")
    with open(paths[name], "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return paths


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.data.shapes_sft", description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--n-train", type=int, default=512)
  p.add_argument("--n-eval", type=int, default=96)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--flawed-fraction", type=float, default=0.5,
                 help="share of reflection images with a flaw the prompt notices")
  a = p.parse_args(argv)
  for name, path in write(a.out, a.n_train, a.n_eval, a.size, a.seed, a.flawed_fraction).items():
    print(f"{name}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
