"""Text and multimodal reasoning (docs/scenarios.md; the open-r1 / open-r1-multimodal recipe the paper credits,
`../shared/reference/unirl.md` §4, §5.7): G completions per question from the KV-cache sampler, an image question
seen through the vision tower in the rollout and in the log-prob recomputation, R1 format and accuracy rewards,
group advantages and the token GRPO loss with k3 KL to the reference. Only the LM trains."""

from __future__ import annotations

import numpy as np

from unirl_jax import train_state
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data import questions as question_lib
from unirl_jax.data.pipeline import ImageSpec, vit_patches, vit_processor
from unirl_jax.data.records import DataError, open_image
from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
from unirl_jax.rl import lm
from unirl_jax.rl.batch import Completions, Experience
from unirl_jax.rl.losses import completion_mask
from unirl_jax.scenarios.base import RewardInputs, Rollout, Task

LM_GROUPS = ("lm", "lm/language_model", "lm/visual")


def prompt_texts(recs, template: str, system: str, spec: ImageSpec | None) -> list[str]:
  """The questions' chat prompts; with an image `spec`, the image block's pads expanded for spec.vit_size²."""
  texts = [prompt_lib.reason(x.text, template, spec is not None, system) for x in recs]
  if spec is not None:
    texts = [t.replace("<|image_pad|>", "<|image_pad|>" * spec.vit_tokens) for t in texts]
  return texts


def question_prompts(tok, recs, template: str, system: str, spec: ImageSpec | None, max_len: int,
                     setting: str | None = "max_text_len", pad: str = "max_len", multiple: int = 64):
  """(ids, mask) of the questions' chat prompts (left-padded), and, with an image `spec`, each record's image as
  ViT patches at spec.vit_size² (else None). Used by the task and by `eval --benchmark reasoning`."""
  texts = prompt_texts(recs, template, system, spec)
  pv = None
  if spec is not None:
    pv = vit_patches([open_image(x.metadata["image"], x.metadata["origin"]) for x in recs], spec,
                     vit_processor(spec))
  ids, mask = prompt_lib.encode(tok, texts, max_len, setting, pad, multiple)
  return ids, mask, pv


def decode(tok, tokens, mask) -> tuple[list[str], np.ndarray]:
  """Sampled (B, N) tokens and their completion mask -> the texts (special tokens dropped) and token counts."""
  tokens = np.asarray(tokens)
  lengths = np.asarray(mask).sum(axis=1).astype(np.int32)
  return tok.batch_decode([tokens[i, :lengths[i]] for i in range(len(tokens))], skip_special_tokens=True), lengths


def sampler_for(model, lc) -> Sampler:
  """The KV-cache sampler of a run's `lm` settings (temperature, top-k/top-p, max new tokens)."""
  lmc = model.config.lm
  return Sampler(model.lm, SamplingConfig(
      max_new_tokens=lc.max_new_tokens, temperature=lc.temperature, top_k=lc.top_k, top_p=lc.top_p,
      eos_token_ids=tuple(lmc.eos_token_id), pad_token_id=lmc.pad_token_id))


def sample_completions(engine, sampler: Sampler, grid, ids, mask, pv, rng) -> Completions:
  """One sampled completion per prompt row (on the mesh); `pv`: each row's image as ViT patches at `grid`, or
  None."""
  e = engine
  lm_params = train_state.merge(e.state["trainable"], e.frozen)["lm"]
  ids, mask, pv_rows = e.put_rows((ids, mask, pv))
  flat = None if pv is None else pv_rows.reshape(-1, pv_rows.shape[-1])
  grids = None if pv is None else np.asarray([grid] * len(ids))
  out = sampler(lm_params, ids, mask, flat, grids, rng=rng)
  tokens = out["tokens"]
  return Completions(ids, mask, tokens, completion_mask(tokens, e.model.config.lm.eos_token_id), pv_rows)


class Reasoning(Task):
  name = "reason"

  @classmethod
  def records(cls, run) -> list:
    if not run.prompt_file:
      raise ValueError("task reason needs questions: set prompt_file to a .jsonl or .parquet of question records "
                       "(python -m unirl_jax.data.synthetic_questions writes some)")
    recs = question_lib.read_question_file(run.prompt_file)
    with_image = ["image" in r.metadata for r in recs]
    if any(with_image) and not all(with_image):
      i = with_image.index(not with_image[0])
      raise DataError(f"{recs[i].metadata['origin']}: {'an image' if with_image[i] else 'no image'}, unlike the "
                      f"file's first record: a reasoning run's questions all carry an image or none")
    return recs

  def __init__(self, engine):
    super().__init__(engine)
    c, model = engine.config, engine.model
    other = [n for n in c.train.trainable if n not in LM_GROUPS]
    if other:
      raise ValueError(f"task reason trains the LM only: train.trainable {tuple(c.train.trainable)} names {other}; "
                       f"use ('lm/language_model',) (or 'lm' to train the vision tower too)")
    lmc = model.config.lm
    self.with_image = "image" in engine.prompts.records[0].metadata
    self.grid, self.spec = None, None
    if self.with_image:
      v = lmc.vision
      if c.reason.vit_size % (v.patch_size * v.spatial_merge_size):
        raise ValueError(f"reason.vit_size {c.reason.vit_size} is not a multiple of "
                         f"{v.patch_size * v.spatial_merge_size} (the ViT's patch x merge)")
      self.spec = ImageSpec(c.image_size, c.reason.vit_size, v.patch_size, v.spatial_merge_size)
      self.grid = self.spec.vit_grid
    self.sampler = sampler_for(model, c.lm)

  def loss_parts(self) -> tuple:
    return (lm.LMLoss(self.engine.model.lm, self.engine.config.lm, grid=self.grid),)

  def prompts(self, recs) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    c = self.engine.config
    return question_prompts(self.engine.tok, recs, c.reason.template, c.reason.system, self.spec, c.max_text_len,
                            "max_text_len", c.text_pad, c.text_pad_multiple)

  def complete(self, ids, mask, pv, rng) -> Completions:
    return sample_completions(self.engine, self.sampler, self.grid, ids, mask, pv, rng)

  def rollout(self, step: int, rng) -> Rollout:
    e = self.engine
    c = e.config
    g = c.group_size
    recs = e.prompts.step_records(step)
    ids, mask, pv = self.prompts(recs)
    rep = lambda x: None if x is None else np.repeat(x, g, axis=0)
    comps = self.complete(rep(ids), rep(mask), rep(pv), rng)
    texts, lengths = decode(e.tok, *e.gather((comps.tokens, comps.mask)))
    rows = lambda xs: [x for x in xs for _ in range(g)]
    meta = [{k: v for k, v in r.metadata.items() if k != "image"} for r in recs]
    reward_in = RewardInputs(None, rows([r.text for r in recs]), texts, rows(meta), completion_lengths=lengths,
                             completion_budget=c.lm.max_new_tokens)
    samples = {"questions": [r.text for r in recs], "answers": [r.metadata["answer"] for r in recs],
               "completions": texts}
    return Rollout(Experience(advantages=None, lm=comps), reward_in, samples)

  def sample_grid(self, rollout: Rollout):
    return None  # no images: the sample hook writes the completions (samples/step_N.json) only
