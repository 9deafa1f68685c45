"""Pretraining (cold start) of the unified model, docs/algorithms.md §5: flow matching on text-to-image and edit
batches, and LM supervision on chat batches (cross-entropy on the assistant tokens: the supervised stage before
the reasoning, CoT and reflection scenarios).

x_σ = (1−σ)·x₀ + σ·ε with σ ~ sigmoid(N(0, 1)) and no shift; target ε − x₀; MSE over all elements in fp32.
Condition dropout per sample: text, reference, or both zeroed with probability p each. Trainable: DiT,
connector and queries by default; LM, ViT and VAE frozen (gradients still flow through the LM to the queries).
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax import distributed, optim, run_config, sharding, train_state
from unirl_jax.data import pipeline as data_pipeline
from unirl_jax.data.pipeline import PretrainBatch
from unirl_jax.data import records as records_lib
from unirl_jax.models import unified
from unirl_jax.rl.lm import sequence_log_probs
from unirl_jax.trainer import Hook, Trainer


def flow_matching_terms(x0, eps, sigma, r, p: float):
  """The pieces of the loss, given the draws: x_σ = (1−σ)·x₀ + σ·ε, the target ε − x₀, and the condition
  dropout bands of r ~ U(0, 1): [0, p) text only, [p, 2p) reference only, [2p, 3p) both."""
  s = sigma[:, None, None, None]
  x_t = (1 - s) * x0 + s * eps
  drop_text = (r < p) | ((r >= 2 * p) & (r < 3 * p))
  drop_ref = (r >= p) & (r < 3 * p)
  return x_t, eps - x0, drop_text, drop_ref


def edit_region_weights(x0, src, weight: float):
  """(B, H, W, 1) loss weights for an edit batch: 1 + weight · d / max(d), d the mean |target − source| latent
  change over channels at each position (per image; 1 everywhere where nothing changed), normalised to mean 1
  per image so the loss keeps its scale and only its share between the edited region and the rest moves."""
  d = jnp.mean(jnp.abs(x0 - src), axis=-1, keepdims=True)
  w = 1.0 + weight * d / jnp.maximum(jnp.max(d, axis=(1, 2, 3), keepdims=True), 1e-12)
  return w / jnp.mean(w, axis=(1, 2, 3), keepdims=True)


def flow_matching_loss(model: unified.UnifiedModel, params: dict, batch: PretrainBatch, rng: jax.Array, lc,
                       vit_grid: Optional[tuple] = None) -> tuple[jax.Array, dict]:
  """Mean squared velocity error; lc: the run's `run_config.FlowLossSettings`; vit_grid: the (t, h, w) patch
  grid of every source image of an edit batch."""
  k_t, k_eps, k_drop, k_ref = jax.random.split(rng, 4)
  x0 = jax.lax.stop_gradient(model.encode(params, batch.images)).astype(jnp.float32)
  b = x0.shape[0]
  grid = tuple(tuple(vit_grid) for _ in range(b)) if batch.edit else None
  cond = model.condition(params, batch.input_ids, batch.attention_mask, batch.pixel_values, grid,
                         task="i2i" if batch.edit else "t2i")
  weights = None
  if batch.edit:
    src = jax.lax.stop_gradient(model.encode(params, batch.src_images))
    ref = model.noisy_reference(src, k_ref)
    if lc.edit_region_weight:
      weights = edit_region_weights(x0, src.astype(jnp.float32), lc.edit_region_weight)
  else:
    ref = jnp.zeros_like(x0)
  r = jax.random.uniform(k_drop, (b,))
  sigma = jax.nn.sigmoid(lc.logit_normal_mean + lc.logit_normal_std * jax.random.normal(k_t, (b,)))
  eps = jax.random.normal(k_eps, x0.shape)
  x_t, target, drop_text, drop_ref = flow_matching_terms(x0, eps, sigma, r, lc.cond_dropout)
  cond = jnp.where(drop_text[:, None, None], 0.0, cond)
  ref = jnp.where(drop_ref[:, None, None, None], 0.0, ref)
  v = model.velocity(params, x_t.astype(cond.dtype), cond, sigma * 1000.0, ref_latents=ref.astype(cond.dtype))
  se = (v.astype(jnp.float32) - target) ** 2
  loss = jnp.mean(se if weights is None else weights * se)
  return loss, {"sigma_mean": sigma.mean()}


def lm_supervised_loss(lm, lm_params, batch: PretrainBatch, vit_grid: Optional[tuple] = None,
                       window: int = 0) -> tuple[jax.Array, dict]:
  """Mean cross-entropy of the target tokens (`batch.target_mask`) given their prefix, over all target tokens of
  the batch (transformers' loss with labels -100 elsewhere); an image (`batch.pixel_values`, one per row at
  `vit_grid`) goes through the vision tower. window > 0: only the last `window` tokens can be targets, and only
  their logits are computed (the vocabulary projection dominates a small LM's cost)."""
  b, t = batch.input_ids.shape
  grid = None if batch.pixel_values is None else tuple(tuple(vit_grid) for _ in range(b))
  start = max(t - 1 - window, 0) if window else 0
  logp = sequence_log_probs(lm, lm_params, batch.input_ids, batch.attention_mask, batch.pixel_values, grid, start)
  m = batch.target_mask[:, start + 1:].astype(jnp.float32)
  n = jnp.sum(m)
  return -jnp.sum(logp * m) / jnp.maximum(n, 1.0), {"target_tokens": n}


class Pretrainer(Trainer):
  """Builds model, params, optimizer, data and checkpoints from a config; `run()` trains and resumes."""

  def __init__(self, config, workdir: str, init=None):
    run = config if isinstance(config, run_config.PretrainRun) else run_config.load(config)
    if not isinstance(run, run_config.PretrainRun):
      raise ValueError(f"Pretrainer needs a pretraining config, got mode {run.mode!r}")
    super().__init__(run, workdir, run.total_steps(), init)
    self.dataset = self._dataset()
    self._steps = {}

  # ---- construction ----------------------------------------------------------------------------

  def _dataset(self):
    d = self.config.data
    sources = list(d.sources)
    if not sources:  # the tiny defaults: a synthetic dataset made on first use (by process 0)
      out = os.path.join(self.workdir, "synthetic_data")
      if distributed.is_main():
        self._synthetic(out)
      distributed.barrier("synthetic_data")
      sources = [self._synthetic(out, write=False)]
    records, stats = records_lib.read_sources(sources, skip_bad=d.skip_bad, stream=d.stream)
    self.read_stats = stats
    if stats.skipped:
      print(f"data: skipped {stats.skipped} bad records, e.g. {stats.reasons[0]}")
    lm = self.model.config.lm
    vision = lm.vision
    self.image_spec = data_pipeline.ImageSpec(d.image_size, d.vit_size, vision.patch_size, vision.spatial_merge_size)
    f = self.model.config.vae.spatial_compression_ratio
    if d.image_size % f:
      raise ValueError(f"data.image_size {d.image_size} is not a multiple of the VAE compression {f}")
    pre = data_pipeline.Preprocessor(self.tok, self.image_spec, d.max_text_len, lm.pad_token_id, d.max_target_len)
    return data_pipeline.make_dataset(records, pre, d.batch_size, self.config.seed, dict(d.task_weights) or None,
                                      d.mix, local_rows=self.local_rows)

  def _synthetic(self, out: str, write: bool = True) -> str:
    """The manifest of the config's synthetic dataset in `out`, written first when missing (and `write`)."""
    d = self.config.data
    if d.synthetic == "geneval_scenes":
      from unirl_jax.data import shapes
      manifest, make = "scenes.jsonl", lambda: shapes.write(out, n_train=d.synthetic_n, size=d.image_size,
                                                            seed=self.config.seed)
    elif d.synthetic == "shape_edits":
      from unirl_jax.data import shape_edits
      manifest, make = "edit_pairs.jsonl", lambda: shape_edits.write(out, n_train=d.synthetic_n, size=d.image_size,
                                                                     seed=self.config.seed)
    else:
      from unirl_jax.data import synthetic
      manifest, make = "train.jsonl", lambda: synthetic.generate(out, n=d.synthetic_n, size=d.image_size,
                                                                 seed=self.config.seed)
    manifest = os.path.join(out, manifest)
    if write and not os.path.exists(manifest):
      make()
    return manifest

  # ---- the step ---------------------------------------------------------------------------------

  @staticmethod
  def parts(batch) -> dict[str, PretrainBatch]:
    """A batch as {stream: rows}: one entry for a one-task batch, one per stream for data.mix='rows'."""
    if isinstance(batch, dict):
      return batch
    return {batch.task + ("+image" if batch.task == "chat" and batch.pixel_values is not None else ""): batch}

  def _step_fn(self, parts: dict[str, PretrainBatch]):
    key = tuple(parts)
    if key in self._steps:
      return self._steps[key]
    model, lc, tx = self.model, self.config.loss, self.tx
    vit_grid = self.image_spec.vit_grid
    seed = self.config.seed
    window = self.config.data.max_target_len

    def part_loss(tr, frozen, b: PretrainBatch, rng):
      grid = vit_grid if b.pixel_values is not None else None
      if b.task == "chat":
        return lm_supervised_loss(model.lm, train_state.merge(tr, frozen)["lm"], b, grid, window)
      return flow_matching_loss(model, train_state.merge(tr, frozen), b, rng, lc, grid)

    def step(state, frozen, parts):
      # The ViT patches travel per row (B, patches, C*T*P*P), split over the batch axes like the rest.
      parts = {k: b if b.pixel_values is None else b.replace(pixel_values=b.pixel_values.reshape(
          -1, b.pixel_values.shape[-1])) for k, b in parts.items()}
      rng = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])

      def loss_fn(tr):
        if len(parts) == 1:
          return part_loss(tr, frozen, *parts.values(), rng)
        # Rows mixed in one batch: the sum of each stream's mean loss, each stream with its own draws.
        total, aux = 0.0, {}
        for i, (name, b) in enumerate(parts.items()):
          loss, a = part_loss(tr, frozen, b, jax.random.fold_in(rng, i))
          total = total + loss
          aux.update({f"loss_{name}": loss, **{f"{k}_{name}": v for k, v in a.items()}})
        return total, aux

      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
      state, g = train_state.apply_gradients(tx, state, loss, grads)
      return state, {"loss": loss, **g, **aux}

    batch_sh = {name: jax.tree.map(lambda v: sharding.batch_sharding(self.mesh, np.ndim(v)), self._rows(b))
                for name, b in parts.items()}
    frozen_sh = jax.tree.map(lambda x: x.sharding, self.frozen)
    fn = jax.jit(step, donate_argnums=(0,), in_shardings=(self.state_shardings, frozen_sh, batch_sh),
                 out_shardings=(self.state_shardings, self.replicated))
    self._steps[key] = (fn, batch_sh)
    return self._steps[key]

  def train_step(self, batch) -> dict:
    """One update on a batch (`PretrainBatch`, or data.mix='rows' a dict stream -> `PretrainBatch`)."""
    parts = self.parts(batch)
    fn, batch_sh = self._step_fn(parts)
    parts = self.put_rows({k: self._rows(b) for k, b in parts.items()}, local=True)
    self.state, m = fn(self.state, self.frozen, parts)
    return m

  @staticmethod
  def _rows(b: PretrainBatch) -> PretrainBatch:
    """The pipeline's (B * patches, ...) ViT patches as (B, patches, ...): every field split by rows."""
    if b.pixel_values is None:
      return b
    return b.replace(pixel_values=np.reshape(b.pixel_values, (b.input_ids.shape[0], -1, b.pixel_values.shape[-1])))

  # ---- the loop ---------------------------------------------------------------------------------

  def run(self, stop_after: Optional[int] = None) -> list[dict]:
    """Trains to train.total_steps (or stops after `stop_after`, as a killed run would)."""
    c = self.config
    import grain
    it = iter(self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=c.data.read_threads,
                                                            prefetch_buffer_size=c.data.prefetch_batches)))

    def step_fn(step):
      batch = next(it)
      m = self.gather(self.train_step(batch))
      row = {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
             "skipped": int(m["skipped"]), "task": "+".join(self.parts(batch)),
             **{k: float(v) for k, v in m.items() if k.startswith("loss_")},
             "lr": float(optim.schedule(c.optim.lr, self.total_steps, c.optim.warmup_steps, c.optim.min_lr,
                                        c.optim.schedule)(step - 1))}
      return row, None

    def log_line(step, _, log):
      if not distributed.is_main():
        return
      r = log.last
      print(f"step {step:5d}  loss {r['loss']:.4f}  grad_norm {r['grad_norm']:.3f}  lr {r['lr']:.2e}  "
            f"{r['step_time']:.2f}s/step")

    return self.fit(step_fn, stop_after, data=it, hooks=[Hook(c.train.log_every, log_line)])
