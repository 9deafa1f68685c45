"""Flow-matching pretraining (cold start) of the unified model, unirl.md §1.2 and §2.7.

x_σ = (1−σ)·x₀ + σ·ε with σ ~ sigmoid(N(0, 1)) and no shift; target ε − x₀; MSE over all elements in fp32.
Condition dropout per sample: text, reference, or both zeroed with probability p each. Trainable: DiT,
connector and queries; LM, ViT and VAE frozen (gradients still flow through the LM to the queries).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unirl_jax import checkpoint, metrics, optim, sharding, train_state
from unirl_jax.data import pipeline as data_pipeline
from unirl_jax.data import records as records_lib
from unirl_jax.models import unified


@dataclasses.dataclass(frozen=True)
class LossConfig:
  cond_dropout: float = 0.05  # each of: text only, reference only, both
  logit_normal_mean: float = 0.0
  logit_normal_std: float = 1.0


def flow_matching_loss(model: unified.UnifiedModel, params: dict, batch: dict, rng: jax.Array, lc: LossConfig,
                       vit_grid: Optional[tuple] = None) -> tuple[jax.Array, dict]:
  """Mean squared velocity error; `batch` holds pixel_values/src_images for editing batches."""
  k_t, k_eps, k_drop, k_ref = jax.random.split(rng, 4)
  x0 = jax.lax.stop_gradient(model.encode(params, batch["images"])).astype(jnp.float32)
  b = x0.shape[0]
  edit = "pixel_values" in batch
  grid = None
  if edit:
    grid = tuple(tuple(vit_grid) for _ in range(b))
  cond = model.condition(params, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values"), grid,
                         task="i2i" if edit else "t2i")
  if edit:
    ref = model.noisy_reference(jax.lax.stop_gradient(model.encode(params, batch["src_images"])), k_ref)
  else:
    ref = jnp.zeros_like(x0)
  r = jax.random.uniform(k_drop, (b,))
  p = lc.cond_dropout
  drop_text = (r < p) | ((r >= 2 * p) & (r < 3 * p))
  drop_ref = (r >= p) & (r < 3 * p)
  cond = jnp.where(drop_text[:, None, None], 0.0, cond)
  ref = jnp.where(drop_ref[:, None, None, None], 0.0, ref)
  sigma = jax.nn.sigmoid(lc.logit_normal_mean + lc.logit_normal_std * jax.random.normal(k_t, (b,)))
  eps = jax.random.normal(k_eps, x0.shape)
  s = sigma[:, None, None, None]
  x_t = (1 - s) * x0 + s * eps
  v = model.velocity(params, x_t.astype(cond.dtype), cond, sigma * 1000.0, ref_latents=ref.astype(cond.dtype))
  loss = jnp.mean((v.astype(jnp.float32) - (eps - x0)) ** 2)
  return loss, {"sigma_mean": sigma.mean()}


class Pretrainer:
  """Builds model, params, optimizer, data and checkpoints from a config; `run()` trains and resumes."""

  def __init__(self, config, workdir: str):
    self.c, self.workdir = config, os.path.abspath(workdir)
    os.makedirs(self.workdir, exist_ok=True)
    self.mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh))
    self.model, params, tok_dir = train_state.build_model(config.model, config.seed)
    self.trainable_keys = tuple(config.train.trainable)
    trainable, frozen = train_state.split(params, self.trainable_keys)
    self.frozen = train_state.place(self.model, frozen, self.mesh)
    self.tx = optim.adamw(config.optim, self.trainable_keys)
    self.state, self.state_shardings = train_state.init_state(train_state.place(self.model, trainable, self.mesh),
                                                              self.tx, self.mesh)
    self.loss_cfg = LossConfig(cond_dropout=config.train.cond_dropout)
    self.dataset = self._dataset(tok_dir)
    self.ckpt = checkpoint.TrainCheckpoints(os.path.join(self.workdir, "checkpoints"),
                                            max_to_keep=config.train.keep_checkpoints)
    self._steps = {}

  # ---- construction ----------------------------------------------------------------------------

  def _dataset(self, tok_dir):
    from unirl_jax import tokenizer as tok_lib
    d = self.c.data
    sources = list(d.sources)
    if not sources:  # the tiny default: a synthetic dataset made on first use
      from unirl_jax.data import synthetic
      out = os.path.join(self.workdir, "synthetic_data")
      manifest = os.path.join(out, "train.jsonl")
      if not os.path.exists(manifest):
        synthetic.generate(out, n=d.synthetic_n, size=d.image_size, seed=self.c.seed)
      sources = [manifest]
    records, stats = records_lib.read_sources(sources, skip_bad=d.skip_bad)
    self.read_stats = stats
    if stats.skipped:
      print(f"data: skipped {stats.skipped} bad records, e.g. {stats.reasons[0]}")
    has_tok = tok_dir and os.path.exists(os.path.join(tok_dir, "tokenizer_config.json"))
    if has_tok:
      from transformers import AutoTokenizer
      tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
      tok = tok_lib.qwen2_tokenizer()
    lm = self.model.config.lm
    if len(tok) > lm.text.vocab_size:
      raise ValueError(f"the tokenizer has {len(tok)} tokens but the LM vocabulary only {lm.text.vocab_size}")
    vision = lm.vision
    self.image_spec = data_pipeline.ImageSpec(d.image_size, d.vit_size, vision.patch_size, vision.spatial_merge_size)
    f = self.model.config.vae.spatial_compression_ratio
    if d.image_size % f:
      raise ValueError(f"data.image_size {d.image_size} is not a multiple of the VAE compression {f}")
    pre = data_pipeline.Preprocessor(tok, self.image_spec, d.max_text_len, lm.pad_token_id)
    ew = None if d.edit_weight < 0 else d.edit_weight
    return data_pipeline.make_dataset(records, pre, d.batch_size, self.c.seed, ew)

  # ---- the step ---------------------------------------------------------------------------------

  def _step_fn(self, edit: bool):
    if edit in self._steps:
      return self._steps[edit]
    model, lc, tx = self.model, self.loss_cfg, self.tx
    grid = self.image_spec.vit_grid if edit else None
    seed = self.c.seed

    def step(state, frozen, batch):
      rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
      loss_fn = lambda tr: flow_matching_loss(model, train_state.merge(tr, frozen), batch, rng, lc, grid)
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
      gnorm = optax.global_norm(grads)
      finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
      state = train_state.guarded_update(tx, state, grads, finite)
      return state, {"loss": loss, "grad_norm": gnorm, "skipped": (~finite).astype(jnp.int32), **aux}

    batch_sharding = sharding.batch_sharding(self.mesh, 1)
    fn = jax.jit(step, donate_argnums=(0,), in_shardings=(self.state_shardings, None, None),
                 out_shardings=(self.state_shardings, None))
    self._steps[edit] = (fn, batch_sharding)
    return self._steps[edit]

  def train_step(self, batch: dict) -> dict:
    fn, _ = self._step_fn("pixel_values" in batch)
    batch = {k: jax.device_put(v, sharding.batch_sharding(self.mesh, np.ndim(v))) if k != "pixel_values" else v
             for k, v in batch.items()}
    self.state, metrics = fn(self.state, self.frozen, batch)
    return metrics

  # ---- the loop ---------------------------------------------------------------------------------

  def run(self, stop_after: Optional[int] = None) -> list[dict]:
    """Trains to config.train.total_steps (or stops after `stop_after`, as a killed run would)."""
    c = self.c
    it = iter(self.dataset.to_iter_dataset())
    start = 0
    if self.ckpt.latest_step() is not None:
      self.state, extra = self.ckpt.restore(self.state, shardings=self.state_shardings, with_extra=True)
      it.set_state(extra["data"])
      start = int(self.state["step"])
      print(f"resumed from step {start} in {self.ckpt.manager.directory}")
    history = []
    t0 = time.perf_counter()
    with metrics.MetricsLog(self.workdir, start, c.train.get("tensorboard", True)) as log:
      for step in range(start + 1, min(c.train.total_steps, stop_after or c.train.total_steps) + 1):
        batch = next(it)
        m = jax.device_get(self.train_step(batch))
        row = {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
               "skipped": int(m["skipped"]), "task": "edit" if "pixel_values" in batch else "t2i",
               "lr": float(optim.schedule(c.optim.lr, c.optim.total_steps, c.optim.warmup_steps, c.optim.min_lr,
                                          c.optim.schedule)(step - 1)),
               "step_time": time.perf_counter() - t0}
        t0 = time.perf_counter()
        history.append(row)
        log.write(row)
        if step % c.train.log_every == 0 or step == c.train.total_steps:
          print(f"step {step:5d}  loss {row['loss']:.4f}  grad_norm {row['grad_norm']:.3f}  lr {row['lr']:.2e}  "
                f"{row['step_time']:.2f}s/step")
        if step % c.train.checkpoint_every == 0 or step == c.train.total_steps:
          self.ckpt.save(step, self.state, extra={"data": it.get_state()}, force=True)
    self.ckpt.wait()
    return history

  def params(self) -> dict:
    return train_state.merge(jax.device_get(self.state["trainable"]), jax.device_get(self.frozen))

  def export(self, path: str) -> str:
    """A unified checkpoint dir of the current params (loadable by `python -m unirl_jax.generate`)."""
    return unified.save(path, self.model.config, self.params(), overwrite=True)
