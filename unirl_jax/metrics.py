"""Per-step metrics for the training loops: `metrics.jsonl` (one JSON object per step) and TensorBoard event
files (`tensorboard --logdir WORKDIR/tensorboard`), both starting clean from the resumed step."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np


class MetricsLog:
  """Context manager; `write(row)` logs every numeric field of `row` (which must hold "step") to both sinks.
  enabled=False (the other processes of a multi-process run) writes nothing but still keeps `last`."""

  def __init__(self, workdir: str, resume_step: int = 0, tensorboard: bool = True, enabled: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb_dir = os.path.join(workdir, "tensorboard")
    self.resume_step = resume_step
    self.tensorboard = tensorboard
    self.enabled = enabled
    self._f = self._tb = None
    self.last: dict | None = None  # the latest row written

  def __enter__(self):
    if not self.enabled:
      return self
    truncate(self.path, self.resume_step)
    self._f = open(self.path, "a")
    if self.tensorboard:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
      from tensorboard.compat.proto import event_pb2
      self._tb = EventFileWriter(self.tb_dir)
      # A session START at the first new step makes TensorBoard drop points a killed run logged past its
      # last checkpoint, as truncate() does for the JSONL.
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=self.resume_step + 1,
                                         session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    return self

  def write(self, row: dict) -> None:
    self.last = row
    if not self.enabled:
      return
    self._f.write(json.dumps(row) + "\n")
    self._f.flush()
    if self._tb is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in row.items()
                if k != "step" and isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                and math.isfinite(float(v))]
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(row["step"]),
                                         summary=summary_pb2.Summary(value=values)))

  def image(self, tag: str, step: int, png: bytes, height: int, width: int) -> None:
    """An encoded PNG as a TensorBoard image (the same grid that goes to samples/)."""
    if self._tb is None or not self.enabled:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2
    img = summary_pb2.Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                       summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                                                   image=img)])))

  def __exit__(self, *exc):
    if not self.enabled:
      return
    self._f.close()
    if self._tb is not None:
      self._tb.close()


def _rows(path: str) -> list[tuple[str, dict]]:
  """(line, row) of every complete row; a run killed while writing leaves a last line cut short, skipped here."""
  out = []
  with open(path) as f:
    for line in f:
      if not line.endswith("\n"):
        break
      try:
        out.append((line, json.loads(line)))
      except json.JSONDecodeError:
        if line.strip():
          raise ValueError(f"{path}: a metrics row that is not JSON: {line[:80]!r}") from None
  return out


def read(path: str) -> list[dict]:
  return [row for _, row in _rows(path)]


def truncate(path: str, upto: int) -> None:
  """On resume, drop rows logged after the restored checkpoint so the file holds one clean curve (rewritten
  atomically: a kill during it leaves the old file)."""
  if not os.path.exists(path):
    return
  keep = [line for line, row in _rows(path) if row["step"] <= upto]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def save_grid(images: np.ndarray, cols: int, path: str) -> np.ndarray:
  """(N, H, W, 3) uint8 -> one PNG grid of `cols` columns (a group per row); returns the grid."""
  from PIL import Image
  n, h, w, _ = images.shape
  rows = -(-n // cols)
  grid = np.zeros((rows * h, cols * w, 3), np.uint8)
  for i, img in enumerate(images):
    grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = img
  Image.fromarray(grid).save(path)
  return grid


def plot_curve(metrics_path: str, out: str, key: str = "reward_mean", window: int = 10) -> None:
  """`key` per step from a metrics.jsonl, raw and as a trailing moving average, with axes and labels."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [r for r in read(metrics_path) if key in r]
  steps = np.asarray([r["step"] for r in rows])
  ys = np.asarray([r[key] for r in rows], np.float64)
  fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
  ax.plot(steps, ys, color="0.7", lw=1, label="per step")
  if len(ys) > 1:
    k = min(window, len(ys))
    smooth = np.convolve(ys, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], smooth, color="C0", lw=2, label=f"mean of {k} steps")
  ax.set_xlabel("step")
  ax.set_ylabel(key.replace("_", " "))
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  fig.savefig(out)
  plt.close(fig)
