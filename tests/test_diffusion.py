"""Flow-matching schedule vs diffusers, and CFG Euler sampling with SANA vs a diffusers scheduler loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unirl_jax.diffusion.sampler import Guidance, euler_sample, guided_velocity
from unirl_jax.diffusion.schedule import FlowMatchSchedule, dynamic_shift_mu
from unirl_jax.models import sana

CASES = [
    (dict(shift=3.0), 10, None), (dict(shift=3.0), 50, None), (dict(shift=1.0), 7, None),
    (dict(shift=2.5), 1, None), (dict(use_dynamic_shifting=True), 12, 0.8),
    (dict(use_dynamic_shifting=True, time_shift_type="linear"), 4, 1.1), (dict(shift=3.0, shift_terminal=0.1), 5, None),
]


@pytest.mark.parametrize("kw,n,mu", CASES)
def test_schedule_equals_diffusers(kw, n, mu):
  from diffusers import FlowMatchEulerDiscreteScheduler
  ref = FlowMatchEulerDiscreteScheduler(**kw)
  ref.set_timesteps(n, mu=mu)
  sigmas, timesteps = FlowMatchSchedule(**kw).set_timesteps(n, mu)
  np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())
  np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())


def test_unirl_sigma_table():
  """unirl.md §3.1: shift 3, 10 steps; σ_min is shifted twice, so the last σ is 0.0089, not 0.0030."""
  sigmas, t = FlowMatchSchedule(shift=3.0).set_timesteps(10)
  np.testing.assert_allclose(sigmas, [1.0, .9601, .9133, .8577, .7904, .7073, .6022, .4649, .2780, .0089, 0.0],
                             atol=6e-5)
  np.testing.assert_allclose(t, sigmas[:-1] * 1000, rtol=1e-6)


def test_schedule_from_diffusers_config(tmp_path):
  from diffusers import FlowMatchEulerDiscreteScheduler
  FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False).save_pretrained(tmp_path / "scheduler")
  assert FlowMatchSchedule.from_diffusers(str(tmp_path)) == FlowMatchSchedule(shift=3.0)
  with pytest.raises(ValueError, match="use_karras_sigmas"):
    FlowMatchSchedule.from_diffusers({"use_karras_sigmas": True})
  with pytest.raises(ValueError, match="mu"):
    FlowMatchSchedule(use_dynamic_shifting=True).set_timesteps(4)
  s = FlowMatchSchedule()
  assert dynamic_shift_mu(256, s) == pytest.approx(0.5) and dynamic_shift_mu(4096, s) == pytest.approx(1.15)


@pytest.fixture(scope="module")
def tiny_sana(tmp_path_factory):
  from unirl_jax.convert.pipeline import import_kind
  from test_sana import diffusers_model
  m = diffusers_model(sana.tiny(), seed=4)
  d = tmp_path_factory.mktemp("sana_sampling")
  m.save_pretrained(d / "hf")
  return m, sana.load(import_kind("sana", str(d / "hf"), str(d / "jax")))


def test_cfg_sampling_matches_diffusers_scheduler_loop(tiny_sana):
  from diffusers import FlowMatchEulerDiscreteScheduler
  m, (model, params) = tiny_sana
  cfg = model.config
  rs = np.random.RandomState(0)
  x0 = rs.randn(2, 8, 8, cfg.in_channels).astype(np.float32)
  cond = rs.randn(2, 5, cfg.caption_channels).astype(np.float32)
  null = np.zeros_like(cond)
  scale, steps = 3.5, 6
  sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
  sched.set_timesteps(steps)
  x = torch.tensor(x0).permute(0, 3, 1, 2)
  with torch.no_grad():
    for t in sched.timesteps:
      inp = torch.cat([x, x])
      v = m(inp, torch.tensor(np.concatenate([null, cond])), t.expand(4)).sample
      v_u, v_c = v.chunk(2)
      x = sched.step(v_u + scale * (v_c - v_u), t, x).prev_sample
  ref = x.permute(0, 2, 3, 1).numpy()
  sigmas, timesteps = FlowMatchSchedule(shift=3.0).set_timesteps(steps)
  g = Guidance(scale)
  ctx = g.conditions(jnp.asarray(cond), jnp.asarray(null))
  vel = guided_velocity(lambda x, t, ref: model.apply({"params": params}, x, ctx, t), g)
  out = jax.jit(lambda x: euler_sample(vel, x, sigmas, timesteps))(jnp.asarray(x0))
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
  assert np.abs(ref - x0).max() > 0.1  # the run really moved


def test_scan_and_python_loop_agree_and_trajectory():
  v = lambda x, t: -x * (t[:, None] / 1000.0)
  sigmas, timesteps = FlowMatchSchedule(shift=3.0).set_timesteps(5)
  x = jnp.ones((3, 4))
  a, traj = euler_sample(v, x, sigmas, timesteps, return_trajectory=True)
  b = euler_sample(v, x, sigmas, timesteps, use_scan=False)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  assert traj.shape == (6, 3, 4)
  np.testing.assert_array_equal(np.asarray(traj[0]), np.asarray(x))
  np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(a))


def test_three_way_guidance_combines_branches_in_order():
  """UniRL editing CFG: batch [∅ text + zero ref, ∅ text + ref, text + ref]."""
  calls = {}
  cond = jnp.ones((2, 3, 4))
  g = Guidance(scale=3.0, ref_scale=1.2)
  ctx = g.conditions(cond, jnp.zeros_like(cond))

  def apply(x, t, ref):
    calls["ref"] = ref
    # A fake velocity that identifies its branch: ctx sum + 10 * ref sum.
    return x * 0 + (ctx.sum(axis=(1, 2)) + 10 * ref.sum(axis=(1, 2, 3)))[:, None, None, None]

  ref = jnp.full((2, 2, 2, 1), 0.5)
  v = guided_velocity(apply, g, ref_latents=ref)(jnp.zeros((2, 2, 2, 1)), jnp.ones(2))
  v_null, v_ref, v_full = 0.0, 10 * 4 * 0.5, 12.0 + 10 * 4 * 0.5
  expected = v_null + 1.2 * (v_ref - v_null) + 3.0 * (v_full - v_ref)
  np.testing.assert_allclose(np.asarray(v), expected, rtol=1e-6)
  assert ctx.shape[0] == 6 and float(calls["ref"][:2].sum()) == 0.0
  assert Guidance(1.0).branches == 1 and Guidance(2.0).branches == 2 and g.branches == 3
  with pytest.raises(ValueError, match="ref_latents"):
    guided_velocity(apply, g)
  # detach_uncond: the gradient flows through the fully conditional branch only.
  two = Guidance(3.5)
  w = lambda x, t, ref: x * jnp.arange(1.0, 5.0)[:, None, None, None]  # branch 0 rows x1, x2; branch 1 x3, x4
  x = jnp.ones((2, 2, 2, 1))
  full = jax.grad(lambda x: guided_velocity(w, two)(x, jnp.ones(2)).sum())(x)
  cond_only = jax.grad(lambda x: guided_velocity(w, two, detach_uncond=True)(x, jnp.ones(2)).sum())(x)
  np.testing.assert_allclose(np.asarray(full)[:, 0, 0, 0], [1 + 3.5 * (3 - 1), 2 + 3.5 * (4 - 2)])
  np.testing.assert_allclose(np.asarray(cond_only)[:, 0, 0, 0], [3.5 * 3, 3.5 * 4])
