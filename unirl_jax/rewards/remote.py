"""Rewards computed by a service: JSON over HTTP, never pickle (the original posts pickled JPEGs).

Request (POST, application/json): {"images": [base64 PNG, ...], "prompts": [...], and when the task has them
"completions", "metadata", "sources", "reconstructions" (images as base64 PNG), "completion_lengths",
"completion_budget"}; a task without images (reasoning) sends no "images". Reply: {"scores": [one finite number
per row], "details": optional list}. `python -m unirl_jax.rewards.serve` serves any registered reward
with this protocol; PickScore / HPS / UnifiedReward / GenEval servers on other machines plug in the same way.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import time
import urllib.error
import urllib.request
from typing import Optional

import numpy as np
from PIL import Image

from unirl_jax.rewards import RewardInputs

IMAGE_FIELDS = ("images", "sources", "reconstructions")
LIST_FIELDS = ("prompts", "completions", "metadata", "completion_lengths")


class RemoteRewardError(RuntimeError):
  """A reward service failed or replied badly; the message names the server and what was wrong."""


def encode_png(image: np.ndarray) -> str:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(data: str) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), np.uint8)


def to_request(inputs: RewardInputs) -> dict:
  out = {}
  for f in IMAGE_FIELDS:
    v = getattr(inputs, f)
    if v is not None:
      out[f] = [encode_png(x) for x in v]
  for f in LIST_FIELDS:
    v = getattr(inputs, f)
    if v is not None:
      out[f] = [x.item() if isinstance(x, np.generic) else x for x in v]
  if inputs.completion_budget is not None:
    out["completion_budget"] = int(inputs.completion_budget)
  return out


def from_request(body: dict) -> RewardInputs:
  """The server side of `to_request`; a missing or malformed field is a ValueError naming it."""
  if not isinstance(body, dict) or not any(isinstance(body.get(f), list) and body[f] for f in ("images", "prompts")):
    raise ValueError("request needs a non-empty list 'images' of base64 PNGs or 'prompts' of strings")
  kw = {}
  for f in IMAGE_FIELDS:
    if body.get(f) is not None:
      try:
        kw[f] = np.stack([decode_png(x) for x in body[f]])
      except Exception as e:  # noqa: BLE001  (any decoding failure is the client's input)
        raise ValueError(f"request field {f!r}: not a list of base64 PNGs ({e})") from None
  for f in LIST_FIELDS:
    if body.get(f) is not None:
      if not isinstance(body[f], list):
        raise ValueError(f"request field {f!r} must be a list")
      kw[f] = body[f]
  if body.get("completion_budget") is not None:
    kw["completion_budget"] = body["completion_budget"]
  kw.setdefault("images", None)
  if "prompts" not in kw:
    kw["prompts"] = [""] * len(kw["images"])
  return RewardInputs(**kw)


@dataclasses.dataclass(frozen=True)
class RemoteReward:
  """fn(RewardInputs) -> (N,) float32 from the service at `url`: retried with exponential backoff on connection
  errors, timeouts, 5xx and malformed replies; a 4xx (our request refused) fails at once."""

  url: str
  timeout_s: float = 120.0
  retries: int = 3  # attempts after the first
  backoff_s: float = 1.0  # doubled after each failed attempt

  def __call__(self, inputs: RewardInputs) -> np.ndarray:
    body = json.dumps(to_request(inputs)).encode()
    last: Optional[str] = None
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff_s * 2 ** (attempt - 1))
      req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"},
                                   method="POST")
      try:
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
          raw = resp.read()
      except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode("utf-8", "replace")
        last = f"HTTP {e.code}: {detail}"
        if e.code < 500:
          raise RemoteRewardError(f"reward server {self.url} refused the request ({last})") from None
        continue
      except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        last = f"timed out after {self.timeout_s} s" if isinstance(reason, TimeoutError) or "timed out" in str(
            reason) else f"unreachable ({reason})"
        continue
      try:
        return self._parse(raw, len(inputs))
      except RemoteRewardError as e:  # a bad reply may be a passing fault of the service: ask again
        last = str(e)
    raise RemoteRewardError(f"reward server {self.url} failed {self.retries + 1} times; last: {last}")

  def _parse(self, raw: bytes, n: int) -> np.ndarray:
    try:
      reply = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise RemoteRewardError(f"reward server {self.url} replied with non-JSON: {raw[:200]!r}") from None
    scores = reply.get("scores") if isinstance(reply, dict) else None
    if not isinstance(scores, list):
      raise RemoteRewardError(f"reward server {self.url} reply has no 'scores' list: {str(reply)[:200]}")
    if len(scores) != n:
      raise RemoteRewardError(f"reward server {self.url} returned {len(scores)} scores for {n} rows")
    bad = [i for i, s in enumerate(scores)
           if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s)]
    if bad:
      raise RemoteRewardError(f"reward server {self.url} returned non-finite or non-numeric scores at rows {bad}: "
                              f"{[scores[i] for i in bad][:5]}")
    return np.asarray(scores, np.float32)
