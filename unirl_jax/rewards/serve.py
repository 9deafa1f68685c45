"""`python -m unirl_jax.rewards.serve --reward NAME [--host 127.0.0.1] [--port 8000]`: serves a registered
reward over the JSON protocol of `unirl_jax.rewards.remote` (the standard library's threading HTTP server).

`--reward geneval[_correct] --detector MODULE:FUNCTION` serves GenEval scoring (`rewards.geneval`) from any
detector: FUNCTION maps an (H, W, 3) uint8 image to {class: [rewards.geneval.Detection]} (e.g. a Mask2Former
wrapper on the scoring machine); the training side names the URL in `remote_rewards`.
`--reward clip_score|pickscore|clip_direction|clip_image_similarity|clip_cycle_gain|clip_reverse_direction --clip DIR`
serves a CLIP reward (`rewards.clip.KINDS`) from a `python -m convert clip` dir."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from unirl_jax import rewards
from unirl_jax.rewards.remote import from_request

MAX_BODY = 1 << 30


def make_server(fn: Callable, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
  """An HTTP server scoring POSTed batches with fn(RewardInputs) -> (N,); port 0 picks a free one
  (`server.server_address`). Rewards run one batch at a time (a lock), as a device-bound scorer must."""
  lock = threading.Lock()

  class Handler(BaseHTTPRequestHandler):
    def _reply(self, code: int, obj: dict) -> None:
      body = json.dumps(obj).encode()
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def do_POST(self):  # noqa: N802  (http.server's name)
      n = int(self.headers.get("Content-Length") or 0)
      if not 0 < n <= MAX_BODY:
        return self._reply(400, {"error": f"Content-Length {n} outside (0, {MAX_BODY}]"})
      try:
        inputs = from_request(json.loads(self.rfile.read(n)))
      except (ValueError, json.JSONDecodeError) as e:
        return self._reply(400, {"error": str(e)})
      try:
        with lock:
          scores = np.asarray(fn(inputs), np.float64)
      except Exception as e:  # noqa: BLE001  (the client sees the reward's failure, the server keeps serving)
        return self._reply(500, {"error": f"{type(e).__name__}: {e}"})
      return self._reply(200, {"scores": scores.tolist()})

    def log_message(self, fmt, *args):  # quiet: one line per request would flood a training log
      pass

  return ThreadingHTTPServer((host, port), Handler)


def detector_reward(reward: str, spec: str) -> Callable:
  """GenEval's partial credit ("geneval") or 0/1 correctness ("geneval_correct") from the detector MODULE:FUNCTION."""
  import importlib
  from unirl_jax.rewards import geneval
  if reward not in ("geneval", "geneval_correct"):
    raise ValueError(f"--detector scores GenEval: give --reward geneval or geneval_correct, not {reward!r}")
  module, _, name = spec.partition(":")
  if not module or not name:
    raise ValueError(f"--detector {spec!r}: give MODULE:FUNCTION, e.g. unirl_jax.rewards.shapes:detect")
  try:
    detect = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ValueError(f"--detector {spec!r}: {e}") from None
  partial, correct = geneval.rewards_from(detect, spec)
  return partial if reward == "geneval" else correct


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m unirl_jax.rewards.serve", description=__doc__.splitlines()[0])
  p.add_argument("--reward", required=True, help="a registered reward name (unirl_jax.rewards), geneval / "
                 "geneval_correct with --detector, or a CLIP reward with --clip")
  p.add_argument("--detector", help="MODULE:FUNCTION, an image -> {class: [Detection]} detector for GenEval")
  p.add_argument("--clip", metavar="DIR", help="a `python -m convert clip` dir, for the CLIP rewards")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  a = p.parse_args(argv)
  try:
    if a.detector and a.clip:
      raise ValueError("give --detector (GenEval) or --clip (CLIP rewards), not both")
    if a.clip:
      from unirl_jax.rewards import clip
      fn = clip.from_config([(a.reward, a.clip)])[a.reward] if a.reward in clip.KINDS else None
      if fn is None:
        raise ValueError(f"--clip serves a CLIP reward: give --reward one of {sorted(clip.KINDS)}, not {a.reward!r}")
    else:
      fn = detector_reward(a.reward, a.detector) if a.detector else rewards.get(a.reward)
  except (KeyError, ValueError, FileNotFoundError) as e:
    print(f"error: {e.args[0]}", file=sys.stderr)
    return 2
  server = make_server(fn, a.host, a.port)
  host, port = server.server_address[:2]
  print(f"serving reward {a.reward!r} on http://{host}:{port}/", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
  return 0


if __name__ == "__main__":
  sys.exit(main())
