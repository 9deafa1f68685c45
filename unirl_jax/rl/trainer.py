"""The text-to-image GRPO loop: rollout (jit) -> decode -> host rewards -> group advantages -> update (jit).

Resumable: the train state is checkpointed, and the prompts and RNG of step s are pure functions of
(seed, s), so a restarted run continues exactly where an unbroken one would have been.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from unirl_jax import checkpoint, metrics, optim, rewards, sharding, train_state
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data.pipeline import to_uint8
from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
from unirl_jax.rl import dm, lm, update
from unirl_jax.rl.advantages import group_advantages
from unirl_jax.rl.losses import completion_mask

DEFAULT_PROMPTS = ("a red circle on a blue background", "a green square on a white background",
                   "a yellow triangle on a black background", "a blue circle on a yellow background")


class GRPOTrainer:
  """config.task: "t2i" (Flow-GRPO on the DM) or "t2icot" (the LM writes a CoT, the whole dialogue conditions
  the DM; one image per completion; the LM and DM losses share each trajectory's advantage)."""

  def __init__(self, config, workdir: str):
    c = self.c = config
    self.task = c.get("task", "t2i")
    if self.task not in ("t2i", "t2icot"):
      raise ValueError(f"config.task {self.task!r} not one of 't2i', 't2icot'")
    self.workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(self.workdir, "samples"), exist_ok=True)
    self.mesh = sharding.make_mesh(sharding.MeshConfig(**c.mesh))
    self.model, params, tok_dir = train_state.build_model(c.model, c.seed)
    trainable, frozen = train_state.split(params, tuple(c.train.trainable))
    if self.task == "t2icot" and "lm" not in trainable:
      raise ValueError("task t2icot trains the LM: add 'lm/language_model' to train.trainable")
    # Frozen weights and the reference copy may be stored in a lower precision (model.frozen_dtype, e.g. bf16 as
    # the original holds them); the trainable params stay fp32 master weights.
    fdt = c.model.get("frozen_dtype", None)
    self.frozen = train_state.place(self.model, train_state.cast_floating(frozen, fdt), self.mesh)
    # The reference policy: the initial trainable params; everything frozen is shared, not copied.
    self.ref_trainable = train_state.place(
        self.model, train_state.cast_floating(jax.tree.map(jnp.array, trainable), fdt), self.mesh)
    self.tx = optim.adamw(c.optim, tuple(trainable))
    self.state, self.state_shardings = train_state.init_state(train_state.place(self.model, trainable, self.mesh),
                                                              self.tx, self.mesh)
    self.dc = dm.DMConfig(**c.dm)
    self.lc = lm.LMConfig(**c.lm) if "lm" in c else lm.LMConfig()
    f = self.model.config.vae.spatial_compression_ratio
    if c.image_size % f:
      raise ValueError(f"image_size {c.image_size} is not a multiple of the VAE compression {f}")
    self.latent_hw = (c.image_size // f, c.image_size // f)
    rewards.names(c.reward)  # fail now on an unknown reward, not after the first rollout
    if c.get("prompt_file"):
      self.prompts = prompt_lib.read_prompt_file(c.prompt_file)
    else:
      self.prompts = list(c.prompts) or list(DEFAULT_PROMPTS)
    self.tok = self._tokenizer(tok_dir)
    self.ckpt = checkpoint.TrainCheckpoints(os.path.join(self.workdir, "checkpoints"),
                                            max_to_keep=c.train.keep_checkpoints)
    self._rollout = jax.jit(self._rollout_impl)
    self._update = jax.jit(self._update_impl, donate_argnums=(0,),
                           in_shardings=(self.state_shardings, None, None, None), out_shardings=(self.state_shardings, None))
    if self.task == "t2icot":
      lmc = self.model.config.lm
      self.sampler = Sampler(self.model.lm, SamplingConfig(
          max_new_tokens=self.lc.max_new_tokens, temperature=self.lc.temperature, top_k=self.lc.top_k,
          top_p=self.lc.top_p, eos_token_ids=tuple(lmc.eos_token_id), pad_token_id=lmc.pad_token_id))

  def _tokenizer(self, tok_dir):
    if tok_dir and os.path.exists(os.path.join(tok_dir, "tokenizer_config.json")):
      from transformers import AutoTokenizer
      tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
      from unirl_jax import tokenizer
      tok = tokenizer.qwen2_tokenizer()
    tok.padding_side = "left"
    tok.truncation_side = "left"  # keep the end of an over-long prompt (the original keeps the last tokens)
    return tok

  def captions(self, step: int) -> list[str]:
    """The captions of `step`: a seeded permutation per pass over the prompt list (stateless, so resumable)."""
    n, b = len(self.prompts), self.c.prompts_per_step
    idx = []
    for j in range((step - 1) * b, step * b):
      epoch, pos = divmod(j, n)
      idx.append(int(np.random.RandomState([self.c.seed, epoch]).permutation(n)[pos]))
    return [self.prompts[i] for i in idx]

  def tokenize(self, texts: list[str], max_len: int, what: str = "max_text_len"):
    """Left-padded (B, max_len) ids and mask. A prompt longer than max_len is an error naming the setting,
    except for the CoT dialogue condition (what=None), which keeps its last max_len tokens like the original."""
    if what is not None:
      n = max(len(x) for x in self.tok(texts, add_special_tokens=False)["input_ids"])
      if n > max_len:
        raise ValueError(f"a prompt has {n} tokens, more than {what}={max_len}: raise it in the config")
    enc = self.tok(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="np",
                   add_special_tokens=False)
    return jnp.asarray(enc["input_ids"], jnp.int32), jnp.asarray(enc["attention_mask"], jnp.int32)

  def prompt_batch(self, step: int):
    """(captions, ids, mask) of the text-to-image prompts of `step`, one row per trajectory (group-major)."""
    texts = self.captions(step)
    ids, mask = self.tokenize([prompt_lib.t2i(t) for t in texts], self.c.max_text_len)
    g = self.c.group_size
    return texts, jnp.repeat(ids, g, axis=0), jnp.repeat(mask, g, axis=0)

  def _rollout_impl(self, trainable, frozen, ids, mask, rng):
    return dm.rollout(self.model, train_state.merge(trainable, frozen), ids, mask, rng, self.dc, self.latent_hw)

  def _update_impl(self, state, frozen, ref_trainable, batch):
    return update.update_step(self.model, self.tx, self.dc, self.lc, self.c.train.get("micro_batch", 0), state,
                              frozen, ref_trainable, batch)

  def cot_rollout(self, texts: list[str], rng):
    """The LM's completions for the CoT prompts (G per caption), and the DM's condition rows built from them:
    the whole decoded dialogue, special tokens stripped, re-tokenised without the chat template (§3.5)."""
    g = self.c.group_size
    p_ids, p_mask = self.tokenize([prompt_lib.t2i_cot(t) for t in texts], self.c.max_text_len)
    p_ids, p_mask = jnp.repeat(p_ids, g, axis=0), jnp.repeat(p_mask, g, axis=0)
    lm_params = train_state.merge(self.state["trainable"], self.frozen)["lm"]
    out = jax.device_get(self.sampler(lm_params, p_ids, p_mask, rng=rng))
    comp, lengths = out["tokens"], out["lengths"]
    ids_np, mask_np = np.asarray(p_ids), np.asarray(p_mask)
    completions = self.tok.batch_decode([comp[i, :lengths[i]] for i in range(len(comp))], skip_special_tokens=True)
    dialogues = self.tok.batch_decode([np.concatenate([ids_np[i][mask_np[i] == 1], comp[i, :lengths[i]]])
                                       for i in range(len(comp))], skip_special_tokens=True)
    ids, mask = self.tokenize(dialogues, self.lc.max_cond_len, what=None)
    comp = jnp.asarray(comp)
    lm_batch = {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion": comp,
                "comp_mask": completion_mask(comp, self.model.config.lm.eos_token_id)}
    return ids, mask, lm_batch, completions

  def train_step(self, step: int) -> tuple[dict, np.ndarray, list]:
    g = self.c.group_size
    texts = self.captions(step)
    k_lm, k_dm = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(self.c.seed), step))
    if self.task == "t2icot":
      ids, mask, batch, completions = self.cot_rollout(texts, k_lm)
    else:
      _, ids, mask = self.prompt_batch(step)
      batch, completions = {}, None
    roll, images = self._rollout(self.state["trainable"], self.frozen, ids, mask, k_dm)
    imgs = to_uint8(jax.device_get(images))
    r, parts = rewards.score(self.c.reward, imgs, [t for t in texts for _ in range(g)], completions)
    adv = group_advantages(r, g, self.c.adv_std, self.c.adv_eps, self.c.adv_clip)
    batch.update(ids=ids, mask=mask, roll=roll, advantages=jnp.asarray(adv))
    self.state, m = self._update(self.state, self.frozen, self.ref_trainable, batch)
    m = jax.device_get(m)
    a = np.asarray(adv)
    row = {"step": step, "reward_mean": float(r.mean()), "reward_std": float(r.std()),
           "adv_mean": float(a.mean()), "adv_abs_max": float(np.abs(a).max()), "loss": float(m["loss"]),
           **{k: float(v) for k, v in m.items() if k != "loss"}}
    if len(parts) > 1:
      row.update({f"reward_{k}": float(v.mean()) for k, v in parts.items()})
    return row, imgs, completions

  def run(self, stop_after=None) -> list[dict]:
    from tqdm import tqdm
    c = self.c
    start = 0
    if self.ckpt.latest_step() is not None:
      self.state = self.ckpt.restore(self.state, shardings=self.state_shardings)
      start = int(self.state["step"])
    last = min(c.total_steps, stop_after or c.total_steps)
    history = []
    bar = tqdm(range(start + 1, last + 1), initial=start, total=c.total_steps, desc="grpo", disable=not c.progress)
    with metrics.MetricsLog(self.workdir, start, c.train.get("tensorboard", True)) as log:
      for step in bar:
        t0 = time.perf_counter()
        row, imgs, completions = self.train_step(step)
        row["step_time"] = time.perf_counter() - t0
        history.append(row)
        log.write(row)
        bar.set_postfix(reward=f"{row['reward_mean']:.3f}", s=f"{row['step_time']:.1f}")
        if c.train.sample_every and step % c.train.sample_every == 0:
          path = os.path.join(self.workdir, "samples", f"step_{step:06d}.png")
          grid = save_grid(imgs, c.group_size, path)
          log.image("samples", step, open(path, "rb").read(), *grid.shape[:2])
          if completions is not None:
            with open(path[:-4] + ".json", "w") as f:
              json.dump({"captions": self.captions(step), "completions": completions}, f, indent=1)
        if step % c.train.checkpoint_every == 0 or step == c.total_steps:
          self.ckpt.save(step, self.state, force=True)
    self.ckpt.wait()
    if last == c.total_steps:
      rows = metrics.read(os.path.join(self.workdir, "metrics.jsonl"))
      plot_curve([r["step"] for r in rows], [r["reward_mean"] for r in rows],
                 os.path.join(self.workdir, "reward_curve.png"))
    return history

  def params(self) -> dict:
    return train_state.merge(jax.device_get(self.state["trainable"]), jax.device_get(self.frozen))


def save_grid(images: np.ndarray, cols: int, path: str) -> np.ndarray:
  n, h, w, _ = images.shape
  rows = -(-n // cols)
  grid = np.zeros((rows * h, cols * w, 3), np.uint8)
  for i, img in enumerate(images):
    grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = img
  Image.fromarray(grid).save(path)
  return grid


def plot_curve(xs, ys, path: str, size=(480, 240)) -> None:
  """A dependency-free line plot (PIL) of the reward per step."""
  from PIL import ImageDraw
  w, h = size
  img = Image.new("RGB", size, "white")
  d = ImageDraw.Draw(img)
  if len(xs) >= 2:
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    pts = [(10 + (w - 20) * (x - xs[0]) / max(xs[-1] - xs[0], 1), h - 20 - (h - 40) * (y - lo) / span)
           for x, y in zip(xs, ys)]
    d.line(pts, fill=(30, 90, 200), width=2)
    d.text((10, 5), f"reward: {lo:.4g} .. {hi:.4g}", fill="black")
  img.save(path)
