"""`python -m unirl_jax.launch --nproc 2 [--devices_per_process 4] -- python -m unirl_jax.train ...`

Starts a multi-process run on this machine: N copies of the command, each told its place through
UNIRL_COORDINATOR / UNIRL_NUM_PROCESSES / UNIRL_PROCESS_ID (read by `unirl_jax.distributed`), each with
`devices_per_process` CPU devices when it runs on CPU. Their output is prefixed with the process index. When one
fails, the others are stopped and its exit status is returned. On a TPU pod or a SLURM cluster no launcher is
needed (README: "Multi-host").
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from unirl_jax import distributed


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_env(base: dict, index: int, nproc: int, coordinator: str, devices: int) -> dict:
  """The environment of process `index`: its place in the run, and `devices` forced CPU devices."""
  env = dict(base)
  env[distributed.ENV_COORDINATOR] = coordinator
  env[distributed.ENV_NUM_PROCESSES] = str(nproc)
  env[distributed.ENV_PROCESS_ID] = str(index)
  if devices:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  return env


def _pump(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, b""):
    out.write(prefix + line.decode(errors="replace"))
    out.flush()


def launch(cmd: list[str], nproc: int, devices_per_process: int = 0, port: int = 0, env: dict | None = None,
           prefix: bool = True) -> int:
  """Runs `cmd` as `nproc` processes of one run; -> the first non-zero exit status (0 when all succeed)."""
  if nproc < 1:
    raise ValueError(f"--nproc must be >= 1, got {nproc}")
  if not cmd:
    raise ValueError("no command: give it after `--`, e.g. -- python -m unirl_jax.train --config ...")
  coordinator = f"localhost:{port or free_port()}"
  procs, pumps = [], []
  for i in range(nproc):
    p = subprocess.Popen(cmd, env=process_env(env if env is not None else os.environ, i, nproc, coordinator,
                                              devices_per_process),
                         stdout=subprocess.PIPE if prefix else None, stderr=subprocess.STDOUT if prefix else None,
                         start_new_session=True)
    procs.append(p)
    if prefix:
      t = threading.Thread(target=_pump, args=(p.stdout, f"[{i}] ", sys.stdout), daemon=True)
      t.start()
      pumps.append(t)
  status = 0
  try:
    live = set(range(nproc))
    while live:
      for i in sorted(live):
        rc = procs[i].poll()
        if rc is None:
          continue
        live.discard(i)
        if rc != 0 and status == 0:
          status = rc
          print(f"launch: process {i} exited with status {rc}; stopping the others", file=sys.stderr)
          _stop([procs[j] for j in live])
      time.sleep(0.1)
  except KeyboardInterrupt:
    _stop(procs)
    status = status or 130
  for t in pumps:
    t.join(timeout=5)
  return status


def _stop(procs) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGTERM)
  deadline = time.time() + 10
  for p in procs:
    try:
      p.wait(timeout=max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      os.killpg(p.pid, signal.SIGKILL)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if "--" not in argv:
    print("usage: python -m unirl_jax.launch --nproc N [--devices_per_process D] -- COMMAND ...", file=sys.stderr)
    return 2
  split = argv.index("--")
  ap = argparse.ArgumentParser(prog="python -m unirl_jax.launch")
  ap.add_argument("--nproc", type=int, required=True, help="processes to start on this machine")
  ap.add_argument("--devices_per_process", type=int, default=0,
                  help="CPU devices each process gets (XLA's forced host device count); 0 = leave XLA_FLAGS")
  ap.add_argument("--port", type=int, default=0, help="the coordinator's port (0: a free one)")
  args = ap.parse_args(argv[:split])
  try:
    return launch(argv[split + 1:], args.nproc, args.devices_per_process, args.port)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
