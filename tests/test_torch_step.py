"""The PyTorch reference of the text-to-image GRPO step (unirl_jax.bench.torch_unified: transformers, diffusers and a
torch connector, written from the reference) against ours on tiny models with the same weights: the same rollout
log-probs given the same noise, and the same loss and gradient on the same stored trajectories."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unirl_jax import train_state
from unirl_jax.bench import torch_unified as tu
from unirl_jax.models import unified
from unirl_jax.rl import dm
from unirl_jax.rl.batch import Condition, DMRows, Experience
from unirl_jax.rl.update import grpo_grads

G = 4
DC = dm.DMConfig(steps=3, cfg=3.5, beta=0.5)  # a large β so the KL's share of the gradient is checked too
TRAINED = ("connector", "dit", "t2i_queries")


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, -3)))


@pytest.fixture(scope="module")
def setup():
  cfg = unified.tiny()
  tm = tu.TorchUnified(cfg, seed=0)
  ref = tu.reference_copy(tm)
  tu.randomise(ref, seed=1, scale=0.02)  # the reference policy a few updates behind: a non-zero KL
  model = unified.UnifiedModel(cfg)
  params = jax.tree.map(jnp.asarray, tm.to_jax())
  ref_params = jax.tree.map(jnp.asarray, ref.to_jax())
  rs = np.random.RandomState(0)
  ids = rs.randint(10, 500, (G, 7)).astype(np.int32)  # ordinary tokens of the tiny vocabulary
  mask = np.ones_like(ids)
  ids[:2, :3], mask[:2, :3] = cfg.lm.pad_token_id, 0  # two rows left-padded
  sched = DC.schedule()
  h = cfg.dit.sample_size
  return cfg, tm, ref, model, params, ref_params, ids, mask, sched, (h, h)


@pytest.fixture(scope="module")
def rollouts(setup):
  """Ours (dm.rollout) and the torch reference's from the same initial latents and per-step noises."""
  cfg, tm, _, model, params, _, ids, mask, sched, hw = setup
  rng = jax.random.PRNGKey(3)
  traj, images = jax.jit(lambda p, i, m, r: dm.rollout(model, p, Condition(i, m), r, DC, sched, hw))(
      params, ids, mask, rng)
  # dm.rollout's own draws: x0 from the first half of the key, one noise per step from the second's splits.
  k_x, k = jax.random.split(rng)
  shape = (G,) + hw + (cfg.dit.in_channels,)
  x0 = jax.random.normal(k_x, shape, jnp.float32)
  noises = []
  for _ in range(DC.steps):
    k, key = jax.random.split(k)
    noises.append(nchw(jax.random.normal(key, shape, jnp.float32)))
  sig, ts = np.asarray(sched.sigmas).tolist(), np.asarray(sched.timesteps).tolist()
  t_lat, t_lp, t_img = tu.rollout(tm, torch.from_numpy(ids).long(), torch.from_numpy(mask).long(), nchw(x0), noises,
                                  sig, ts, DC)
  return traj, images, (t_lat, t_lp, t_img)


def test_rollout_log_probs_match_given_the_same_noise(rollouts):
  traj, images, (t_lat, t_lp, t_img) = rollouts
  np.testing.assert_allclose(np.asarray(traj.log_probs), t_lp.numpy().T, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.moveaxis(np.asarray(traj.latents), -1, 2), np.moveaxis(t_lat.numpy(), 0, 1),
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(images), np.moveaxis(t_img.numpy(), 1, -1), atol=1e-4, rtol=0)


def test_loss_and_gradient_match_on_the_same_trajectories(setup, rollouts):
  cfg, tm, ref, model, params, ref_params, ids, mask, sched, _ = setup
  traj = rollouts[0]
  adv = np.asarray([1.5, -0.5, 0.25, -1.25], np.float32)
  trainable, frozen = train_state.split(params, TRAINED)
  ref_trainable, _ = train_state.split(ref_params, TRAINED)
  exp = Experience(jnp.asarray(adv), sched, DMRows(Condition(jnp.asarray(ids), jnp.asarray(mask)), traj))
  loss, grads, metrics = jax.jit(lambda t, f, r, e: grpo_grads((dm.DMLoss(model, DC),), t, f, r, e))(
      trainable, frozen, ref_trainable, exp)
  assert float(metrics["kl"]) > 1e-4  # the KL term is live
  tm.zero_grad()
  sig, ts = np.asarray(sched.sigmas).tolist(), np.asarray(sched.timesteps).tolist()
  t_loss = tu.loss(tm, ref, torch.from_numpy(ids).long(), torch.from_numpy(mask).long(),
                   torch.moveaxis(nchw(np.moveaxis(np.asarray(traj.latents), 1, 0)), 0, 0),
                   torch.from_numpy(np.asarray(traj.log_probs).T.copy()), adv, sig, ts, DC)
  t_loss.backward()
  np.testing.assert_allclose(float(loss), float(t_loss), rtol=1e-5, atol=1e-6)
  t_grads, _ = train_state.split(tm.to_jax(grads=True), TRAINED)
  flat, t_flat = jax.tree_util.tree_leaves_with_path(grads), dict(jax.tree_util.tree_leaves_with_path(t_grads))
  assert len(flat) == len(t_flat)
  top = max(np.abs(np.asarray(g)).max() for g in t_flat.values())
  for path, g in flat:
    tg = np.asarray(t_flat[path])
    # 1e-4 of each tensor's own scale; a floor of 1e-7 of the largest gradient for the ones that are zero up to
    # rounding (a cross-attention key bias shifts every logit alike: its true gradient is 0).
    tol = 1e-4 * np.abs(tg).max() + 1e-7 * top
    assert np.abs(np.asarray(g) - tg).max() <= tol, jax.tree_util.keystr(path)
  # t2i feeds the reference branch zeros: its patch kernel gets no gradient, on both sides exactly.
  g_ref = np.asarray(grads["dit"]["ref_patch_embed"]["proj"]["kernel"])
  assert not g_ref.any() and not t_grads["dit"]["ref_patch_embed"]["proj"]["kernel"].any()


def test_bench_torch_step_json_carries_the_step_and_phase_ratios():
  """`python -m unirl_jax.bench --compare torch-step` on the tiny bench config: the same-trajectory check, then
  every phase timed on both sides with its ratio."""
  import json
  from configs.bench import tiny as bench_tiny
  from unirl_jax.bench import __main__ as bench
  from unirl_jax.bench import torch_step
  c = bench_tiny.get_config()
  c.bench.repeats = 1
  out = json.loads(json.dumps(bench.run(c, compare="torch-step", log=lambda *_: None)))
  r = out["compare_torch_step"]
  assert out["step_ratio"] == r["step_ratio"] == r["ratio"]["step"]
  for phase in torch_step.PHASES:
    assert r["jax"][phase]["median_s"] > 0 and r["torch"][phase]["median_s"] > 0
    assert r["ratio"][phase] == pytest.approx(r["jax"][phase]["median_s"] / r["torch"][phase]["median_s"])
  assert r["check"]["loss_rel_diff"] <= 1e-5 and r["check"]["grad_rel_diff"] <= 1e-4
  assert abs(r["check"]["loss_torch"]) > 0.1  # not a loss that is 0 by symmetry
  assert "JAX/torch" in torch_step.format_table(r)


def test_torch_step_refuses_what_it_does_not_reproduce():
  from configs.bench import tiny as bench_tiny
  from unirl_jax.bench import torch_step
  c = bench_tiny.get_config()
  c.model.dtype = "bfloat16"
  with pytest.raises(ValueError, match="model.dtype"):
    torch_step.compare_step(c, 1)


def test_unrolled_steps_without_remat_give_the_same_loss_and_gradient(setup, rollouts):
  """dm.unroll_steps / remat_steps=False (the CPU bench's execution) change how the loss runs, not what it is."""
  import dataclasses
  _, _, _, model, params, ref_params, ids, mask, sched, _ = setup
  trainable, frozen = train_state.split(params, TRAINED)
  ref_trainable, _ = train_state.split(ref_params, TRAINED)
  exp = Experience(jnp.asarray([1.5, -0.5, 0.25, -1.25]), sched,
                   DMRows(Condition(jnp.asarray(ids), jnp.asarray(mask)), rollouts[0]))
  fast = dataclasses.replace(DC, unroll_steps=DC.steps, remat_steps=False)
  out = [jax.jit(lambda t, f, r, e, dc=dc: grpo_grads((dm.DMLoss(model, dc),), t, f, r, e)[:2])(
      trainable, frozen, ref_trainable, exp) for dc in (DC, fast)]
  np.testing.assert_allclose(float(out[0][0]), float(out[1][0]), rtol=1e-6)
  top = max(float(np.abs(np.asarray(g)).max()) for g in jax.tree.leaves(out[0][1]))
  for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):  # floor: the zero-by-symmetry biases
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7 * top)
  with pytest.raises(ValueError, match="unroll_steps"):
    dataclasses.replace(DC, unroll_steps=0)
