"""Offline reasoning questions for the tiny configs: arithmetic word problems (text) and questions about rendered
shape scenes (multimodal: counting, colour, position), each with a small answer vocabulary so a tiny LM can learn
them on CPU.

`python -m unirl_jax.data.synthetic_questions --kind arithmetic|shapes --out DIR` writes DIR/train_questions.jsonl
and DIR/eval_questions.jsonl (question records: `unirl_jax.data.questions`; the held-out split from another seed)
and DIR/sft.jsonl: the training questions as chat records whose assistant turn is a worked
`<think>…</think><answer>…</answer>` solution, for the supervised stage before GRPO.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data.shape_edits import COLUMNS, SIZES, Obj, draw
from unirl_jax.data.shapes import COLORS, SHAPES

KINDS = ("arithmetic", "shapes")
NAMES = ("Ann", "Ben", "Cara", "Dan", "Eve", "Finn")
ITEMS = ("apples", "books", "coins", "pens", "stones", "cards")


def arithmetic(rs: np.random.RandomState) -> dict:
  """One word problem: a start count, one gain or loss, single digits, the answer in 0..18."""
  name, item = NAMES[rs.randint(len(NAMES))], ITEMS[rs.randint(len(ITEMS))]
  a, b = int(rs.randint(1, 10)), int(rs.randint(1, 10))
  if rs.rand() < 0.5:
    q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    think, ans = f"{a} + {b} = {a + b}", a + b
  else:
    a, b = max(a, b), min(a, b)
    q = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have now?"
    think, ans = f"{a} - {b} = {a - b}", a - b
  return {"question": q, "answer": str(ans), "think": think, "kind": "arithmetic"}


def scene(rs: np.random.RandomState) -> tuple[Obj, ...]:
  """1-3 objects in distinct cells of the 3 x 3 grid."""
  cells = rs.permutation(9)[:rs.randint(1, 4)]
  return tuple(Obj(SHAPES[rs.randint(3)], list(COLORS)[rs.randint(len(COLORS))], int(c) // 3, int(c) % 3,
                   tuple(SIZES)[rs.randint(2)]) for c in cells)


def shape_question(objs: tuple[Obj, ...], rs: np.random.RandomState) -> dict:
  """A counting, colour or position question about the scene, its answer, and a scene description as thinking."""
  # In reading order (row by row, left to right): one right description per image, so the LM learns to look
  # rather than to guess which of the objects comes next.
  seen = sorted(objs, key=lambda o: (o.row, o.col))
  think = "I see " + ", ".join(f"a {o.color} {o.shape} {'in the' if o.col == 1 else 'on the'} {COLUMNS[o.col]}"
                               for o in seen) + "."
  kind = ("count", "color", "position")[rs.randint(3)]
  if kind == "count":
    shape = SHAPES[rs.randint(3)]
    q, ans = f"How many {shape}s are in the image?", str(sum(o.shape == shape for o in objs))
  else:
    o = objs[rs.randint(len(objs))]
    same = [p for p in objs if p.shape == o.shape]
    name = o.shape if len(same) == 1 else f"{o.size} {o.shape}" if sum(p.size == o.size for p in same) == 1 else None
    if kind == "color" and name is not None:
      q, ans = f"What colour is the {name}?", o.color
    else:
      kind = "position"
      q, ans = f"Is the {o.color} {o.shape} on the left, in the middle or on the right?", COLUMNS[o.col]
  return {"question": q, "answer": ans, "think": think, "kind": kind}


def questions(kind: str, n: int, seed: int) -> list[tuple[dict, tuple | None]]:
  """n (record, scene or None) pairs from one seeded stream."""
  if kind not in KINDS:
    raise ValueError(f"--kind {kind!r} not one of {KINDS}")
  rs = np.random.RandomState(seed)
  out = []
  for _ in range(n):
    if kind == "arithmetic":
      out.append((arithmetic(rs), None))
    else:
      objs = scene(rs)
      out.append((shape_question(objs, rs), objs))
  return out


def write(out: str, kind: str, n_train: int = 2048, n_eval: int = 128, size: int = 56, seed: int = 0,
          template: str = prompt_lib.REASON) -> dict:
  """The question files (train, held out) and the supervised chat records of the training questions."""
  os.makedirs(os.path.join(out, "images") if kind == "shapes" else out, exist_ok=True)
  paths = {}
  for split, n, s in (("train", n_train, seed), ("eval", n_eval, seed + 1)):
    rows, sft = [], []
    for i, (rec, objs) in enumerate(questions(kind, n, s)):
      think = rec.pop("think")
      if objs is not None:
        rec["image"] = f"images/{split}_{i:05d}.png"
        draw(objs, size).save(os.path.join(out, rec["image"]))
      rows.append(rec)
      if split == "train":
        sft.append({"type": "chat", **({"image": rec["image"]} if objs is not None else {}), "messages": [
            {"role": "user", "content": template.replace("{question}", rec["question"])},
            {"role": "assistant", "content": f"<think>{think}</think><answer>{rec['answer']}</answer>"}]})
    for name, data in ((f"{split}_questions", rows),) + ((("sft", sft),) if sft else ()):
      paths[name] = os.path.join(out, f"{name}.jsonl")
      with open(paths[name], "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in data)
  return paths


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.data.synthetic_questions", description=__doc__.splitlines()[0])
  p.add_argument("--kind", required=True, choices=KINDS)
  p.add_argument("--out", required=True)
  p.add_argument("--n-train", type=int, default=2048)
  p.add_argument("--n-eval", type=int, default=128)
  p.add_argument("--size", type=int, default=56, help="scene images' side (shapes)")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args(argv)
  paths = write(a.out, a.kind, a.n_train, a.n_eval, a.size, a.seed)
  print("\n".join(f"{k}: {v}" for k, v in paths.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
