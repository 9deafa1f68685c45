"""`python -m unirl_jax.bench --config configs/bench/small.py --compare torch-step`: the whole text-to-image GRPO
step, ours against the PyTorch reference (unirl_jax.bench.torch_unified) on the same config and weights.

Both sides compute the loss and gradient of the same stored trajectories (they must agree), and each phase is
timed on its own side: `rollout` (condition + SDE sampling with CFG + DC-AE decode), `reward` (the same host
function on each side's images), `update` (recomputed loss, backward, AdamW) and the whole `step`. Ratios are
JAX / torch (< 1: ours is faster). The torch side runs eager fp32 on the same threads; the DiT without gradient
checkpointing (the original's is inferred on; without it torch does less work, the stronger baseline).
"""

from __future__ import annotations

import tempfile

import jax
import jax.numpy as jnp
import numpy as np

PHASES = ("rollout", "reward", "update", "step")
LOSS_RTOL = 1e-4  # fp32 sums over the bench's wider layers drift more than the tiny test's 1e-5


def _torch_side(tm, ref, run_cfg, condition, texts, reward_fns, device):
  """-> no-arg callables of each torch phase, sharing the last rollout's outputs as the trainer does (each ends
  with the device idle, so the host clock times it)."""
  import torch
  from unirl_jax import rewards
  from unirl_jax.bench import torch_unified as tu
  from unirl_jax.data.pipeline import to_uint8
  c = run_cfg
  dc = c.dm
  sched = dc.schedule()
  sig, ts = np.asarray(sched.sigmas).tolist(), np.asarray(sched.timesteps).tolist()
  ids, mask = (torch.from_numpy(np.asarray(a)).long().to(device) for a in (condition.ids, condition.mask))
  b = ids.shape[0]
  f = tm.cfg.vae.spatial_compression_ratio
  shape = (b, tm.cfg.dit.in_channels, c.image_size // f, c.image_size // f)
  opt = torch.optim.AdamW(tm.trained_parameters(), lr=c.optim.lr, betas=(c.optim.b1, c.optim.b2), eps=c.optim.eps,
                          weight_decay=c.optim.weight_decay)
  prompts = [t for t in texts for _ in range(c.group_size)]
  last = {}

  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  def rollout():
    x0 = torch.randn(shape, device=device)
    noises = [torch.randn(shape, device=device) for _ in ts]
    last["lat"], last["lp"], images = tu.rollout(tm, ids, mask, x0, noises, sig, ts, dc)
    last["images"] = images
    sync()
    return None

  def reward():
    imgs = to_uint8(last["images"].permute(0, 2, 3, 1).cpu().numpy())
    r, _ = rewards.score(c.reward, rewards.RewardInputs(imgs, prompts, None), reward_fns)
    last["adv"] = tu.advantages(np.asarray(r, np.float32), c.group_size)
    return r

  def update():
    opt.zero_grad()
    loss = tu.loss(tm, ref, ids, mask, last["lat"], last["lp"], last["adv"], sig, ts, dc)
    loss.backward()
    opt.step()
    sync()
    return None

  def step():
    rollout()
    reward()
    return update()
  return {"rollout": rollout, "reward": reward, "update": update, "step": step}


def check_same_step(trainer, trainable, tm, ref, condition, rng) -> dict:
  """The loss and gradient of one stored trajectory (our rollout) on both sides, and the torch reference's own in
  float64 -> the gaps; raises past tolerance.

  The policy term's gradient -A·ρ·(x' − μ)/s²·∇μ amplifies rounding in μ by 1/s (s is small on the last steps), so
  at the bench's widths fp32 gradients sit ~1e-3 from the exact ones on either side: ours must be as close to the
  float64 reference as torch's own fp32 is (within 2x), and the losses within LOSS_RTOL."""
  import copy
  import torch
  from unirl_jax import train_state
  from unirl_jax.bench import torch_unified as tu
  from unirl_jax.rl.batch import DMRows, Experience
  from unirl_jax.rl.update import grpo_grads
  task, c = trainer.task, trainer.config
  traj, _ = task._rollout(trainable, trainer.frozen, trainer.put_rows(condition), task.schedule, rng)
  adv = np.linspace(-1.0, 2.0, c.rows).astype(np.float32)  # not zero-sum: the loss is not 0 by symmetry
  exp = Experience(trainer.put_rows(adv), task.schedule, DMRows(trainer.put_rows(condition), traj))
  loss, grads, _ = jax.jit(lambda t, f, r, e: grpo_grads(trainer.parts, t, f, r, e))(
      trainable, trainer.frozen, trainer.ref_trainable, exp)
  sched = c.dm.schedule()
  sig, ts = np.asarray(sched.sigmas).tolist(), np.asarray(sched.timesteps).tolist()
  dev = next(tm.parameters()).device
  ids, mask = (torch.from_numpy(np.asarray(a)).long().to(dev) for a in (condition.ids, condition.mask))
  lat = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(traj.latents, np.float32), (1, -1), (0, 2))))
  lat = lat.to(dev)
  lp = torch.from_numpy(np.asarray(traj.log_probs, np.float32).T.copy()).to(dev)

  def torch_grads(m, r, dtype):
    m.zero_grad()
    out = tu.loss(m, r, ids, mask, lat.to(dtype), lp.to(dtype), torch.from_numpy(adv).to(dev, dtype), sig, ts,
                  c.dm)
    out.backward()
    g, _ = train_state.split(m.to_jax(grads=True), tuple(trainer.state["trainable"]))
    return float(out), dict(jax.tree_util.tree_leaves_with_path(g))

  t_loss, g32 = torch_grads(tm, ref, torch.float32)
  tm64 = copy.deepcopy(tm).double()
  _, g64 = torch_grads(tm64, tu.reference_copy(tm64), torch.float64)
  ours = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(grads)))

  def rel(a, b):
    num = sum(float(np.sum((np.asarray(a[k], np.float64) - b[k]) ** 2)) for k in b)
    den = sum(float(np.sum(np.asarray(b[k], np.float64) ** 2)) for k in b)
    return (num / den) ** 0.5 if den else 0.0

  out = {"loss_jax": float(loss), "loss_torch": t_loss,
         "loss_rel_diff": abs(float(loss) - t_loss) / max(abs(t_loss), 1e-12),
         "grad_rel_diff": rel(ours, g32), "grad_rel_diff_to_fp64": rel(ours, g64),
         "torch_fp32_grad_rel_diff_to_fp64": rel(g32, g64)}
  if not (out["loss_rel_diff"] <= LOSS_RTOL and
          out["grad_rel_diff_to_fp64"] <= 2 * out["torch_fp32_grad_rel_diff_to_fp64"] + 1e-6):
    raise AssertionError(f"the JAX and torch steps disagree on the same trajectories: {out}")
  return out


def compare_step(config, repeats: int, log=print) -> dict:
  """Builds the torch reference at the bench's model preset, converts its weights into the trainer, checks both
  steps agree, then times every phase on both sides."""
  import torch
  from unirl_jax import run_config, train_state
  from unirl_jax.bench import grpo
  from unirl_jax.bench import torch_unified as tu
  from unirl_jax.bench.timing import time_fn
  from unirl_jax.models import unified
  from unirl_jax.rl.trainer import GRPOTrainer
  run_cfg = run_config.load(config)
  if run_cfg.task != "t2i" or run_cfg.model.dtype != "float32":
    raise ValueError(f"--compare torch-step runs the t2i task in float32 (got task {run_cfg.task!r}, "
                     f"model.dtype {run_cfg.model.dtype!r}): use configs/bench/small.py or tiny.py")
  preset = getattr(unified, run_cfg.model.init.split(":", 1)[1])()
  # On a GPU both sides in strict fp32 (no TF32 matmuls or convolutions on either), the same arithmetic.
  on_gpu = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  if on_gpu:
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  tm = tu.TorchUnified(preset, seed=run_cfg.seed)
  model = unified.UnifiedModel(unified.with_execution(preset, **train_state.execution_knobs(run_cfg.model)))
  params = tm.to_jax()
  tm.to(device)
  ref = tu.reference_copy(tm)
  with tempfile.TemporaryDirectory() as wd:
    trainer = GRPOTrainer(run_cfg, wd, init=(model, params, None))
    texts = trainer.prompts.captions(1)
    condition = trainer.task.condition(texts)
    initial = jax.tree.map(jnp.array, trainer.state["trainable"])  # the torch weights; the phases update the state
    # Our phases first: timed after the torch passes below, the same XLA programs ran ~20 % slower here.
    jax_phases = grpo.run(trainer, repeats, log=log)
    check = check_same_step(trainer, initial, tm, ref, condition, jax.random.PRNGKey(1))
    log(f"  same trajectories: loss {check['loss_jax']:.6g} vs {check['loss_torch']:.6g}, gradient relative "
        f"difference {check['grad_rel_diff']:.2g} (to fp64 {check['grad_rel_diff_to_fp64']:.2g}, torch fp32's "
        f"{check['torch_fp32_grad_rel_diff_to_fp64']:.2g})")
  torch_fns = _torch_side(tm, ref, run_cfg, condition, texts, trainer.reward_fns, device)
  torch_phases = {}
  for name in PHASES:
    torch_phases[name] = time_fn(torch_fns[name], repeats, warmup=1 if name != "reward" else 0)
    log(f"  torch {name:8s} {torch_phases[name]['median_s'] * 1e3:10.2f} ms")
  ratio = {k: jax_phases[k]["median_s"] / torch_phases[k]["median_s"] for k in PHASES}
  return {"check": check, "jax": {k: jax_phases[k] for k in PHASES}, "torch": torch_phases, "ratio": ratio,
          "step_ratio": ratio["step"], "torch_threads": torch.get_num_threads(), "torch_device": str(device),
          "trajectories": run_cfg.rows}


def format_table(r: dict) -> str:
  rows = ["phase        JAX ms   torch ms   JAX/torch"]
  rows += [f"{k:9s} {r['jax'][k]['median_s'] * 1e3:9.1f} {r['torch'][k]['median_s'] * 1e3:10.1f} {r['ratio'][k]:11.3f}"
           for k in PHASES]
  c = r["check"]
  rows.append(f"same trajectories: loss {c['loss_jax']:.6g} (JAX) vs {c['loss_torch']:.6g} (torch); gradient "
              f"relative difference {c['grad_rel_diff']:.2g} to torch fp32, {c['grad_rel_diff_to_fp64']:.2g} to torch "
              f"fp64 (torch fp32's own: {c['torch_fp32_grad_rel_diff_to_fp64']:.2g}); torch on {r['torch_threads']} "
              f"threads")
  return "\n".join(rows)
