"""Orbax save/restore of param pytrees and train states, restoring straight into a given sharding."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


def _abstract(tree: Any, shardings: Any = None) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs), carrying `shardings` when given."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                        tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def save_params(path: str, params: Any) -> None:
  """Writes a param pytree (numpy or jax arrays) to `path`, restorable by `restore_params`.

  Host (numpy) arrays are written without orbax's defensive deep copy, so converting a checkpoint needs
  about the params' size in RAM, not twice it. Callers must not mutate them until this returns. A tree of host
  arrays is written by the calling process alone (in a multi-process run: process 0 exports); one with jax arrays
  needs every process.
  """
  handlers = ocp.type_handlers
  registry = handlers.create_type_handler_registry(
      (np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False)), (jax.Array, handlers.ArrayHandler()),
      (int, handlers.ScalarHandler()), (float, handlers.ScalarHandler()), (np.number, handlers.ScalarHandler()))
  # Host arrays are written by this process alone (in a multi-process run the others do not take part).
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()},
                                             barrier_sync_key_prefix=f"save_params_{jax.process_index()}")
  if any(isinstance(x, jax.Array) for x in jax.tree.leaves(params)):
    alone = ocp.options.MultiprocessingOptions()
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry, multiprocessing_options=alone),
                           multiprocessing_options=alone)
  ckptr.save(os.path.abspath(path), args=ocp.args.PyTreeSave(params))
  ckptr.close()


def saved_tree(path: str) -> Any:
  """The tree of array metadata (shape, dtype) of a pytree checkpoint dir, without reading the arrays."""
  ckptr = ocp.StandardCheckpointer()
  try:
    meta = ckptr.metadata(os.path.abspath(path))
  finally:
    ckptr.close()
  tree = getattr(meta, "item_metadata", meta)
  return getattr(tree, "tree", tree)


def restore_params(path: str, target: Any = None, shardings: Any = None, as_numpy: bool = False) -> Any:
  """Reads params saved by `save_params`.

  target: a pytree of arrays / ShapeDtypeStructs giving structure, shapes and dtypes (optional);
  shardings: a matching pytree of `jax.sharding.Sharding` to restore each array straight onto.
  Without either, arrays come back on the default device with their saved dtypes; `as_numpy` returns
  host numpy arrays instead (for exporting without a device copy). A target whose entries or shapes differ from
  the saved ones is a CheckpointMismatch naming them (dtypes may differ: arrays are cast on restore).
  """
  path = os.path.abspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no params checkpoint at {path}")
  if target is not None:
    diff = tree_differences(saved_tree(path), target, dtypes=False)
    if diff:
      raise CheckpointMismatch(f"the params in {path} do not fit the model: {'; '.join(diff)}")
  if as_numpy:
    ckptr = ocp.PyTreeCheckpointer()
    try:
      tree = saved_tree(path)
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    finally:
      ckptr.close()
  ckptr = ocp.StandardCheckpointer()
  try:
    if target is None:
      tree = saved_tree(path)
      dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)
      if shardings is None:
        shardings = jax.tree.map(lambda _: dev, target)
    return ckptr.restore(path, _abstract(target, shardings))
  finally:
    ckptr.close()


class CheckpointMismatch(ValueError):
  """A checkpoint written by another config than the run's (other params, shapes or dtypes)."""


def _key_path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def tree_differences(saved: Any, wanted: Any, limit: int = 3, dtypes: bool = True) -> list[str]:
  """What differs between a saved tree's metadata and the arrays a run wants, by path: entries missing from the
  checkpoint, entries only in it, shapes and (unless not `dtypes`) dtypes; at most `limit` examples of each."""
  got = {_key_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
  want = {_key_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(wanted)[0]}
  groups = [[f"{k}: not in the checkpoint" for k in want if k not in got],
            [f"{k}: in the checkpoint, not in the run" for k in got if k not in want], []]
  for k in want:
    if k in got:
      a, b = got[k], want[k]
      if tuple(getattr(a, "shape", ())) != tuple(np.shape(b)):
        groups[2].append(f"{k}: shape {tuple(getattr(a, 'shape', ()))} saved, {tuple(np.shape(b))} wanted")
      elif dtypes and getattr(a, "dtype", None) is not None and np.dtype(a.dtype) != np.dtype(b.dtype):
        groups[2].append(f"{k}: dtype {np.dtype(a.dtype)} saved, {np.dtype(b.dtype)} wanted")
  out = []
  for g in groups:
    out += g[:limit] + ([f"... {len(g) - limit} more like it"] if len(g) > limit else [])
  return out


TMP_MARK = ".orbax-checkpoint-tmp"  # orbax writes a step into STEP.orbax-checkpoint-tmp-* and renames it when done


class TrainCheckpoints:
  """Step-numbered train-state checkpoints (async saves, keep the last K), restored into given shardings.

  A save cut short (the process killed while writing) leaves a temporary dir that is never taken for a checkpoint:
  it is reported in `incomplete` and removed; `restore_latest` falls back past a checkpoint that does not read."""

  def __init__(self, directory: str, max_to_keep: Optional[int] = 3, save_interval_steps: int = 1,
               async_save: bool = True):
    directory = os.path.abspath(directory)
    self.incomplete = sorted(n for n in os.listdir(directory) if TMP_MARK in n) if os.path.isdir(directory) else []
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
                                           enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(directory, options=options)

  def restore_latest(self, abstract_state: Any, shardings: Any = None, log=print) -> tuple[Any, Any, Optional[int]]:
    """(state, extra, step) of the newest checkpoint that reads, or (None, None, None) when there is none. Each
    incomplete save and each unreadable checkpoint passed over is reported through `log`."""
    for name in self.incomplete:
      log(f"checkpoint {os.path.join(str(self.manager.directory), name)} was left incomplete (the run stopped "
          f"while saving it): ignored")
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:  # a damaged checkpoint's metadata does not read (or holds nothing): fall back
        if not jax.tree.leaves(saved_tree(os.path.join(str(self.manager.directory), str(step), "state"))):
          raise ValueError("no arrays in its metadata")
      except Exception as e:  # noqa: BLE001  (its metadata does not read: a damaged checkpoint)
        log(f"checkpoint step {step} in {self.manager.directory} does not read ({type(e).__name__}: "
            f"{str(e)[:200]}): trying the previous one")
        continue
      try:
        state, extra = self.restore(abstract_state, step, shardings, with_extra=True)
      except CheckpointMismatch:
        raise
      except Exception as e:  # noqa: BLE001  (any failure to read it: fall back to the one before)
        log(f"checkpoint step {step} in {self.manager.directory} does not read ({type(e).__name__}: "
            f"{str(e)[:200]}): trying the previous one")
        continue
      return state, extra, step
    return None, None, None

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, extra: Optional[dict] = None, force: bool = False) -> bool:
    """Saves the state pytree and, if given, a JSON-able `extra` (e.g. the data iterator's state)."""
    args = {"state": ocp.args.StandardSave(state)}
    if extra is not None:
      args["extra"] = ocp.args.JsonSave(extra)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def restore(self, abstract_state: Any, step: Optional[int] = None, shardings: Any = None,
              with_extra: bool = False) -> Any:
    """The state (into `shardings` when given); with_extra also returns the saved JSON (or None)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
    diff = tree_differences(saved_tree(os.path.join(str(self.manager.directory), str(step), "state")),
                            abstract_state)
    if diff:
      raise CheckpointMismatch(f"checkpoint step {step} in {self.manager.directory} was written by another config "
                               f"than this run's: {'; '.join(diff)} (resume with the config that wrote it, or "
                               f"start in a new workdir)")
    args = {"state": ocp.args.StandardRestore(_abstract(abstract_state, shardings))}
    has_extra = os.path.isdir(os.path.join(str(self.manager.directory), str(step), "extra"))
    if has_extra:
      args["extra"] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**args))
    if with_extra:
      return out["state"], (out["extra"] if has_extra else None)
    return out["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
