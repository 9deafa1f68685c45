"""Reflective generation (ours: the original released none; docs/scenarios.md): image 1 from the prompt (SDE
with log-probs) -> the LM sees image 1 and the prompt and judges it, `<think>…</think><judge>yes|no</judge>`,
and after a no writes a revised prompt in `<answer>` -> image 2 from the revision (SDE with log-probs). The
rewards (`rewards.reflection`) score the final image, the judgement against the verifier, and the gain of image 2;
one advantage per rollout trains image 1's trajectory, the judge's tokens and image 2's trajectory (only where
there is one), with the joint loss and per-group learning rates of the CoT scenario; reflect.advantage="split"
gives each image's trajectory the advantage of its own score instead."""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image

from unirl_jax import rewards as rewards_lib
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data.pipeline import ImageSpec, to_uint8, vit_patches, vit_processor
from unirl_jax.rewards import reflection
from unirl_jax.rl import dm, lm
from unirl_jax.rl.batch import Condition, DMRows, Experience
from unirl_jax.scenarios.base import RewardInputs, Rollout
from unirl_jax.scenarios.reason import decode, sample_completions, sampler_for
from unirl_jax.scenarios.t2i import TextToImage


# reflect.advantage="split": each image trajectory's own reward term (image 1: "dm", image 2: "revision").
SPLIT = {"dm": "reflect_first", "revision": "reflect_final"}


def judge_prompts(texts: list[str], spec: ImageSpec) -> list[str]:
  """The judge's chat prompts, image 1's pads expanded for spec.vit_size²."""
  return [prompt_lib.reflect(t).replace("<|image_pad|>", "<|image_pad|>" * spec.vit_tokens) for t in texts]


def second_prompts(texts: list[str], completions: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
  """Per row: the prompt of image 2 (the revision; the original prompt again after a no without one), the
  judgement (reflection.YES / NO / UNPARSED) and whether image 2 is made (a no)."""
  parsed = [reflection.parse(c) for c in completions]
  judgements = np.asarray([j for j, _ in parsed], np.int32)
  revised = judgements == reflection.NO
  return [rev or t for t, (_, rev) in zip(texts, parsed)], judgements, revised


class Reflection(TextToImage):
  name = "reflect"

  @classmethod
  def rewards(cls, run, fns: dict) -> dict:
    return reflection.make(rewards_lib.get(run.reflect.verifier, fns), run.reflect.pass_threshold)

  def __init__(self, engine):
    super().__init__(engine)
    c = engine.config
    v = engine.model.config.lm.vision
    if c.reflect.vit_size % (v.patch_size * v.spatial_merge_size):
      raise ValueError(f"reflect.vit_size {c.reflect.vit_size} is not a multiple of "
                       f"{v.patch_size * v.spatial_merge_size} (the ViT's patch x merge)")
    if c.reflect.advantage == "split":
      missing = [n for n in SPLIT.values() if n not in {t.name for t in c.reward}]
      if missing:
        raise ValueError(f"reflect.advantage='split' needs the rewards {missing} in the run's reward spec (weight 0 "
                         f"allowed); it has {[t.name for t in c.reward]}")
    self.spec = ImageSpec(c.image_size, c.reflect.vit_size, v.patch_size, v.spatial_merge_size)
    self.vit = vit_processor(self.spec)
    self.sampler = sampler_for(engine.model, c.lm)

  def loss_parts(self) -> tuple:
    e = self.engine
    parts = (dm.DMLoss(e.model, e.config.dm),)
    if "lm" in e.state["trainable"]:  # the judge and the revision; a frozen LM only conditions
      parts += (lm.LMLoss(e.model.lm, e.config.lm, grid=self.spec.vit_grid),)
    return parts + (dm.DMLoss(e.model, e.config.dm, field="revision", prefix="revision_"),)

  def with_advantages(self, exp: Experience, parts: dict) -> Experience:
    e = self.engine
    if e.config.reflect.advantage != "split":
      return exp
    return exp.replace(**{field: getattr(exp, field).replace(advantages=e.put_rows(e.advantages(parts[name])))
                          for field, name in SPLIT.items()})

  def rollout(self, step: int, rng) -> Rollout:
    e = self.engine
    c = e.config
    g = c.group_size
    recs = e.prompts.step_records(step)
    texts = [r.text for r in recs]
    rows = lambda xs: [x for x in xs for _ in range(g)]
    k_first, k_lm, k_second = jax.random.split(rng, 3)
    tr, fr = e.state["trainable"], e.frozen
    cd1 = e.put_rows(self.condition(texts))
    traj1, first = self._rollout(tr, fr, cd1, self.schedule, k_first)
    first = to_uint8(e.gather(first))
    ids, mask = prompt_lib.encode(e.tok, judge_prompts(rows(texts), self.spec), c.max_text_len, "max_text_len",
                                  c.text_pad, c.text_pad_multiple)
    pv = vit_patches([Image.fromarray(x) for x in first], self.spec, self.vit)
    comps = sample_completions(e, self.sampler, self.spec.vit_grid, ids, mask, pv, k_lm)
    completions, lengths = decode(e.tok, *e.gather((comps.tokens, comps.mask)))
    second_texts, judgements, revised = second_prompts(rows(texts), completions)
    # Image 2 for every row (one compiled shape); rows judged "yes" are masked out of its loss and its reward.
    ids2, mask2 = prompt_lib.encode(e.tok, [prompt_lib.t2i(t) for t in second_texts], c.max_text_len, None)
    cd2 = e.put_rows(Condition(ids2, mask2))
    traj2, second = self._rollout(tr, fr, cd2, self.schedule, k_second)
    second = to_uint8(e.gather(second))
    final = np.where(revised[:, None, None, None], second, first)
    exp = Experience(advantages=None, schedule=self.schedule, dm=DMRows(cd1, traj1), lm=comps,
                     revision=DMRows(cd2, traj2, row_mask=e.put_rows(revised.astype(np.float32))))
    reward_in = RewardInputs(final, rows(texts), completions, rows([r.metadata for r in recs]),
                             completion_lengths=lengths, completion_budget=c.lm.max_new_tokens,
                             first_images=first, judgements=judgements, revised=revised)
    samples = {"prompts": texts, "completions": completions, "second_prompts": second_texts,
               "revised": revised.tolist()}
    return Rollout(exp, reward_in, samples)

  def sample_grid(self, rollout: Rollout) -> tuple[np.ndarray, int]:
    """Per prompt: a row of its G images 1, then a row of the final images (image 2 where revised)."""
    r = rollout.rewards
    g = self.engine.config.group_size
    out = []
    for p in range(len(r) // g):
      out += [r.first_images[p * g:(p + 1) * g], r.images[p * g:(p + 1) * g]]
    return np.concatenate(out), g
