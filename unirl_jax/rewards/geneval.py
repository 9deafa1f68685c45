"""GenEval scoring from detections (docs/algorithms.md §6.2): the partial-credit score the original trains on,
its exact-count correctness, and GenEval's official correctness.

A detector (a remote Mask2Former service, or the built-in shapes detector) reports, per image, candidate
objects per class with a confidence and, when the prompt asks for colours, each object's colour. Metadata is
GenEval's: {"tag", "include": [{"class", "count", "color"?, "position"?: [relation, group index]}],
"exclude": [{"class", "count"}]}.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")


@dataclasses.dataclass(frozen=True)
class Detection:
  box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
  score: float  # detector confidence
  color: Optional[str] = None  # one of COLORS, when the detector classifies colours


@dataclasses.dataclass(frozen=True)
class Settings:
  """The original's detection settings (reference §5.2)."""

  threshold: float = 0.3  # minimum confidence
  counting_threshold: float = 0.9  # for prompts tagged "counting"
  max_objects: int = 16  # per class, most confident first
  position_margin: float = 0.1  # a relation needs the centres apart by this share of the two sizes


@dataclasses.dataclass(frozen=True)
class Result:
  score: float  # partial credit in [0, 1]: the training reward
  strict_correct: bool  # every included class with exactly its count, colour and position (the original's)
  correct: bool  # GenEval's official rule: at least the count, colours/positions on the top ones, no excluded
  reasons: tuple[str, ...] = ()


def select(detections: dict, tag: str, s: Settings = Settings()) -> dict[str, list[Detection]]:
  """Per class, the detections above the tag's confidence threshold, most confident first, at most
  `max_objects`; classes left empty are dropped (no NMS: the original's threshold is 1.0)."""
  thr = s.counting_threshold if tag == "counting" else s.threshold
  out = {}
  for cls, dets in detections.items():
    kept = sorted((d for d in dets if d.score > thr), key=lambda d: -d.score)[:s.max_objects]
    if kept:
      out[cls] = kept
  return out


def relative_position(a: Detection, b: Detection, margin: float = 0.1) -> set[str]:
  """Where A lies relative to B ("left of", "right of", "above", "below"; image y grows downwards): the centre
  offset shrunk by margin × (size of A + size of B) per axis; a relation holds where the shrunk offset is more
  than half the offset's length along that axis."""
  boxes = np.asarray([a.box, b.box], np.float64).reshape(2, 2, 2)
  center_a, center_b = boxes.mean(axis=-2)
  dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
  offset = center_a - center_b
  revised = np.maximum(np.abs(offset) - margin * (dim_a + dim_b), 0) * np.sign(offset)
  if np.all(np.abs(revised) < 1e-3):
    return set()
  dx, dy = revised / np.linalg.norm(offset)
  rel = set()
  if dx < -0.5:
    rel.add("left of")
  if dx > 0.5:
    rel.add("right of")
  if dy < -0.5:
    rel.add("above")
  if dy > 0.5:
    rel.add("below")
  return rel


def _colors(objs: Sequence[Detection], cls: str) -> list[str]:
  missing = [d for d in objs if d.color is None]
  if missing:
    raise ValueError(f"the prompt asks for the colour of {cls!r} but the detector gave none")
  return [d.color for d in objs]


def partial_credit(objects: dict, metadata: dict, margin: float = 0.1) -> tuple[float, bool, list[str]]:
  """The original's training score: per include clause 1 − |count − found| / count; then, if the count is
  wrong and the clause has a colour or position, 0; else 1 − |count − #right colour| / count for a colour, and
  for a position 0 when the target group is unmatched, else a 0 for the first failing pair and then a 1
  (the original appends both). The score is the mean of all these; -> (score, exact-count correct, reasons)."""
  correct, reasons, parts, groups = True, [], [], []
  for req in metadata.get("include", []):
    cls, n = req["class"], req["count"]
    found = objects.get(cls, [])
    matched = True
    parts.append(1 - abs(n - len(found)) / n)
    if len(found) != n:
      correct = matched = False
      reasons.append(f"expected {cls}=={n}, found {len(found)}")
      if "color" in req or "position" in req:
        parts.append(0.0)
    else:
      if "color" in req:
        right = _colors(found, cls).count(req["color"])
        parts.append(1 - abs(n - right) / n)
        if right != n:
          correct = matched = False
          reasons.append(f"expected {req['color']} {cls}=={n}, found {right} {req['color']}")
      if "position" in req and matched:
        rel, target = req["position"]
        if groups[target] is None:
          correct = matched = False
          reasons.append(f"no target for {cls} to be {rel}")
          parts.append(0.0)
        else:
          for obj in found:
            for tgt in groups[target]:
              got = relative_position(obj, tgt, margin)
              if rel not in got:
                correct = matched = False
                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(got)) or 'overlap'}")
                parts.append(0.0)
                break
            if not matched:
              break
          parts.append(1.0)  # sic: also after a failing relation, as the original
    groups.append(found if matched else None)
  return (sum(parts) / len(parts) if parts else 0.0), correct, reasons


def geneval_correct(objects: dict, metadata: dict, margin: float = 0.1) -> bool:
  """GenEval's official rule: each include clause finds at least `count` objects; colour and position are
  checked on the `count` most confident; every exclude clause finds fewer than its count."""
  groups = []
  correct = True
  for req in metadata.get("include", []):
    cls, n = req["class"], req["count"]
    found = objects.get(cls, [])[:n]
    matched = len(found) >= n
    if matched and "color" in req and _colors(found, cls).count(req["color"]) < n:
      matched = False
    if matched and "position" in req:
      rel, target = req["position"]
      matched = groups[target] is not None and all(
          rel in relative_position(o, t, margin) for o in found for t in groups[target])
    correct &= matched
    groups.append(found if matched else None)
  for req in metadata.get("exclude", []):
    if len(objects.get(req["class"], [])) >= req["count"]:
      correct = False
  return correct


def evaluate(detections: dict, metadata: dict, s: Settings = Settings()) -> Result:
  """One image: raw detections {class: [Detection]} and its prompt's GenEval metadata -> Result."""
  if metadata.get("tag") not in TAGS:
    raise ValueError(f"GenEval metadata tag {metadata.get('tag')!r} not one of {TAGS}")
  objects = select(detections, metadata["tag"], s)
  score, strict, reasons = partial_credit(objects, metadata, s.position_margin)
  return Result(float(score), bool(strict), geneval_correct(objects, metadata, s.position_margin), tuple(reasons))


def rewards_from(detect: Callable[[np.ndarray], dict], name: str = "geneval",
                 s: Settings = Settings()) -> tuple[Callable, Callable]:
  """(partial credit, GenEval 0/1) as rewards fn(RewardInputs) -> (N,), from a detector: an (H, W, 3) uint8
  image -> {class: [Detection]} (the shapes detector, or a Mask2Former wrapper served with
  `python -m unirl_jax.rewards.serve --reward geneval --detector MODULE:FUNCTION`)."""

  def results(inputs) -> list[Result]:
    meta = inputs.need("metadata", name)
    return [evaluate(detect(img), m, s) for img, m in zip(inputs.images, meta)]

  def partial(inputs) -> np.ndarray:
    return np.asarray([r.score for r in results(inputs)], np.float32)

  def correct(inputs) -> np.ndarray:
    return np.asarray([float(r.correct) for r in results(inputs)], np.float32)

  partial.__doc__ = f"GenEval's partial credit (the original's training reward) from {name}'s detections."
  correct.__doc__ = f"GenEval's official correctness (0/1) from {name}'s detections; weight 0 to log accuracy."
  return partial, correct
