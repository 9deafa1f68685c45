"""The trainer skeleton every training loop shares (GRPO scenarios and pretraining): mesh, model build,
trainable/frozen split placed on the mesh, optimizer, train state, Orbax checkpoints with exact resume,
metrics (JSONL + TensorBoard), and hooks that run every N steps.

A loop supplies `step_fn(step) -> (row, out)`; `fit` restores the latest checkpoint (and the data iterator's
position, when the loop reads one), runs the remaining steps, logs each row, runs the hooks and checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from unirl_jax import checkpoint, distributed, metrics, optim, sharding, train_state
from unirl_jax import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class Hook:
  """fn(step, out, log) after every `every`-th step (0: never); `out` is what the step returned beside its row."""

  every: int
  fn: Callable[[int, Any, metrics.MetricsLog], None]


class Trainer:
  """Builds everything a run shares from its typed config; `fit` trains and resumes.

  init: (model, params, model_dir) to start from instead of building them from `config.model`.
  """

  def __init__(self, config, workdir: str, total_steps: int, init: Optional[tuple] = None):
    self.config = config
    self.workdir = os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.total_steps = total_steps
    self.mesh = sharding.make_mesh(config.mesh)
    self.model, params, self.model_dir = init if init is not None else train_state.build_model(config.model,
                                                                                            config.seed)
    trainable, frozen = train_state.split(params, config.train.trainable)
    if init is not None:  # the update donates the train state: the caller's arrays must survive it
      trainable = jax.tree.map(jnp.array, trainable)
    self.frozen = self.place(train_state.cast_floating(frozen, config.model.frozen_dtype))
    self.tx = optim.adamw(config.optim, total_steps, tuple(trainable))
    self.state, self.state_shardings = train_state.init_state(self.place(trainable), self.tx, self.mesh)
    self.ckpt = checkpoint.TrainCheckpoints(os.path.join(self.workdir, "checkpoints"),
                                            max_to_keep=config.train.keep_checkpoints)
    self.tok = tokenizer_lib.load(self.model_dir)
    vocab = self.model.config.lm.text.vocab_size
    if len(self.tok) > vocab:
      raise ValueError(f"the tokenizer has {len(self.tok)} tokens but the LM vocabulary only {vocab} "
                       f"(model.init {config.model.init!r} needs its own tokenizer files)")

  # ---- placement ------------------------------------------------------------------------------

  def place(self, tree: dict) -> dict:
    """A subset of the unified params on the mesh by their logical axes."""
    return train_state.place(self.model, tree, self.mesh)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def row_shardings(self, tree):
    """Shardings that split every leaf's axis 0 (the rows) over the mesh's batch axes."""
    return jax.tree.map(lambda x: sharding.batch_sharding(self.mesh, np.ndim(x)), tree)

  def local_rows(self, n: int) -> slice:
    """The rows of an n-row batch that this process's devices hold (all of them on one process)."""
    return sharding.process_rows(self.mesh, n)

  def put_rows(self, tree, local: bool = False):
    """Host arrays with the rows on axis 0 -> global arrays split over the batch axes. The host arrays hold every
    row of the step (each process keeps its `local_rows`), or with local=True only this process's rows."""
    def one(x):
      x = np.asarray(x)
      sh = sharding.batch_sharding(self.mesh, x.ndim)
      if local:
        n = x.shape[0] * jax.process_count()
        return jax.make_array_from_process_local_data(sh, x, (n,) + x.shape[1:])
      return jax.make_array_from_process_local_data(sh, x[self.local_rows(x.shape[0])], x.shape)
    return jax.tree.map(one, tree)

  def gather(self, tree):
    """Global arrays (any sharding) -> numpy arrays of all their rows, on every process."""
    return jax.tree.map(distributed.gather, tree)

  def local(self, tree):
    """Global arrays split by rows -> numpy arrays of this process's rows (`local_rows`), no communication."""
    return jax.tree.map(distributed.local_rows, tree)

  def put_replicated(self, tree):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

  def params(self) -> dict:
    """The current params as numpy arrays (every process takes part; each gets them all)."""
    return train_state.merge(self.gather(self.state["trainable"]), self.gather(self.frozen))

  def export(self, path: Optional[str] = None) -> str:
    """A unified checkpoint dir of the current params (default WORKDIR/final; `python -m unirl_jax.generate
    --ckpt WORKDIR` finds it), with the tokenizer files of the model it started from. Every process calls it;
    process 0 writes."""
    from unirl_jax.models import unified
    path = path or os.path.join(self.workdir, "final")
    params = self.params()
    if distributed.is_main():
      unified.save(path, self.model.config, params, side_files_from=self.model_dir, overwrite=True)
    distributed.barrier("export")
    return path

  # ---- the loop -------------------------------------------------------------------------------

  def fit(self, step_fn: Callable[[int], tuple[dict, Any]], stop_after: Optional[int] = None, data=None,
          hooks: Sequence[Hook] = (), postfix: Optional[Callable[[dict], dict]] = None,
          progress: bool = False, desc: str = "train") -> list[dict]:
    """Trains to `total_steps` (or stops after step `stop_after`, as a killed run would).

    data: an iterator with get_state/set_state (grain), checkpointed with the train state.
    """
    from tqdm import tqdm
    start = 0
    main = distributed.is_main()
    state, extra, _ = self.ckpt.restore_latest(self.state, self.state_shardings,
                                               log=print if main else (lambda _: None))
    if state is not None:
      self.state = state
      if data is not None:
        if not extra or "data" not in extra:
          raise ValueError(f"the checkpoint in {self.ckpt.manager.directory} has no data position to resume from")
        data.set_state(extra["data"])
      start = int(distributed.gather(self.state["step"]))
      if main and (not progress or self.ckpt.incomplete):
        print(f"resumed from step {start} in {self.ckpt.manager.directory}")
    last = min(self.total_steps, stop_after or self.total_steps)
    history = []
    bar = tqdm(range(start + 1, last + 1), initial=start, total=self.total_steps, desc=desc,
               disable=not (progress and main))
    with metrics.MetricsLog(self.workdir, start, self.config.train.tensorboard, enabled=main) as log:
      for step in bar:
        t0 = time.perf_counter()
        position = None if data is None else data.get_state()
        try:
          row, out = step_fn(step)
        except (Exception, KeyboardInterrupt) as e:  # Ctrl-C mid-step keeps the last completed step too
          self._save_before_failing(step - 1, position, e)
          raise
        row["step_time"] = time.perf_counter() - t0
        history.append(row)
        log.write(row)
        if postfix is not None:
          bar.set_postfix(postfix(row))
        for hook in hooks:
          if hook.every and step % hook.every == 0:
            hook.fn(step, out, log)
        if step % self.config.train.checkpoint_every == 0 or step == self.total_steps:
          self.ckpt.save(step, self.state, extra=None if data is None else {"data": data.get_state()}, force=True)
    self.ckpt.wait()
    return history

  def _save_before_failing(self, step: int, position, error: BaseException) -> None:
    """A step failed before its update (a reward service down, a bad record): checkpoint the last completed step
    so a restart loses nothing; a failure after the update donated the state leaves nothing to save. In a
    multi-process run only a failure every process shares (`every_process`) is saved: a save waits for all."""
    if jax.process_count() > 1 and not getattr(error, "every_process", False):
      return
    if step < 1 or self.ckpt.latest_step() == step or any(
        getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(self.state)):
      return
    try:
      self.ckpt.save(step, self.state, extra=None if position is None else {"data": position}, force=True)
      self.ckpt.wait()
    except Exception as e2:  # noqa: BLE001  (report the original failure, not this one)
      print(f"could not checkpoint step {step} after the failure: {e2}")
      return
    if distributed.is_main():
      print(f"step {step + 1} failed ({type(error).__name__}); checkpointed step {step} in "
            f"{self.ckpt.manager.directory}: restart the same command to resume from it")
