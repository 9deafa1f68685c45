"""Multi-process runs: `jax.distributed.initialize` from the run config or the environment, and the few
host-side collectives the trainers need (gathering small per-row arrays, agreeing on a value).

Where the processes come from:
- `python -m unirl_jax.launch --nproc N -- CMD` sets UNIRL_COORDINATOR / UNIRL_NUM_PROCESSES / UNIRL_PROCESS_ID
  (and the CPU device count) for each process it starts on this machine;
- a multi-task SLURM step (`srun`) or, with UNIRL_DISTRIBUTED=on, a TPU pod slice describes itself: JAX's cluster
  detection finds the coordinator;
- `distributed.coordinator` + `num_processes` + `process_id` in the run config name it explicitly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np

ENV_COORDINATOR = "UNIRL_COORDINATOR"
ENV_NUM_PROCESSES = "UNIRL_NUM_PROCESSES"
ENV_PROCESS_ID = "UNIRL_PROCESS_ID"
ENV_MODE = "UNIRL_DISTRIBUTED"  # overrides distributed.mode (auto | on | off)
MODES = ("auto", "off", "on")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """How a run finds its other processes."""

  # "auto": the launcher's environment, else a detected TPU pod / SLURM job of more than one task, else one
  # process; "on": always call jax.distributed.initialize (explicit settings or JAX's cluster detection);
  # "off": one process, whatever the environment says.
  mode: str = "auto"
  coordinator: str = ""  # "host:port" of process 0 ("" = from the environment or the cluster)
  num_processes: int = 0  # 0 = from the environment or the cluster
  process_id: int = -1  # -1 = from the environment or the cluster
  initialization_timeout_s: int = 300  # how long a process waits for the others to join

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"distributed.mode {self.mode!r} not one of {MODES}")


def _cluster_detected() -> bool:
  """A multi-task SLURM step or a multi-host TPU slice, which jax.distributed.initialize() configures itself."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def _env_int(name: str, default: int) -> int:
  value = os.environ.get(name, "")
  try:
    return int(value) if value else default
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} is not a whole number") from None


def settings_from_env(cfg: DistributedSettings) -> Optional[dict]:
  """The keyword arguments of jax.distributed.initialize for this process, or None for a one-process run."""
  mode = os.environ.get(ENV_MODE, "") or cfg.mode
  if mode not in MODES:
    raise ValueError(f"{ENV_MODE}={mode!r} not one of {MODES}")
  cfg = dataclasses.replace(cfg, mode=mode)
  if cfg.mode == "off":
    return None
  kw = {}
  coord = cfg.coordinator or os.environ.get(ENV_COORDINATOR, "")
  n = cfg.num_processes or _env_int(ENV_NUM_PROCESSES, 0)
  pid = cfg.process_id if cfg.process_id >= 0 else _env_int(ENV_PROCESS_ID, -1)
  given = [bool(coord), n > 0, pid >= 0]
  if any(given) and not all(given):
    raise ValueError(f"distributed: give all of coordinator, num_processes and process_id (or none: the cluster "
                     f"detects them); got coordinator={coord!r}, num_processes={n}, process_id={pid} (settings "
                     f"distributed.* or the environment's {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})")
  if all(given):
    if not 0 <= pid < n:
      raise ValueError(f"distributed: process_id {pid} is not in [0, num_processes={n})")
    if n == 1 and cfg.mode == "auto":
      return None
    kw = {"coordinator_address": coord, "num_processes": n, "process_id": pid}
  elif cfg.mode == "auto" and not _cluster_detected():
    return None
  kw["initialization_timeout"] = cfg.initialization_timeout_s
  return kw


_initialized = False


def initialize(cfg: Optional[DistributedSettings] = None) -> bool:
  """Joins the run's other processes (once; before anything touches a JAX device). True when multi-process."""
  global _initialized
  import jax
  kw = settings_from_env(cfg or DistributedSettings())
  if kw is None or _initialized:
    return _initialized
  # Collectives between the CPU devices of several processes (only the CPU client reads it: harmless on GPU/TPU).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)
  _initialized = True
  return True


def is_main() -> bool:
  """Process 0: the one that writes metrics, samples, exports and console lines."""
  import jax
  return jax.process_index() == 0


def gather(x: Any) -> np.ndarray:
  """A global jax array (any sharding) as one numpy array on every process; host arrays pass through."""
  import jax
  if not isinstance(x, jax.Array):
    return np.asarray(x)
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_rows(x: Any) -> np.ndarray:
  """The rows of a global array (split on axis 0) that this process's devices hold, in order, as numpy."""
  import jax
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  blocks = {}
  for shard in x.addressable_shards:  # replicas over the other mesh axes hold the same block: keep one
    blocks.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)])


def assemble_rows(local: np.ndarray, rows: slice, n: int) -> np.ndarray:
  """The whole n-row array on every process, from each process's `local` rows (its block `rows`)."""
  import jax
  local = np.asarray(local)
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  parts = np.asarray(multihost_utils.process_allgather(local, tiled=False))  # (processes, rows, ...)
  starts = np.asarray(multihost_utils.process_allgather(np.int64(rows.start), tiled=False)).reshape(-1)
  out = np.empty((n,) + local.shape[1:], local.dtype)
  for start, part in zip(starts, parts):
    out[start:start + len(part)] = part
  return out


def all_ok(ok: bool) -> bool:
  """True on every process when `ok` holds on all of them (so that all fail together, none left waiting)."""
  import jax
  if jax.process_count() == 1:
    return bool(ok)
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(bool(ok)))))


def same_everywhere(value: Any, what: str) -> None:
  """Fails on every process when a host value differs between them (e.g. a padded length), naming it."""
  import jax
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  multihost_utils.assert_equal(np.asarray(value), f"{what} differs between processes")


def barrier(name: str) -> None:
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
