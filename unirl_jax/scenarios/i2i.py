"""Instructional editing with cycle consistency (UniRL's `I2IGRPOTrainer`, `../shared/reference/unirl.md` §3.6):
per source image and instruction, the LM sees the source through the vision tower and the DiT gets its noisy
latents as the reference (0.8·z + 0.2·ε, drawn once per rollout, shared by the group and every step); G forward
edits are sampled with the SDE under three-way CFG; each edited image goes back through the vision tower and the
VAE with the reverse instruction for one reconstruction, also an SDE rollout. The rewards see (source, edit,
reconstruction); one advantage per pair trains both trajectories (DM loss of each, β·KL of each)."""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image

from unirl_jax import train_state
from unirl_jax.data import edits as edit_lib
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data.pipeline import (ImageSpec, edit_texts, square, to_uint8, to_unit_range, vit_patches,
                                     vit_processor)
from unirl_jax.data.records import open_image
from unirl_jax.rl import dm
from unirl_jax.rl.batch import Condition, DMRows, Experience
from unirl_jax.scenarios.base import RewardInputs, Rollout, Task, jit_rows


class Editing(Task):
  name = "i2i"

  @classmethod
  def records(cls, run) -> list:
    if not run.prompt_file:
      raise ValueError("task i2i needs edit records: set prompt_file to a .jsonl or .parquet with image, prompt, "
                       "reverse_prompt, caption, target_caption (python -m unirl_jax.data.shape_edits writes some)")
    recs = edit_lib.read_edit_file(run.prompt_file)
    return edit_lib.select_kinds(recs, run.edit.kinds, run.prompt_file) if run.edit.kinds else recs

  def __init__(self, engine):
    super().__init__(engine)
    c, model = engine.config, engine.model
    if c.dm.ref_cfg is None:
      raise ValueError("task i2i guides with the reference: set dm.ref_cfg (the original's 1.0)")
    if c.edit.advantage == "split":
      if not c.edit.cycle:
        raise ValueError("edit.advantage='split' gives the reconstruction its own advantage: it needs edit.cycle=True")
      if c.edit.cycle_reward not in {t.name for t in c.reward}:
        raise ValueError(f"edit.advantage='split': edit.cycle_reward {c.edit.cycle_reward!r} is not one of the "
                         f"run's rewards {[t.name for t in c.reward]}")
    if not model.config.dit.ref_branch:
      raise ValueError("task i2i needs a DiT with the reference branch (dit.ref_branch)")
    v = model.config.lm.vision
    unit = v.patch_size * v.spatial_merge_size
    if c.edit.vit_size % unit:
      raise ValueError(f"edit.vit_size {c.edit.vit_size} is not a multiple of {unit} (the ViT's patch x merge)")
    self.spec = ImageSpec(c.image_size, c.edit.vit_size, v.patch_size, v.spatial_merge_size)
    self.vit = vit_processor(self.spec)
    self.grid = self.spec.vit_grid
    self.schedule = engine.put_replicated(c.dm.schedule())

    def rollout(trainable, frozen, cd, ref, schedule, rng):
      return dm.rollout(model, train_state.merge(trainable, frozen), cd, rng, c.dm, schedule, engine.latent_hw,
                        ref=ref, task="i2i", grid=self.grid)

    def references(trainable, frozen, images, keys):
      z = model.encode(train_state.merge(trainable, frozen), images)
      return jax.vmap(model.noisy_reference)(z, keys)

    rows, s = c.rows, c.image_size
    ids = np.zeros((rows, 1), np.int32)
    pv = np.zeros((rows, int(np.prod(self.grid)), v.patch_dim), np.float32)
    example = Condition(ids, np.ones_like(ids), None, pv)
    f = model.config.vae.spatial_compression_ratio
    ref = np.zeros((rows, s // f, s // f, model.config.dit.in_channels), np.float32)
    tr, fr = engine.state["trainable"], engine.frozen
    self._rollout = jit_rows(engine, rollout, tr, fr, example, ref, self.schedule, jax.random.PRNGKey(0),
                             replicated_args=(4, 5))
    self._references = jit_rows(engine, references, tr, fr, np.zeros((rows, s, s, 3), np.float32),
                                np.zeros((rows, 2), np.uint32))

  def loss_parts(self) -> tuple:
    e = self.engine
    parts = (dm.DMLoss(e.model, e.config.dm, task="i2i", grid=self.grid),)
    if e.config.edit.cycle:
      parts += (dm.DMLoss(e.model, e.config.dm, field="cycle", prefix="cycle_", task="i2i", grid=self.grid),)
    return parts

  def with_advantages(self, exp: Experience, parts: dict) -> Experience:
    e = self.engine
    if e.config.edit.advantage != "split":
      return exp
    # The term's own group-relative advantage, unweighted: it is not summed with the other terms here, and a
    # term may sit in the spec at weight 0 only to be scored (clip_cycle_gain next to the original's total).
    own = e.advantages(parts[e.config.edit.cycle_reward])
    return exp.replace(cycle=exp.cycle.replace(advantages=e.put_rows(own)))

  # ---- inputs ---------------------------------------------------------------------------------

  def condition(self, instructions: list[str], images: list[Image.Image]) -> Condition:
    """One condition row per (instruction, image): the RL edit prompt with the image's tokens, and its patches."""
    e = self.engine
    c = e.config
    text = edit_texts(instructions, self.spec, c.edit.literal_vision_end)
    ids, mask = prompt_lib.encode(e.tok, text, c.max_text_len, "max_text_len", c.text_pad, c.text_pad_multiple)
    return Condition(ids, mask, None, vit_patches(images, self.spec, self.vit))

  def references(self, images_u8: np.ndarray, rng, group: int):
    """Noisy reference latents of (rows, S, S, 3) uint8 images: one noise draw per `group` consecutive rows."""
    keys = np.asarray(jax.random.split(rng, len(images_u8) // group))
    e = self.engine
    return self._references(e.state["trainable"], e.frozen,
                            *e.put_rows((to_unit_range(images_u8), np.repeat(keys, group, axis=0))))

  # ---- the step -------------------------------------------------------------------------------

  def rollout(self, step: int, rng) -> Rollout:
    e = self.engine
    c = e.config
    g, s = c.group_size, c.image_size
    recs = e.prompts.step_records(step)
    k_src, k_edit, k_rec, k_cycle = jax.random.split(rng, 4)
    sources = [open_image(r.metadata["image"], r.metadata["origin"]).convert("RGB") for r in recs]
    src_u8 = np.repeat(np.stack([np.asarray(square(im, s)) for im in sources]), g, axis=0)
    instructions = [r.text for r in recs for _ in range(g)]
    cd = self.condition([r.text for r in recs], sources)
    cd = e.put_rows(jax.tree.map(lambda x: np.repeat(x, g, axis=0), cd))
    ref = self.references(src_u8, k_src, g)  # the source's, shared by its group and every step
    tr, fr = e.state["trainable"], e.frozen
    traj, edited = self._rollout(tr, fr, cd, ref, self.schedule, k_edit)
    edited = to_uint8(e.gather(edited))
    meta = [{k: v for k, v in r.metadata.items() if k != "image"} for r in recs for _ in range(g)]
    exp = Experience(advantages=None, schedule=self.schedule, dm=DMRows(cd, traj, ref))
    samples = {"instructions": [r.text for r in recs], "reverse_instructions": [r.metadata["reverse_prompt"]
                                                                               for r in recs],
               "captions": [r.metadata["caption"] for r in recs],
               "target_captions": [r.metadata["target_caption"] for r in recs]}
    recon = None
    if c.edit.cycle:
      rev = [m["reverse_prompt"] for m in meta]
      cd_rev = e.put_rows(self.condition(rev, [Image.fromarray(x) for x in edited]))
      ref_rev = self.references(edited, k_rec, 1)  # each edit is its reconstruction's reference
      traj_rev, recon = self._rollout(tr, fr, cd_rev, ref_rev, self.schedule, k_cycle)
      recon = to_uint8(e.gather(recon))
      exp = exp.replace(cycle=DMRows(cd_rev, traj_rev, ref_rev))
    reward_in = RewardInputs(edited, instructions, None, meta, sources=src_u8, reconstructions=recon)
    return Rollout(exp, reward_in, samples)

  def sample_grid(self, rollout: Rollout) -> tuple[np.ndarray, int]:
    """Per source: a row (source, its G edits), then a row (source, the G reconstructions) when cycling."""
    r = rollout.rewards
    g = self.engine.config.group_size
    out = []
    for p in range(len(r) // g):
      rows = [r.images] + ([r.reconstructions] if r.reconstructions is not None else [])
      for x in rows:
        out.append(r.sources[p * g][None])
        out.append(x[p * g:(p + 1) * g])
    return np.concatenate(out), g + 1
