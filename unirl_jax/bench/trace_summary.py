"""Where a traced program's device time goes: `jax.profiler` perfetto traces summarised by kernel and HLO op.

`python -m unirl_jax.bench.trace_summary TRACE_DIR` prints the busiest kernels and op kinds of the device events
(the GPU's streams; on CPU the XLA thunks) of the `*.trace.json.gz` under TRACE_DIR.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys

# A kernel's kind, from its name or its HLO op's (first match wins).
KINDS = (("gemm", r"gemm|cublas|nvjet|xmma|cutlass|matmul|dot|ynn"), ("conv", r"conv"),
         ("attention", r"attention|flash|fmha|cudnn"), ("reduce", r"reduce"), ("copy", r"copy|memcpy|memset|transpose"),
         ("scatter/gather", r"scatter|gather|dynamic.update.slice|dynamic.slice"), ("fusion", r"fusion"))


def kind_of(name: str) -> str:
  low = name.lower()
  return next((k for k, pat in KINDS if re.search(pat, low)), "other")


def load_events(trace_dir: str) -> list[dict]:
  """The complete ('X') events of the newest perfetto trace under trace_dir that ran an XLA op on a device
  (GPU streams; on CPU, the thunks carrying an `hlo_op`)."""
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir} (trace with create_perfetto_trace=True)")
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu_pids = {pid for pid, name in procs.items() if "gpu" in name.lower() or "/device:" in name.lower()}
  out = []
  for e in events:
    if e.get("ph") != "X" or not e.get("dur"):
      continue
    on_gpu = e["pid"] in gpu_pids
    if (gpu_pids and on_gpu) or (not gpu_pids and "hlo_op" in e.get("args", {})):
      out.append(e)
  return out


def summarize(trace_dir: str, top: int = 25) -> dict:
  """-> {"total_ms", "by_kind": {kind: ms}, "kernels": [(name, ms, calls)], "hlo_ops": [(op, ms, calls)]}; times
  summed over kernels (overlapping streams count twice)."""
  events = load_events(trace_dir)
  kernels, ops, kinds = collections.Counter(), collections.Counter(), collections.Counter()
  calls_k, calls_o = collections.Counter(), collections.Counter()
  for e in events:
    ms = e["dur"] / 1e3
    name = e["name"]
    op = re.sub(r"\.\d+$", "", str(e.get("args", {}).get("hlo_op", name)))
    kernels[name] += ms
    calls_k[name] += 1
    ops[op] += ms
    calls_o[op] += 1
    kinds[kind_of(name + " " + op)] += ms
  return {"total_ms": sum(kinds.values()), "by_kind": dict(kinds.most_common()),
          "kernels": [(k, v, calls_k[k]) for k, v in kernels.most_common(top)],
          "hlo_ops": [(k, v, calls_o[k]) for k, v in ops.most_common(top)]}


def format_summary(s: dict) -> str:
  total = s["total_ms"] or 1.0
  lines = [f"device time {s['total_ms']:.1f} ms"]
  lines += [f"  {k:15s} {v:10.1f} ms {100 * v / total:5.1f}%" for k, v in s["by_kind"].items()]
  lines.append("busiest kernels:")
  lines += [f"  {v:10.1f} ms {100 * v / total:5.1f}% x{n:<6d} {k[:110]}" for k, v, n in s["kernels"]]
  lines.append("busiest HLO ops:")
  lines += [f"  {v:10.1f} ms {100 * v / total:5.1f}% x{n:<6d} {k[:110]}" for k, v, n in s["hlo_ops"]]
  return "\n".join(lines)


if __name__ == "__main__":
  print(format_summary(summarize(sys.argv[1])))
