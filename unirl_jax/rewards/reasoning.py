"""The reasoning scenarios' rewards (open-r1 / open-r1-multimodal's, `../shared/reference/unirl.md` §5.7; the exact
rules are ours and in docs/scenarios.md): the R1 format, answer accuracy, and an overlong-length penalty."""

from __future__ import annotations

import re
import string
from typing import Optional

import numpy as np

from unirl_jax.rewards import RewardInputs, register

_TAG = re.compile(r"</?(think|answer)>")
_FORMAT = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
# "B", "(B)", "B.", "B) 12", "option B", "the answer is (b)": one choice letter, alone or leading.
_LETTER = re.compile(r"^\s*(?:the\s+)?(?:answer|option|choice)?\s*(?:is|:)?\s*\(?([A-Za-z])\)?(?:[.:)]|\s|$)",
                     re.IGNORECASE)


def follows_format(completion: str) -> bool:
  """`<think>…</think>` then `<answer>…</answer>` and nothing else (whitespace aside); neither block holds another
  think/answer tag and the answer is not empty."""
  m = _FORMAT.fullmatch(completion)
  if m is None:
    return False
  think, answer = m.groups()
  return not _TAG.search(think) and not _TAG.search(answer) and bool(answer.strip())


def extract_answer(completion: str) -> str:
  """The content of the last `<answer>` block, or the whole completion when there is none (so a bare `\\boxed{}`
  still counts for accuracy; the format reward is what pays for the tags)."""
  found = _ANSWER.findall(completion)
  return (found[-1] if found else completion).strip()


def normalize(text: str) -> str:
  """Case-folded, `$`/`\\text{}`/surrounding punctuation removed, whitespace collapsed: the exact-match form."""
  t = re.sub(r"\\text\{([^}]*)\}", r"\1", text.replace("$", ""))
  t = " ".join(t.casefold().split())
  return t.strip(string.punctuation + " ")


def choice_letter(text: str, n_choices: int = 26) -> Optional[str]:
  """The multiple-choice letter a short answer gives ("B", "(b)", "B. 12", "the answer is B"), or None."""
  m = _LETTER.match(text)
  if m is None:
    return None
  letter = m.group(1).upper()
  return letter if ord(letter) - ord("A") < n_choices else None


def _math(gold: str, answer: str) -> Optional[bool]:
  """math-verify's verdict, or None when the gold answer does not parse as math."""
  from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
  cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
  g = parse(gold, extraction_config=cfg)
  if not g:
    return None
  a = parse(answer, extraction_config=cfg)
  return bool(a) and bool(verify(g, a))


def is_correct(answer: str, gold: str, choices: Optional[list] = None) -> bool:
  """Multiple choice (`choices` given, or a one-letter gold): the letter, or the chosen option's text; otherwise
  math-verify when the gold parses as math; otherwise normalised exact match."""
  gold = extract_answer(gold)
  if choices or re.fullmatch(r"\(?[A-Za-z]\)?", gold.strip()):
    n = len(choices) if choices else 26
    want = choice_letter(gold, n)
    if want is not None:
      if choice_letter(answer, n) == want:
        return True
      return bool(choices) and normalize(answer) == normalize(str(choices[ord(want) - ord("A")]))
  verdict = _math(gold, answer)
  if verdict is not None:
    return verdict or normalize(answer) == normalize(gold)
  return normalize(answer) == normalize(gold)


@register("think_format")
def think_format(inputs: RewardInputs) -> np.ndarray:
  """1 when the completion is `<think>…</think><answer>…</answer>` (open-r1's format reward, stricter: no nesting)."""
  return np.asarray([float(follows_format(c)) for c in inputs.need("completions", "think_format")], np.float32)


@register("accuracy")
def accuracy(inputs: RewardInputs) -> np.ndarray:
  """1 when the completion's answer equals the record's (metadata "answer", optional "choices")."""
  comps = inputs.need("completions", "accuracy")
  meta = inputs.need("metadata", "accuracy")
  out = []
  for i, (c, m) in enumerate(zip(comps, meta)):
    if "answer" not in m:
      raise ValueError(f"reward 'accuracy': row {i} has no answer in its metadata (a question record's answer)")
    out.append(float(is_correct(extract_answer(c), str(m["answer"]), m.get("choices"))))
  return np.asarray(out, np.float32)


@register("overlong")
def overlong(inputs: RewardInputs) -> np.ndarray:
  """DAPO's soft overlong punishment: 0 up to budget − buffer tokens, then linear to −1 at the budget (buffer = a
  quarter of the budget, `lm.max_new_tokens`); a completion cut at the budget gets −1."""
  n = np.asarray(inputs.need("completion_lengths", "overlong"), np.float32)
  budget = inputs.need("completion_budget", "overlong")
  buffer = max(1.0, budget / 4)
  return -np.clip((n - (budget - buffer)) / buffer, 0.0, 1.0).astype(np.float32)
