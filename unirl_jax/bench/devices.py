"""What the benchmark runs on: dense bf16 peak FLOP/s and HBM bandwidth of known accelerators, memory use."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from typing import Optional

import jax

# (substring of device_kind, lowercase) -> (dense bf16 TFLOP/s, HBM TB/s), from the vendors' data sheets.
PEAKS = (
    ("h200", 989.0, 4.8),
    ("h100", 989.0, 3.35),  # SXM; PCIe/NVL cards are lower and would show a higher MFU
    ("a100", 312.0, 2.04),
    ("tpu v6", 918.0, 1.64),
    ("tpu v5p", 459.0, 2.76),
    ("tpu v5 lite", 197.0, 0.82),
    ("tpu v5e", 197.0, 0.82),
    ("tpu v4", 275.0, 1.2),
)


def peak(device=None) -> tuple[Optional[float], Optional[float]]:
  """(bf16 FLOP/s, HBM bytes/s) of `device`, or (None, None) when unknown (CPU: MFU is not reported)."""
  kind = (device or jax.devices()[0]).device_kind.lower()
  for key, tflops, tbs in PEAKS:
    if key in kind:
      return tflops * 1e12, tbs * 1e12
  return None, None


def describe() -> dict:
  d = jax.devices()[0]
  flops, bw = peak(d)
  return {"platform": d.platform, "device_kind": d.device_kind, "device_count": jax.device_count(),
          "peak_bf16_flops": flops, "peak_hbm_bytes_per_s": bw, "host": platform.node(),
          "cpu": platform.processor() or platform.machine()}


def peak_memory_bytes() -> Optional[int]:
  """Peak bytes in use on device 0 (accelerators); on CPU the process's max RSS."""
  stats = memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"]
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def versions() -> dict:
  import flax
  import optax
  import importlib.metadata as md
  out = {"jax": jax.__version__, "jaxlib": md.version("jaxlib"), "flax": flax.__version__, "optax": optax.__version__,
         "python": platform.python_version()}
  for pkg in ("torch", "transformers", "diffusers"):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      pass
  return out


def memory_stats() -> Optional[dict]:
  """Device 0's allocator statistics (bytes in use, peak, limit) on accelerators; None on CPU."""
  d = jax.devices()[0]
  stats = d.memory_stats() if d.platform != "cpu" else None
  keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit", "largest_alloc_size", "bytes_reservable_limit")
  return {k: int(stats[k]) for k in keys if k in stats} if stats else None


def commit() -> Optional[str]:
  """The repository's HEAD commit, or None outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    return subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
