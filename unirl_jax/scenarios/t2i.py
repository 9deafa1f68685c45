"""Text-to-image GRPO (UniRL's `T2IGRPOTrainer`, docs/algorithms.md §2): captions -> LM + queries + connector ->
G SDE rollouts each with CFG and per-step log-probs -> DC-AE decode -> image rewards; the DM loss trains the DiT,
connector and queries."""

from __future__ import annotations

import jax
import numpy as np

from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data.pipeline import to_uint8
from unirl_jax.rl import dm
from unirl_jax.rl.batch import Condition, DMRows, Experience
from unirl_jax.scenarios.base import RewardInputs, Rollout, Task, jit_rows
from unirl_jax import train_state


class TextToImage(Task):
  name = "t2i"

  def __init__(self, engine):
    super().__init__(engine)
    c = engine.config
    self.schedule = engine.put_replicated(c.dm.schedule())
    model = engine.model

    def rollout(trainable, frozen, condition, schedule, rng):
      return dm.rollout(model, train_state.merge(trainable, frozen), condition, rng, c.dm, schedule, engine.latent_hw)

    example = Condition(np.zeros((c.rows, 1), np.int32), np.ones((c.rows, 1), np.int32), self._shift_example())
    self._rollout = jit_rows(engine, rollout, engine.state["trainable"], engine.frozen, example, self.schedule,
                             jax.random.PRNGKey(0), replicated_args=(3, 4))

  def _shift_example(self):
    return None

  def loss_parts(self) -> tuple:
    return (dm.DMLoss(self.engine.model, self.engine.config.dm),)

  def condition(self, texts: list[str]) -> Condition:
    """The DM condition rows of the step's captions: the RL chat prompt, repeated G times (group-major)."""
    e = self.engine
    c = e.config
    ids, mask = prompt_lib.encode(e.tok, [prompt_lib.t2i(t) for t in texts], c.max_text_len, "max_text_len",
                                  c.text_pad, c.text_pad_multiple)
    g = c.group_size
    return Condition(np.repeat(ids, g, axis=0), np.repeat(mask, g, axis=0))

  def rollout(self, step: int, rng) -> Rollout:
    e = self.engine
    recs = e.prompts.step_records(step)
    texts = [r.text for r in recs]
    _, k_dm = jax.random.split(rng)
    return self.images(texts, e.put_rows(self.condition(texts)), k_dm, {}, metadata=[r.metadata for r in recs])

  def images(self, texts, condition: Condition, rng, samples: dict, completions=None, metadata=None) -> Rollout:
    """The DM rollouts for `condition`'s rows, and what the rewards see (`metadata`: one dict per prompt): this
    process's rows only, whose images stay on its host (the sample grid shows process 0's)."""
    e = self.engine
    traj, images = self._rollout(e.state["trainable"], e.frozen, condition, self.schedule, rng)
    g = e.config.group_size
    mine = e.local_rows(e.config.rows)
    rows = lambda xs: None if xs is None else xs[mine]
    per_row = lambda per_prompt: None if per_prompt is None else rows([x for x in per_prompt for _ in range(g)])
    reward_in = RewardInputs(to_uint8(e.local(images)), per_row(texts), rows(completions), per_row(metadata))
    exp = Experience(advantages=None, schedule=self.schedule, dm=DMRows(condition, traj))
    return Rollout(exp, reward_in, samples, local=True)
