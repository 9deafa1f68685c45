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
import optax
from PIL import Image

from unirl_jax import checkpoint, optim, rewards, sharding, train_state
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data.pipeline import to_uint8
from unirl_jax.rl import dm
from unirl_jax.rl.advantages import group_advantages

DEFAULT_PROMPTS = ("a red circle on a blue background", "a green square on a white background",
                   "a yellow triangle on a black background", "a blue circle on a yellow background")


class GRPOTrainer:
  def __init__(self, config, workdir: str):
    c = self.c = config
    self.workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(self.workdir, "samples"), exist_ok=True)
    self.mesh = sharding.make_mesh(sharding.MeshConfig(**c.mesh))
    self.model, params, tok_dir = train_state.build_model(c.model, c.seed)
    trainable, frozen = train_state.split(params, tuple(c.train.trainable))
    self.frozen = train_state.place(self.model, frozen, self.mesh)
    # The reference policy: the initial trainable params; everything frozen is shared, not copied.
    self.ref_trainable = train_state.place(self.model, jax.tree.map(jnp.array, trainable), self.mesh)
    self.tx = optim.adamw(c.optim, tuple(trainable))
    self.state, self.state_shardings = train_state.init_state(train_state.place(self.model, trainable, self.mesh),
                                                              self.tx, self.mesh)
    self.dc = dm.DMConfig(**c.dm)
    f = self.model.config.vae.spatial_compression_ratio
    if c.image_size % f:
      raise ValueError(f"image_size {c.image_size} is not a multiple of the VAE compression {f}")
    self.latent_hw = (c.image_size // f, c.image_size // f)
    self.reward_fn = rewards.get(c.reward)
    self.prompts = list(c.prompts) or list(DEFAULT_PROMPTS)
    self.tok = self._tokenizer(tok_dir)
    self.ckpt = checkpoint.TrainCheckpoints(os.path.join(self.workdir, "checkpoints"),
                                            max_to_keep=c.train.keep_checkpoints)
    self._rollout = jax.jit(self._rollout_impl)
    self._update = jax.jit(self._update_impl, donate_argnums=(0,),
                           in_shardings=(self.state_shardings,) + (None,) * 6, out_shardings=(self.state_shardings, None))

  def _tokenizer(self, tok_dir):
    if tok_dir and os.path.exists(os.path.join(tok_dir, "tokenizer_config.json")):
      from transformers import AutoTokenizer
      return AutoTokenizer.from_pretrained(tok_dir)
    from unirl_jax import tokenizer
    return tokenizer.qwen2_tokenizer()

  def prompt_batch(self, step: int):
    """The prompts of `step`: a seeded permutation per pass over the prompt list (stateless, so resumable)."""
    n, b = len(self.prompts), self.c.prompts_per_step
    idx = []
    for j in range((step - 1) * b, step * b):
      epoch, pos = divmod(j, n)
      idx.append(int(np.random.RandomState([self.c.seed, epoch]).permutation(n)[pos]))
    texts = [self.prompts[i] for i in idx]
    enc = self.tok([prompt_lib.t2i(t) for t in texts], padding="max_length", max_length=self.c.max_text_len,
                   truncation=True, return_tensors="np", add_special_tokens=False)
    if (enc["attention_mask"][:, -1] == 0).any():
      raise ValueError("prompt batch is not left-padded")
    return texts, jnp.asarray(enc["input_ids"], jnp.int32), jnp.asarray(enc["attention_mask"], jnp.int32)

  def _rollout_impl(self, trainable, frozen, ids, mask, rng):
    return dm.rollout(self.model, {**trainable, **frozen}, ids, mask, self.c.group_size, rng, self.dc, self.latent_hw)

  def _update_impl(self, state, frozen, ref_trainable, ids, mask, roll, adv):
    def loss_fn(tr):
      return dm.dm_loss(self.model, {**tr, **frozen}, {**ref_trainable, **frozen}, ids, mask, roll, adv,
                        self.c.group_size, self.dc)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
    gnorm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    state = train_state.guarded_update(self.tx, state, grads, finite)
    return state, {"loss": loss, "grad_norm": gnorm, "skipped": (~finite).astype(jnp.int32), **aux}

  def train_step(self, step: int) -> tuple[dict, np.ndarray]:
    texts, ids, mask = self.prompt_batch(step)
    rng = jax.random.fold_in(jax.random.PRNGKey(self.c.seed), step)
    roll, images = self._rollout(self.state["trainable"], self.frozen, ids, mask, rng)
    imgs = to_uint8(jax.device_get(images))
    r = np.asarray(self.reward_fn(imgs, [t for t in texts for _ in range(self.c.group_size)]), np.float32)
    adv = group_advantages(r, self.c.group_size, self.c.adv_std, self.c.adv_eps, self.c.adv_clip)
    self.state, m = self._update(self.state, self.frozen, self.ref_trainable, ids, mask, roll, adv)
    m = jax.device_get(m)
    a = np.asarray(adv)
    row = {"step": step, "reward_mean": float(r.mean()), "reward_std": float(r.std()),
           "adv_mean": float(a.mean()), "adv_abs_max": float(np.abs(a).max()), "loss": float(m["loss"]),
           **{k: float(v) for k, v in m.items() if k != "loss"}}
    return row, imgs

  def run(self, stop_after=None) -> list[dict]:
    from tqdm import tqdm
    c = self.c
    metrics_path = os.path.join(self.workdir, "metrics.jsonl")
    start = 0
    if self.ckpt.latest_step() is not None:
      self.state = self.ckpt.restore(self.state, shardings=self.state_shardings)
      start = int(self.state["step"])
    train_state.truncate_metrics(metrics_path, start)
    last = min(c.total_steps, stop_after or c.total_steps)
    history = []
    bar = tqdm(range(start + 1, last + 1), initial=start, total=c.total_steps, desc="grpo", disable=not c.progress)
    with open(metrics_path, "a") as mf:
      for step in bar:
        t0 = time.perf_counter()
        row, imgs = self.train_step(step)
        row["step_time"] = time.perf_counter() - t0
        history.append(row)
        mf.write(json.dumps(row) + "\n")
        mf.flush()
        bar.set_postfix(reward=f"{row['reward_mean']:.3f}", s=f"{row['step_time']:.1f}")
        if c.train.sample_every and step % c.train.sample_every == 0:
          save_grid(imgs, c.group_size, os.path.join(self.workdir, "samples", f"step_{step:06d}.png"))
        if step % c.train.checkpoint_every == 0 or step == c.total_steps:
          self.ckpt.save(step, self.state, force=True)
    self.ckpt.wait()
    if last == c.total_steps:
      rows = [json.loads(line) for line in open(metrics_path)]
      plot_curve([r["step"] for r in rows], [r["reward_mean"] for r in rows],
                 os.path.join(self.workdir, "reward_curve.png"))
    return history

  def params(self) -> dict:
    return {**jax.device_get(self.state["trainable"]), **jax.device_get(self.frozen)}


def save_grid(images: np.ndarray, cols: int, path: str) -> None:
  n, h, w, _ = images.shape
  rows = -(-n // cols)
  grid = np.zeros((rows * h, cols * w, 3), np.uint8)
  for i, img in enumerate(images):
    grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = img
  Image.fromarray(grid).save(path)


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
