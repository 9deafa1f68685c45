"""Flow-GRPO's SDE step and log-prob, group advantages, and the (sum, denominator) GRPO losses."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from unirl_jax.diffusion.sampler import euler_sample
from unirl_jax.diffusion.schedule import FlowMatchSchedule
from unirl_jax.diffusion.sde import Schedule, sde_sample, sde_std, sde_step
from unirl_jax.rl.advantages import group_advantages
from unirl_jax.rl.losses import completion_mask, dm_kl, dm_policy_loss, k3_kl, lm_loss

SIGMAS, TIMESTEPS = FlowMatchSchedule(shift=3.0).set_timesteps(10)
SCHEDULE = Schedule.make(SIGMAS, TIMESTEPS)


def test_log_prob_equals_scipy_gaussian_density():
  rs = np.random.RandomState(0)
  x, v, noise = (rs.randn(3, 4, 4, 2).astype(np.float32) for _ in range(3))
  for i in (0, 4, 9):
    out = sde_step(x, v, SIGMAS[i], SIGMAS[i + 1], SIGMAS[1], 0.7, noise=noise)
    ref = stats.norm.logpdf(np.asarray(out.prev, np.float64), np.asarray(out.mean, np.float64), float(out.std))
    np.testing.assert_allclose(np.asarray(out.log_prob), ref.reshape(3, -1).mean(1), rtol=1e-5)
    s = sde_step(x, v, SIGMAS[i], SIGMAS[i + 1], SIGMAS[1], 0.7, prev=out.prev, reduce="sum")
    np.testing.assert_allclose(np.asarray(s.log_prob), ref.reshape(3, -1).sum(1), rtol=1e-5)


def test_unirl_std_table():
  """unirl.md §3.1: transition std 0.700 at the first step (σ₁ in the denominator), 0.0063 at the last."""
  s0 = float(sde_std(SIGMAS[0], SIGMAS[1], SIGMAS[1], 0.7)[1])
  s9 = float(sde_std(SIGMAS[9], SIGMAS[10], SIGMAS[1], 0.7)[1])
  assert s0 == pytest.approx(0.700, abs=2e-3) and s9 == pytest.approx(0.0063, abs=2e-4)


def test_one_step_sde_uses_sigma_1_and_stays_finite():
  """With one step σ₁ = 0, so the first step's σ_sde = a·√(1/(1 − 0)) = a (the original's rule); it used to
  divide by zero."""
  sigmas, timesteps = FlowMatchSchedule(shift=3.0).set_timesteps(1)
  sched = Schedule.make(sigmas, timesteps)
  assert float(sched.sigma_1) == 0.0
  sde_sigma, std = sde_std(sigmas[0], sigmas[1], sched.sigma_1, 0.7)
  assert float(sde_sigma) == pytest.approx(0.7) and float(std) == pytest.approx(0.7)
  x = jnp.ones((2, 2, 2, 1))
  traj = sde_sample(lambda x, t: -x, x, sched, jax.random.PRNGKey(0))
  assert traj.latents.shape == (2, 2, 2, 2, 1)
  # σ 1 -> 0, v = -x = -1: μ = x·(1 − 0.49/2) + v·(−1) = 1.755, s = 0.7.
  x1 = np.asarray(traj.latents[:, 1], np.float64)
  want = (-(x1 - 1.755) ** 2 / (2 * 0.49) - np.log(0.7) - 0.5 * np.log(2 * np.pi)).reshape(2, -1).mean(1)
  np.testing.assert_allclose(np.asarray(traj.log_probs[:, 0]), want, rtol=1e-5)


def velocity(x, t):
  return -0.5 * x + jnp.sin(t / 300.0)[:, None, None, None]


def test_vanishing_noise_sde_is_the_ode():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  ode = euler_sample(velocity, x, SIGMAS, TIMESTEPS)
  sde = sde_sample(velocity, x, SCHEDULE, jax.random.PRNGKey(1), noise_level=1e-7)
  np.testing.assert_allclose(np.asarray(sde.latents[:, -1]), np.asarray(ode), atol=1e-5)
  sched = Schedule.make(SIGMAS, TIMESTEPS, sde_steps=3)
  tail = sde_sample(velocity, x, sched, jax.random.PRNGKey(1))
  assert np.asarray(sched.sde_mask).tolist() == [True] * 3 + [False] * 7
  assert (np.asarray(tail.log_probs)[:, 3:] == 0).all() and (np.asarray(tail.log_probs)[:, :3] != 0).all()


def test_on_policy_recomputation_reproduces_the_log_probs_and_gives_the_reinforce_gradient():
  """Recomputing a stored rollout reproduces its log-probs (to float32 rounding across the two programs), and
  the on-policy loss's gradient is −A·∇log p."""
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, 3))
  roll = sde_sample(velocity, x, SCHEDULE, jax.random.PRNGKey(3))
  for i in range(10):
    t = jnp.full((2,), TIMESTEPS[i])
    xi = roll.latents[:, i]
    re = sde_step(xi, velocity(xi, t), SIGMAS[i], SIGMAS[i + 1], SIGMAS[1], 0.7, prev=roll.latents[:, i + 1])
    np.testing.assert_allclose(np.asarray(re.log_prob), np.asarray(roll.log_probs[:, i]), rtol=1e-6, atol=1e-6)
  lp = lambda th: sde_step(x, jnp.broadcast_to(th, x.shape), SIGMAS[3], SIGMAS[4], SIGMAS[1], 0.7,
                           prev=roll.latents[:, 4]).log_prob
  adv = jnp.array([0.7, -0.2])
  g = jax.grad(lambda th: dm_policy_loss(lp(th), None, adv)[0])(0.3)
  g_ref = jax.grad(lambda th: -jnp.sum(adv * lp(th)))(0.3)
  np.testing.assert_allclose(float(g), float(g_ref), rtol=1e-6)


def test_advantages():
  r = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
  a = np.asarray(group_advantages(r, 4))
  sd = np.std([1, 2, 3, 4], ddof=1)
  np.testing.assert_allclose(a[:4], (np.array([1, 2, 3, 4]) - 2.5) / (sd + 1e-4), rtol=1e-6)
  assert (a[4:] == 0).all()  # zero variance: zero advantage, not NaN
  p = np.asarray(group_advantages(r, 4, std="population"))
  np.testing.assert_allclose(p[:4], (np.array([1, 2, 3, 4]) - 2.5) / (np.std([1, 2, 3, 4]) + 1e-4), rtol=1e-6)
  assert np.abs(np.asarray(group_advantages(jnp.array([0.0] * 7 + [100.0]), 8, clip=2.0))).max() == 2.0
  assert (np.asarray(group_advantages(jnp.array([3.0, 4.0]), 1)) == 0).all()
  with pytest.raises(ValueError, match="groups of 3"):
    group_advantages(r, 3)


def test_positive_advantage_raises_log_prob():
  """DM: a gradient step on the policy loss moves μ toward the sample of a positive-advantage trajectory."""
  x = jnp.zeros((1, 2, 2, 1))
  prev = jnp.full((1, 2, 2, 1), 0.3)

  def logp(theta):
    return sde_step(x, jnp.broadcast_to(theta, x.shape), SIGMAS[5], SIGMAS[6], SIGMAS[1], 0.7, prev=prev).log_prob

  theta = jnp.float32(0.0)
  old = jax.lax.stop_gradient(logp(theta))
  for adv, direction in ((1.0, 1), (-1.0, -1)):
    loss = lambda th: dm_policy_loss(logp(th), old, jnp.array([adv]))[0]
    new = theta - 1e-3 * jax.grad(loss)(theta)
    assert direction * (float(logp(new)[0]) - float(old[0])) > 0
  # LM: positive advantage on token 2 raises its log-prob.
  logits = jnp.zeros((1, 1, 5))
  tok = jnp.array([[2]])
  lp = lambda lg: jnp.take_along_axis(jax.nn.log_softmax(lg), tok[..., None], -1)[..., 0]
  loss = lambda lg: lm_loss(lp(lg), jax.lax.stop_gradient(lp(lg)), jax.lax.stop_gradient(lp(lg)), jnp.array([1.0]),
                            jnp.ones((1, 1)))[0]
  assert float(lp(logits - 0.1 * jax.grad(loss)(logits))[0, 0]) > float(lp(logits)[0, 0])


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "dr_grpo"])
def test_micro_batches_give_the_same_gradient(aggregation):
  rs = np.random.RandomState(0)
  b, t = 8, 6
  w = jnp.asarray(rs.randn(5).astype(np.float32))
  feats = jnp.asarray(rs.randn(b, t, 5).astype(np.float32))
  adv = jnp.asarray(rs.randn(b).astype(np.float32))
  mask = jnp.asarray((rs.rand(b, t) > 0.3).astype(np.float32))
  old = jnp.asarray(rs.randn(b, t).astype(np.float32) * 0.01)
  lp_fn = lambda w, f: jnp.tanh(f @ w) * 0.1
  dm_rows = jnp.asarray(rs.randn(b * 3).astype(np.float32)) * 0.01
  dm_adv = jnp.repeat(adv, 3)

  def total(w, chunks):
    s_lm, d_lm, s_dm, d_dm = 0.0, 0.0, 0.0, 0.0
    for idx in np.array_split(np.arange(b), chunks):
      lp = lp_fn(w, feats[idx])
      s, d = lm_loss(lp, old[idx], old[idx], adv[idx], mask[idx], beta=0.05, aggregation=aggregation, max_len=t)
      s_lm, d_lm = s_lm + s, d_lm + d
      rows = np.concatenate([np.arange(i * 3, i * 3 + 3) for i in idx])
      s, d, _ = dm_policy_loss(dm_rows[rows] * w.sum(), dm_rows[rows], dm_adv[rows], clip_eps=10.0)
      s_dm, d_dm = s_dm + s, d_dm + d
    return s_lm / d_lm + s_dm / d_dm  # the joint loss L_LM + L_DM

  g1 = jax.grad(lambda w: total(w, 1))(w)
  g4 = jax.grad(lambda w: total(w, 4))(w)
  np.testing.assert_allclose(np.asarray(g4), np.asarray(g1), rtol=1e-5, atol=1e-7)


def test_kl_terms_and_their_gradients_reach_the_policy_only():
  mu = jnp.ones((2, 3, 3, 1))
  s, d = dm_kl(mu, jnp.zeros_like(mu), 0.5)
  assert float(s / d) == pytest.approx(1 / (2 * 0.25))
  g_mu, g_ref = jax.grad(lambda m, r: dm_kl(m, r, 0.5)[0], argnums=(0, 1))(mu, jnp.zeros_like(mu))
  np.testing.assert_allclose(np.asarray(g_mu), 1.0 / 0.25 / 9)  # (μ − μ_ref)/s² per element, over 9 elements
  assert not np.asarray(g_ref).any()
  # k3 at log π = −1, log π_ref = −2: e^{-1} − (−1) − 1 = e^{-1}; d/d log π = 1 − e^{ref − lp} = 1 − e^{-1}.
  assert float(k3_kl(jnp.array(-1.0), jnp.array(-1.0))) == 0.0
  assert float(k3_kl(jnp.array(-1.0), jnp.array(-2.0))) == pytest.approx(np.exp(-1.0), rel=1e-6)
  g_lp, g_ref = jax.grad(lambda a, b: k3_kl(a, b), argnums=(0, 1))(jnp.array(-1.0), jnp.array(-2.0))
  assert float(g_lp) == pytest.approx(1 - np.exp(-1.0), rel=1e-6) and float(g_ref) == 0.0
  toks = jnp.array([[5, 2, 7, 2], [5, 6, 7, 8]])
  np.testing.assert_array_equal(np.asarray(completion_mask(toks, (2,))), [[1, 1, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("three_way", [False, True], ids=["two-way", "three-way"])
def test_guided_velocity_over_a_shared_caption_context(three_way):
  """CFG over the once-per-rollout caption K/V equals plain velocity calls combined by hand, forward and gradient:
  two-way v_u + s·(v_c − v_u) (null condition = cond·0, zero reference latents), and the editing three-way
  v_∅ + r·(v_ref − v_∅) + s·(v_full − v_ref) over [∅ + zero ref, ∅ + ref, c + ref]."""
  from unirl_jax.diffusion.sampler import Guidance
  from unirl_jax.models import unified
  model = unified.UnifiedModel(unified.tiny())
  params = model.init_params(jax.random.PRNGKey(0))
  cfg = model.config
  cond = jax.random.normal(jax.random.PRNGKey(1), (2, cfg.num_queries, cfg.connector.out_dim))
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4, cfg.dit.in_channels))
  ref = jax.random.normal(jax.random.PRNGKey(3), x.shape) if three_way else None
  t = jnp.array([900.0, 300.0])
  g = Guidance(3.0, 1.2) if three_way else Guidance(3.5)
  lin = params["dit"]["ref_linear"]  # zero at init (as the original's): draw it, so the reference matters
  params["dit"]["ref_linear"] = {"kernel": jax.random.normal(jax.random.PRNGKey(4), lin["kernel"].shape) * 0.3,
                                 "bias": lin["bias"]}

  def shared(dit, cond, ref):
    return model.guided_velocity(dit, model.guidance_context(dit, cond, g), g, ref_latents=ref)(x, t)

  def direct(dit, cond, ref):
    v = lambda c, r: model.velocity({"dit": dit}, x, c, t, ref_latents=jnp.zeros_like(x) if r is None else r)
    null = model.null_condition(cond)
    if not three_way:
      v_u, v_c = v(null, None), v(cond, None)
      return v_u + 3.5 * (v_c - v_u)
    v_0, v_r, v_f = v(null, None), v(null, ref), v(cond, ref)
    return v_0 + 1.2 * (v_r - v_0) + 3.0 * (v_f - v_r)
  argnums = (0, 1, 2) if three_way else (0, 1)
  # One compile per side: the velocity (as aux) and the gradient of a non-linear function of it.
  both = lambda f: jax.jit(jax.grad(lambda d, c, r: (jnp.sum(jnp.sin(f(d, c, r))), f(d, c, r)), argnums=argnums,
                                    has_aux=True))
  run_shared, run_direct = both(shared), both(direct)
  (g_shared, v_shared), (g_direct, v_direct) = (f(params["dit"], cond, ref) for f in (run_shared, run_direct))
  np.testing.assert_allclose(v_shared, v_direct, rtol=1e-5, atol=1e-5)
  if three_way:  # the reference branch is live
    assert np.abs(v_direct - run_direct(params["dit"], cond, 0 * ref)[1]).max() > 1e-3
  got, want = jax.tree.leaves(g_shared), jax.tree.leaves(g_direct)
  assert len(got) == len(want) and any(np.abs(np.asarray(w)).max() > 0 for w in want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_dm_and_lm_loss_gradients_reach_the_policy_side_only():
  """With zero advantages the loss is β·KL alone; its gradient reaches the policy params, never the reference."""
  from unirl_jax.models import unified
  from unirl_jax.rl import dm, lm
  from unirl_jax.rl.batch import Completions, Condition, Experience
  from unirl_jax.rl.losses import completion_mask
  model = unified.UnifiedModel(unified.tiny())
  ref = model.init_params(jax.random.PRNGKey(0))
  policy = jax.jit(lambda r: jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(9), p.shape,
                                                                                 p.dtype), r))(ref)
  dc = dm.DMConfig(steps=1, beta=1.0)
  sched = dc.schedule()
  ids = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, model.config.lm.text.vocab_size)
  cond = Condition(ids, jnp.ones_like(ids))
  traj, _ = jax.jit(lambda p: dm.rollout(model, p, cond, jax.random.PRNGKey(2), dc, sched, (4, 4)))(policy)
  toks = jax.random.randint(jax.random.PRNGKey(3), (2, 5), 0, model.config.lm.text.vocab_size)
  comps = Completions(ids, jnp.ones_like(ids), toks, completion_mask(toks, model.config.lm.eos_token_id))
  exp = Experience(jnp.zeros(2), sched, dm.DMRows(cond, traj), comps)
  parts = (dm.DMLoss(model, dc), lm.LMLoss(model.lm, lm.LMConfig(beta=1.0)))
  grads = jax.jit(lambda p, r: [jax.grad(lambda p, r: part.loss_sum(p, r, exp)[0], argnums=(0, 1))(p, r)
                                for part in parts])(policy, ref)
  for part, (g_pol, g_ref), moved in zip(parts, grads, ("dit", "lm")):
    assert not any(np.asarray(x).any() for x in jax.tree.leaves(g_ref)), type(part).__name__
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_pol[moved])) > 0, type(part).__name__


def test_edit_rows_ratios_are_one_with_the_rollout_guidance_and_not_with_the_original_mismatch():
  """Edit rows (ViT patches in the condition, a noisy reference, three-way CFG): with the loss guided as the
  rollout was, the recomputed policy is the sampling one (ρ ≡ 1, log-probs equal); with the original's loss_cfg
  3.5 against a 3.0 rollout, the ratios (against the rollout's log-probs) move away from 1."""
  from transformers import Qwen2VLImageProcessorPil

  from conftest import image_prompt
  from unirl_jax.models import unified
  from unirl_jax.rl import dm
  from unirl_jax.rl.batch import Condition, Experience
  model = unified.UnifiedModel(unified.tiny())
  params = model.init_params(jax.random.PRNGKey(0))
  lin = params["dit"]["ref_linear"]
  params["dit"]["ref_linear"] = {"kernel": 0.3 * jax.random.normal(jax.random.PRNGKey(5), lin["kernel"].shape),
                                 "bias": lin["bias"]}
  out = params["dit"]["transformer_blocks"]["attn2"]["to_out_0"]
  out["kernel"] = 30 * out["kernel"]  # a random tiny DiT barely reads its caption: make the text guidance matter
  rs = np.random.RandomState(0)
  proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
  vit = proc(images=[rs.randint(0, 255, (56, 56, 3), dtype=np.uint8) for _ in range(2)], return_tensors="np")
  grid = tuple(int(v) for v in vit["image_grid_thw"][0])
  n_tok = int(np.prod(grid)) // 4
  ids = np.array([image_prompt(model.config.lm, n_tok)] * 2, np.int32)
  cd = Condition(jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32),
                 pixel_values=jnp.asarray(vit["pixel_values"], jnp.float32).reshape(2, -1, vit["pixel_values"].shape[-1]))
  ref = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, model.config.dit.in_channels))
  dc = dm.DMConfig(steps=2, cfg=3.0, ref_cfg=1.0)
  sched = dc.schedule()
  traj, _ = jax.jit(lambda p: dm.rollout(model, p, cd, jax.random.PRNGKey(2), dc, sched, (4, 4), ref=ref,
                                         task="i2i", grid=grid))(params)
  exp = Experience(jnp.array([1.0, -1.0]), sched, dm.DMRows(cd, traj, ref))
  stats = {}
  for name, loss_cfg in (("same", None), ("original", 3.5)):
    part = dm.DMLoss(model, dataclasses.replace(dc, loss_cfg=loss_cfg), task="i2i", grid=grid)
    _, stats[name] = jax.jit(lambda p: part.loss_sum(p, p, exp))(params)
  same, orig = stats["same"], stats["original"]
  assert float(same["ratio_min"]) == float(same["ratio_max"]) == 1.0
  assert float(same["logp_mismatch"]) < 1e-6  # the recomputation reproduces the rollout's log-probs
  assert float(orig["logp_mismatch"]) > 1e-5  # (mean log-probs over the latent: small, as in the original)
  assert float(orig["ratio_max"]) - float(orig["ratio_min"]) > 1e-5
