"""The GRPO engine every scenario plugs into: task rollout (jit) -> host rewards -> group advantages -> one
update (jit) with the task's loss parts, on the shared trainer skeleton (`unirl_jax.trainer`).

Resumable: the train state is checkpointed, and the prompts and RNG of step s are pure functions of
(seed, s), so a restarted run continues exactly where an unbroken one would have been.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax import distributed, rewards, run_config, scenarios, train_state
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.metrics import plot_curve, save_grid
from unirl_jax.rl import update
from unirl_jax.rl.advantages import group_advantages
from unirl_jax.rl.batch import Experience
from unirl_jax.trainer import Hook, Trainer


class GRPOTrainer(Trainer):
  """config: a GRPO run config (ConfigDict or `run_config.GRPORun`); its `task` picks the scenario.

  init: (model, params, model_dir) to start from instead of `config.model` (e.g. a VAE fitted once and shared).
  """

  def __init__(self, config, workdir: str, init=None):
    run = config if isinstance(config, run_config.GRPORun) else run_config.load(config)
    if not isinstance(run, run_config.GRPORun):
      raise ValueError(f"GRPOTrainer needs a GRPO config, got mode {run.mode!r}")
    task_cls = scenarios.get(run.task)
    records = task_cls.records(run)
    self.prompts = prompt_lib.PromptSource(records, run.prompts_per_step, run.seed)
    super().__init__(run, workdir, run.total_steps(len(self.prompts)), init)
    c = self.config
    n_batch = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if c.rows % n_batch:
      raise ValueError(f"prompts_per_step x group_size = {c.rows} trajectories do not split over the mesh's "
                       f"{n_batch} data x fsdp devices: change mesh.data/mesh.fsdp or the batch")
    f = self.model.config.vae.spatial_compression_ratio
    if c.image_size % f:
      raise ValueError(f"image_size {c.image_size} is not a multiple of the VAE compression {f}")
    self.latent_hw = (c.image_size // f, c.image_size // f)
    from unirl_jax.rewards import clip as clip_rewards
    self.reward_fns = {**dict(c.remote_rewards), **clip_rewards.from_config(c.clip_rewards)}
    self.reward_fns.update(task_cls.rewards(c, self.reward_fns))
    rewards.check(c.reward, self.reward_fns)  # fail now on an unknown reward, not after the first rollout
    os.makedirs(os.path.join(self.workdir, "samples"), exist_ok=True)
    # The reference policy: the initial trainable params; everything frozen is shared, not copied.
    self.ref_trainable = self.place(train_state.cast_floating(jax.tree.map(jnp.array, self.state["trainable"]),
                                                              c.model.frozen_dtype))
    self.task = scenarios.make(c.task, self)
    self.parts = self.task.loss_parts()
    self._updates = {}

  # ---- the step -------------------------------------------------------------------------------

  def update_fn(self, exp: Experience):
    """The jitted update for this experience's structure, with explicit shardings: rows split over the batch
    axes, the schedule replicated, state and params in their own shardings (the state donated)."""
    key = jax.tree.structure(exp)
    if key not in self._updates:
      exp_sh = self.row_shardings(exp.row_part()).replace(
          schedule=jax.tree.map(lambda _: self.replicated, exp.schedule))
      frozen_sh = jax.tree.map(lambda x: x.sharding, self.frozen)
      ref_sh = jax.tree.map(lambda x: x.sharding, self.ref_trainable)
      fn = functools.partial(update.update_step, self.parts, self.tx, self.config.train.micro_batch)
      self._updates[key] = jax.jit(fn, donate_argnums=(0,), in_shardings=(self.state_shardings, frozen_sh, ref_sh,
                                                                          exp_sh),
                                   out_shardings=(self.state_shardings, self.replicated))
    return self._updates[key]

  def advantages(self, r: np.ndarray) -> np.ndarray:
    a = self.config.advantage
    return np.asarray(group_advantages(r, self.config.group_size, a.std, a.eps, a.clip))

  def train_step(self, step: int):
    c = self.config
    rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), step)
    roll = self.task.rollout(step, rng)
    # Each process scores the rows its devices hold; the groups' advantages need every row's reward.
    mine = self.local_rows(c.rows)
    local = roll.rewards if roll.local or mine == slice(0, c.rows) else roll.rewards.rows(mine)
    failure = None
    try:
      r, parts = rewards.score(c.reward, local, self.reward_fns)
    except Exception as e:  # noqa: BLE001  (a service down, a bad reply: every process stops, after a checkpoint)
      failure = e
    if not distributed.all_ok(failure is None):
      failure = failure or RuntimeError("another process could not score its rows (its log names the cause)")
      failure.every_process = True  # all processes stop here together: they can checkpoint together
      raise failure
    whole = lambda x: distributed.assemble_rows(x, mine, c.rows)
    r, parts = whole(r), {k: whole(v) for k, v in parts.items()}
    adv = self.advantages(r)
    exp = self.task.with_advantages(roll.experience.replace(advantages=self.put_rows(adv)), parts)
    self.state, m = self.update_fn(exp)(self.state, self.frozen, self.ref_trainable, exp)
    m = self.gather(m)
    row = {"step": step, "reward_mean": float(r.mean()), "reward_std": float(r.std()),
           "adv_mean": float(adv.mean()), "adv_abs_max": float(np.abs(adv).max()), "loss": float(m["loss"]),
           **{k: float(v) for k, v in m.items() if k != "loss"}}
    if len(parts) > 1:
      row.update({f"reward_{k}": float(v.mean()) for k, v in parts.items()})
    return row, roll

  # ---- the loop -------------------------------------------------------------------------------

  def _samples(self, step: int, roll, log) -> None:
    if not distributed.is_main():
      return
    path = os.path.join(self.workdir, "samples", f"step_{step:06d}.png")
    images = self.task.sample_grid(roll)
    if images is not None:
      grid = save_grid(*images, path)
      log.image("samples", step, open(path, "rb").read(), *grid.shape[:2])
    if roll.samples:
      with open(path[:-4] + ".json", "w") as f:
        json.dump(roll.samples, f, indent=1)

  def run(self, stop_after=None) -> list[dict]:
    """Trains to the end (or stops after `stop_after`); a complete run draws its reward curve and exports its
    params to WORKDIR/final (a unified checkpoint: `python -m unirl_jax.generate --ckpt WORKDIR`)."""
    history = self.fit(self.train_step, stop_after, hooks=[Hook(self.config.train.sample_every, self._samples)],
                       postfix=lambda r: {"reward": f"{r['reward_mean']:.3f}", "s": f"{r['step_time']:.1f}"},
                       progress=self.config.progress, desc="grpo")
    if (stop_after or self.total_steps) >= self.total_steps:
      plot_curve(os.path.join(self.workdir, "metrics.jsonl"), os.path.join(self.workdir, "reward_curve.png"))
      self.export()
    return history
