"""CoT-enhanced text-to-image GRPO (UniRL's `T2ICoTGRPOTrainer`, docs/algorithms.md §2.4, §3): the LM writes G
completions per caption, each whole decoded dialogue conditions one image, and the LM token loss and the DM loss
share each trajectory's advantage (reward = image reward + format reward)."""

from __future__ import annotations

import jax
import numpy as np

from unirl_jax import train_state
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.rl import lm
from unirl_jax.rl.batch import Completions, Condition
from unirl_jax.rl.losses import completion_mask
from unirl_jax.scenarios.base import Rollout
from unirl_jax.scenarios.reason import sampler_for
from unirl_jax.scenarios.t2i import TextToImage


class CoTTextToImage(TextToImage):
  name = "t2icot"

  def __init__(self, engine):
    if "lm" not in engine.state["trainable"]:
      raise ValueError("task t2icot trains the LM: add 'lm/language_model' to train.trainable")
    super().__init__(engine)
    self.sampler = sampler_for(engine.model, engine.config.lm)

  def _shift_example(self):
    return np.zeros((self.engine.config.rows,), np.int32) if self.engine.config.lm.cond_padding == "right" else None

  def loss_parts(self) -> tuple:
    return super().loss_parts() + (lm.LMLoss(self.engine.model.lm, self.engine.config.lm),)

  def complete(self, texts: list[str], rng) -> tuple[Completions, list[str], Condition]:
    """The LM's completions of the CoT prompts (G per caption), and the DM condition rows built from them: the
    whole decoded dialogue, special tokens stripped, re-tokenised without the chat template (docs/algorithms.md §2.4)."""
    e = self.engine
    c = e.config
    g = c.group_size
    p_ids, p_mask = prompt_lib.encode(e.tok, [prompt_lib.t2i_cot(t) for t in texts], c.max_text_len,
                                      "max_text_len", c.text_pad, c.text_pad_multiple)
    p_ids, p_mask = np.repeat(p_ids, g, axis=0), np.repeat(p_mask, g, axis=0)
    lm_params = train_state.merge(e.state["trainable"], e.frozen)["lm"]
    out = e.gather(self.sampler(lm_params, *e.put_rows((p_ids, p_mask)), rng=rng))
    comp, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    completions = e.tok.batch_decode([comp[i, :lengths[i]] for i in range(len(comp))], skip_special_tokens=True)
    dialogues = e.tok.batch_decode([np.concatenate([p_ids[i][p_mask[i] == 1], comp[i, :lengths[i]]])
                                    for i in range(len(comp))], skip_special_tokens=True)
    ids, mask = prompt_lib.encode(e.tok, dialogues, c.lm.max_cond_len, None)
    shift = None
    if c.lm.cond_padding == "right":
      # The original pads each prompt's G dialogues to their longest and appends the queries after the pads.
      n = mask.sum(axis=1).reshape(-1, g)
      shift = (n.max(axis=1, keepdims=True) - n).reshape(-1).astype(np.int32)
    comp_mask = np.asarray(completion_mask(comp, e.model.config.lm.eos_token_id))
    return Completions(p_ids, p_mask, comp, comp_mask), completions, Condition(ids, mask, shift)

  def rollout(self, step: int, rng) -> Rollout:
    e = self.engine
    recs = e.prompts.step_records(step)
    texts = [r.text for r in recs]
    k_lm, k_dm = jax.random.split(rng)
    comps, completions, condition = self.complete(texts, k_lm)
    out = self.images(texts, e.put_rows(condition), k_dm, {"captions": texts, "completions": completions},
                      completions, [r.metadata for r in recs])
    out.experience = out.experience.replace(lm=e.put_rows(comps))
    return out
