"""Rewards, registered by name. A reward is fn(RewardInputs) -> float32 (N,); a run's reward spec names one or
several with weights, and the total is their weighted sum (weight 1 each: the original's unweighted sum)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np


@dataclasses.dataclass
class RewardInputs:
  """What the rewards of one GRPO step receive, one entry per row (host side, group-major)."""

  images: Optional[np.ndarray]  # (N, H, W, 3) uint8: the final images (None: a task without images, reasoning)
  prompts: list  # the caption (or question) of each row
  completions: Optional[list] = None  # the LM's completion of each row (CoT, reasoning)
  metadata: Optional[list] = None  # each row's prompt-record fields (GenEval tag/include, answers, captions)
  sources: Optional[np.ndarray] = None  # (N, H, W, 3) uint8: an edit's source image
  reconstructions: Optional[np.ndarray] = None  # (N, H, W, 3) uint8: the reverse edit of the edited image
  completion_lengths: Optional[np.ndarray] = None  # (N,) int: each completion's tokens (up to its EOS)
  completion_budget: Optional[int] = None  # the completions' token cap (lm.max_new_tokens); not per row
  first_images: Optional[np.ndarray] = None  # (N, H, W, 3) uint8: reflection's image 1 (`images`: the final one)
  judgements: Optional[np.ndarray] = None  # (N,) int: reflection's judgement of image 1 (rewards.reflection)
  revised: Optional[np.ndarray] = None  # (N,) bool: reflection rows whose image 2 exists (a "no" judgement)

  def __post_init__(self):
    n = len(self.prompts)
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name != "completion_budget" and v is not None and len(v) != n:
        raise ValueError(f"reward inputs: {f.name} has {len(v)} rows, prompts has {n}")

  def __len__(self) -> int:
    return len(self.prompts)

  def rows(self, sl: slice) -> "RewardInputs":
    """The inputs of rows `sl` only (a process scores the rows its devices hold)."""
    return dataclasses.replace(self, **{f.name: getattr(self, f.name)[sl] for f in dataclasses.fields(self)
                                        if f.name != "completion_budget" and getattr(self, f.name) is not None})

  def need(self, field: str, reward: str) -> Any:
    """The field's value, or an error naming the reward that needs it."""
    v = getattr(self, field)
    if v is None:
      raise ValueError(f"reward {reward!r} needs `{field}`, which this task does not provide")
    return v


RewardFn = Callable[[RewardInputs], np.ndarray]
REGISTRY: dict[str, RewardFn] = {}


def register(name: str):
  def deco(fn: RewardFn) -> RewardFn:
    if name in REGISTRY:
      raise ValueError(f"reward {name!r} registered twice")
    REGISTRY[name] = fn
    return fn
  return deco


def get(name: str, extra: Optional[dict] = None) -> RewardFn:
  """The reward called `name`: from `extra` (a run's remote rewards) or the registry."""
  from unirl_jax.rewards import format as _format, jpeg, reasoning, reflection, shapes  # noqa: F401  (register)
  if extra and name in extra:
    return extra[name]
  if name not in REGISTRY:
    known = sorted(REGISTRY) + sorted(extra or ())
    raise KeyError(f"unknown reward {name!r}; known: {known}")
  return REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class Term:
  """One reward of a run's spec and its weight in the total."""

  name: str
  weight: float = 1.0


def parse(spec) -> tuple[Term, ...]:
  """A reward spec -> terms: "a,b" or ("a", "b") (weight 1 each), "a:4,b:1", or {"a": 4, "b": 1}.
  Names are checked against the registry when scored (`check`), not here."""
  if isinstance(spec, str):
    items = []
    for part in (s.strip() for s in spec.split(",")):
      name, _, w = part.partition(":")
      items.append((name.strip(), w.strip() or "1"))
  elif isinstance(spec, dict) or hasattr(spec, "items"):
    items = list(spec.items())
  else:
    items = [(s.name, s.weight) if isinstance(s, Term) else (s, 1.0) for s in spec]
  out = []
  for name, w in items:
    if not isinstance(name, str) or not name:
      raise ValueError(f"reward spec {spec!r} has an empty reward name")
    try:
      w = float(w)
    except (TypeError, ValueError):
      raise ValueError(f"reward spec {spec!r}: weight {w!r} of {name!r} is not a number") from None
    if not np.isfinite(w):
      raise ValueError(f"reward spec {spec!r}: weight of {name!r} is not finite")
    out.append(Term(name, w))
  if not out:
    raise ValueError(f"reward spec {spec!r} names no reward")
  if len({t.name for t in out}) != len(out):
    raise ValueError(f"reward spec {spec!r} names a reward twice")
  return tuple(out)


def check(terms, extra: Optional[dict] = None) -> tuple[Term, ...]:
  """`parse`, then every name looked up (an unknown one fails now, not after the first rollout)."""
  terms = parse(terms)
  for t in terms:
    get(t.name, extra)
  return terms


def score(spec, inputs: RewardInputs, extra: Optional[dict] = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """-> (total (N,), {name: (N,)}): the weighted sum of the spec's rewards, and each one unweighted; `extra`
  maps more names to reward fns (a run's remote rewards)."""
  terms = check(spec, extra)
  parts = {}
  for t in terms:
    r = np.asarray(get(t.name, extra)(inputs), np.float32)
    if r.shape != (len(inputs),):
      raise ValueError(f"reward {t.name!r} returned shape {r.shape}, expected ({len(inputs)},)")
    if not np.isfinite(r).all():
      raise ValueError(f"reward {t.name!r} returned a non-finite value at rows {np.flatnonzero(~np.isfinite(r))}")
    parts[t.name] = r
  total = sum(np.float32(t.weight) * parts[t.name] for t in terms)
  return np.asarray(total, np.float32), parts
