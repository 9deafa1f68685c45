"""Reflection rewards (ours, docs/scenarios.md): from a verifier reward v (GenEval scoring or CLIP, local or
remote) scored on image 1 and on the final image (image 2 after a revision, else image 1):

- reflect_final: v(final image);
- reflect_first: v(image 1) (for reflect.advantage="split": image 1's own advantage);
- reflect_judge: 1 when the LM's judgement agrees with the verifier on image 1 (yes <=> v(image 1) >= the pass
  threshold), 0 otherwise or when no judgement parses;
- reflect_improve: v(image 2) - v(image 1) after a revision, 0 without one;
- reflect_format (registered): 1 for `<think>…</think><judge>yes|no</judge>` (+ `<answer>…</answer>` after a no).
"""

from __future__ import annotations

import re
from typing import Callable, Optional

import numpy as np

from unirl_jax.rewards import RewardInputs, register

YES, NO, UNPARSED = 1, 0, -1
_JUDGE = re.compile(r"<judge>\s*(yes|no)\s*</judge>", re.IGNORECASE)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"^\s*<think>.*?</think>\s*<judge>\s*(yes|no)\s*</judge>\s*(<answer>(.+?)</answer>)?\s*$",
                     re.DOTALL | re.IGNORECASE)


def parse(text: str) -> tuple[int, Optional[str]]:
  """A judge completion -> (YES | NO | UNPARSED, the revised prompt or None). The first `<judge>` counts; the
  revision is the first non-empty `<answer>` after a no."""
  m = _JUDGE.search(text)
  if m is None:
    return UNPARSED, None
  if m.group(1).lower() == "yes":
    return YES, None
  a = _ANSWER.search(text, m.end())
  revision = a.group(1).strip() if a else ""
  return NO, revision or None


@register("reflect_format")
def reflect_format(inputs: RewardInputs) -> np.ndarray:
  """1 for `<think>…</think><judge>yes|no</judge>`, with `<answer>…</answer>` after a no and none after a yes."""
  out = []
  for text in inputs.need("completions", "reflect_format"):
    m = _FORMAT.match(text)
    out.append(float(m is not None and (m.group(1).lower() == "no") == (m.group(2) is not None)))
  return np.asarray(out, np.float32)


def make(verifier: Callable[[RewardInputs], np.ndarray], threshold: float) -> dict[str, Callable]:
  """The verifier-based rewards (and two rates to log at weight 0); v is scored once per step on image 1 and once
  on the final images."""
  cache: dict = {}

  def scores(inputs: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
    if cache.get("inputs") is not inputs:
      first = inputs.need("first_images", "reflect_*")
      v1 = np.asarray(verifier(_with_images(inputs, first)), np.float32)
      revised = inputs.need("revised", "reflect_*")
      vf = v1.copy()
      if revised.any():
        vf = np.asarray(verifier(inputs), np.float32)  # rows without a revision: image 1 again, the same score
        vf = np.where(revised, vf, v1)
      cache.update(inputs=inputs, v1=v1, vf=vf)
    return cache["v1"], cache["vf"]

  def final(inputs):
    return scores(inputs)[1]

  def first(inputs):
    return scores(inputs)[0]

  def judge(inputs):
    v1, _ = scores(inputs)
    j = np.asarray(inputs.need("judgements", "reflect_judge"))
    passed = v1 >= threshold
    return np.where(j == UNPARSED, 0.0, ((j == YES) == passed).astype(np.float32)).astype(np.float32)

  def improve(inputs):
    v1, vf = scores(inputs)
    return np.where(inputs.need("revised", "reflect_improve"), vf - v1, 0.0).astype(np.float32)

  def passed(inputs):
    return (scores(inputs)[0] >= threshold).astype(np.float32)

  def says_yes(inputs):
    return (np.asarray(inputs.need("judgements", "reflect_says_yes")) == YES).astype(np.float32)

  final.__doc__ = "The verifier's score of the final image (image 2 after a revision, else image 1)."
  first.__doc__ = "The verifier's score of image 1 (with reflect.advantage='split', image 1's own advantage)."
  judge.__doc__ = "1 when the judgement agrees with the verifier's verdict on image 1."
  improve.__doc__ = "The verifier's gain of image 2 over image 1 (0 without a revision)."
  passed.__doc__ = "1 when image 1 passes the verifier (log it at weight 0: with reflect_says_yes and reflect_judge "\
                   "it gives the judge's accuracy on passing and on failing images apart)."
  says_yes.__doc__ = "1 when the judgement is 'yes' (log it at weight 0)."
  return {"reflect_final": final, "reflect_first": first, "reflect_judge": judge, "reflect_improve": improve,
          "reflect_passed": passed, "reflect_says_yes": says_yes}


def _with_images(inputs: RewardInputs, images: np.ndarray) -> RewardInputs:
  import dataclasses
  return dataclasses.replace(inputs, images=images)
