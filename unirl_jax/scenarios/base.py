"""The task interface the GRPO engine (`unirl_jax.rl.trainer.GRPOTrainer`) drives.

Per step the engine asks the task for a `Rollout` (the experience the loss needs, and what the rewards see),
scores it with the configured rewards, turns the rewards into group advantages (groups are the task's rows in
group-major order, `group_size` per prompt), and applies one update with the task's loss parts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import numpy as np

from unirl_jax.data import prompts as prompt_lib
from unirl_jax.rewards import RewardInputs
from unirl_jax.rl.batch import Experience

DEFAULT_PROMPTS = ("a red circle on a blue background", "a green square on a white background",
                   "a yellow triangle on a black background", "a blue circle on a yellow background")


@dataclasses.dataclass
class Rollout:
  experience: Experience  # on the mesh; advantages still unset
  rewards: RewardInputs  # every row's, or with `local` only the rows this process's devices hold
  samples: dict  # what the sample hook writes beside the grid (JSON-able), e.g. captions and completions
  local: bool = False  # `rewards` holds this process's rows only (its images never left its devices' host)


class Task:
  """A GRPO scenario. Subclasses set `name`, build their jitted rollout in __init__ and implement the rest."""

  name: ClassVar[str]

  def __init__(self, engine):
    self.engine = engine

  @classmethod
  def records(cls, run) -> list:
    """The run's prompt records (`prompts.PromptRecord`), read before the engine is built."""
    if run.prompt_file:
      return prompt_lib.read_prompt_file(run.prompt_file)
    return list(run.prompts or DEFAULT_PROMPTS)

  @classmethod
  def rewards(cls, run, fns: dict) -> dict:
    """Rewards this task adds for the run, by name (built on `fns`, the run's remote and CLIP rewards)."""
    return {}

  def loss_parts(self) -> tuple:
    """The loss terms (rl.dm.DMLoss, rl.lm.LMLoss, ...) summed with the shared advantage."""
    raise NotImplementedError

  def rollout(self, step: int, rng: jax.Array) -> Rollout:
    """The step's rollouts from the current policy (`engine.state["trainable"]` + `engine.frozen`)."""
    raise NotImplementedError

  def with_advantages(self, exp: Experience, parts: dict) -> Experience:
    """The step's experience (its shared advantages set) with any trajectory's own advantages, from the rewards'
    unweighted `parts` (every row's); the default: the shared ones only."""
    return exp

  def sample_grid(self, rollout: Rollout) -> tuple[np.ndarray, int] | None:
    """The images of the step's sample grid and its number of columns (a group per row); None: no images."""
    return rollout.rewards.images, self.engine.config.group_size


def jit_rows(engine, fn, *example_args, replicated_args: tuple[int, ...] = ()) -> Any:
  """`jax.jit(fn)` with explicit shardings: the args at `replicated_args` replicated, the first two args the
  trainable and frozen params in their shardings, the rest split by rows; outputs split by rows."""
  shapes = jax.eval_shape(fn, *example_args)
  in_sh = [engine.state_shardings["trainable"], jax.tree.map(lambda x: x.sharding, engine.frozen)]
  for i, a in enumerate(example_args[2:], start=2):
    in_sh.append(jax.tree.map(lambda _: engine.replicated, a) if i in replicated_args else engine.row_shardings(a))
  return jax.jit(fn, in_shardings=tuple(in_sh), out_shardings=engine.row_shardings(shapes))
