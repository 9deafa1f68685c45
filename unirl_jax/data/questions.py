"""Reasoning questions (text and multimodal) from JSONL or parquet in the common public layouts, with errors that
name the file and record:

- question / answer (GSM8K: the answer's final line `#### 42` is the gold answer),
- problem / solution (MATH: the solution's last `\\boxed{}`; multimodal-open-r1-8k-verified: `<answer> 3 </answer>`),
- problem / answer with `images` (Geometry3K: a list of one image, `<image>` in the problem text), and optional
  `choices` / `options` for multiple choice.

Images are paths (relative to the file), encoded bytes or {"bytes", "path"}. Each record is a
`prompts.PromptRecord` whose text is the question (the task applies the template) and whose metadata holds
"answer" (the gold answer), the original "solution" when it differs, "choices", "image", and "origin".
"""

from __future__ import annotations

import os
import re
from typing import Optional

from unirl_jax.data.prompts import PromptRecord
from unirl_jax.data.records import DataError, image_field, iter_file_rows, open_image

QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "solution")


def last_boxed(text: str) -> Optional[str]:
  """The content of the last `\\boxed{…}` (or `\\fbox{…}`), braces balanced, or None."""
  start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
  if start < 0:
    return None
  i = text.index("{", start) + 1
  depth = 1
  for j in range(i, len(text)):
    depth += {"{": 1, "}": -1}.get(text[j], 0)
    if depth == 0:
      return text[i:j].strip()
  return None


def gold_answer(answer: str) -> str:
  """The final answer inside a reference solution: GSM8K's `#### x`, the last `\\boxed{x}`, `<answer>x</answer>`,
  else the text itself."""
  m = re.search(r"####\s*(.+?)\s*$", answer, re.DOTALL)
  if m:
    return m.group(1).replace(",", "").strip()
  boxed = last_boxed(answer)
  if boxed is not None:
    return boxed
  tags = re.findall(r"<answer>(.*?)</answer>", answer, re.DOTALL)
  return (tags[-1] if tags else answer).strip()


def make_record(d: dict, origin: str, base: str) -> PromptRecord:
  q = next((d[k] for k in QUESTION_FIELDS if d.get(k) is not None), None)
  a = next((d[k] for k in ANSWER_FIELDS if d.get(k) is not None), None)
  if q is None or a is None:
    missing = "question" if q is None else "answer"
    fields = QUESTION_FIELDS if q is None else ANSWER_FIELDS
    raise DataError(f"{origin}: no {missing} (a question record needs one of {', '.join(fields)})")
  if not isinstance(q, str) or not q.strip():
    raise DataError(f"{origin}: the question must be non-empty text, got {q!r}")
  if isinstance(a, (int, float)) and not isinstance(a, bool):
    a = str(a)
  if not isinstance(a, str) or not a.strip():
    raise DataError(f"{origin}: the answer must be non-empty text or a number, got {a!r}")
  meta = {k: v for k, v in d.items() if k not in QUESTION_FIELDS + ANSWER_FIELDS + ("image", "images")}
  gold = gold_answer(a)
  meta.update(answer=gold, origin=origin)
  if gold != a.strip():
    meta["solution"] = a
  choices = d.get("choices", d.get("options"))
  if choices is not None:
    if not isinstance(choices, (list, tuple)) or not choices:
      raise DataError(f"{origin}: choices must be a non-empty list, got {choices!r}")
    meta["choices"] = [str(c) for c in choices]
  image = d.get("image", d.get("images"))
  if isinstance(image, (list, tuple)):
    if len(image) != 1:
      raise DataError(f"{origin}: {len(image)} images; a question takes one (or none)")
    image = image[0]
  if image is not None:
    meta["image"] = image_field(image, origin, base, check=False)
  q = q.replace("<image>", "").strip()  # Geometry3K's placeholder: the prompt puts the image first
  return PromptRecord(q, meta)


def read_question_file(path: str, check_images: bool = True) -> list[PromptRecord]:
  """Question records of a .jsonl or .parquet file; with `check_images` every image is decoded once up front."""
  base = os.path.dirname(os.path.abspath(path))
  out = [make_record(d, origin, base) for origin, d in iter_file_rows(path, "question")]
  if not out:
    raise DataError(f"question file {path!r} holds no records")
  if check_images:
    for r in out:
      if "image" in r.metadata:
        open_image(r.metadata["image"], r.metadata["origin"])
  return out
