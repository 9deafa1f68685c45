"""Optimizer groups with their own learning rates, schedules, clipping."""

import jax.numpy as jnp
import numpy as np
import pytest

from unirl_jax import optim
from unirl_jax.run_config import OptimSettings


def cfg(**kw):
  return OptimSettings(**{**dict(lr=1e-2, schedule="constant"), **kw})


def test_group_learning_rates():
  params = {"dit": jnp.ones(3), "lm": jnp.ones(3)}
  grads = {"dit": jnp.ones(3), "lm": jnp.ones(3)}
  tx = optim.adamw(cfg(group_lr={"lm": 1e-4}), 10, groups=tuple(params))
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves each param by its lr (the normalised gradient is 1).
  np.testing.assert_allclose(np.asarray(updates["dit"]), -1e-2, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(updates["lm"]), -1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="not trained"):
    optim.adamw(cfg(group_lr={"vae": 1e-3}), 10, groups=("dit",))


def test_schedules_and_clipping():
  s = optim.schedule(1.0, 10, warmup_steps=2, min_lr=0.1)
  assert float(s(0)) == 0.0 and float(s(2)) == pytest.approx(1.0) and float(s(10)) == pytest.approx(0.1)
  assert float(optim.schedule(1.0, 4, kind="linear")(2)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="schedule"):
    optim.schedule(1.0, 4, kind="exp")
  # b1 = b2 = 0 and eps = 1 make Adam's first update -lr·g/(|g| + 1): the clipped g = (3, 4)/5 shows in it.
  p = {"w": jnp.zeros(2)}
  g = {"w": jnp.array([3.0, 4.0])}
  for clip, eff in ((1.0, np.array([0.6, 0.8])), (0.0, np.array([3.0, 4.0]))):
    tx = optim.adamw(cfg(grad_clip=clip, b1=0.0, b2=0.0, eps=1.0), 10)
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(np.asarray(u["w"]), -1e-2 * eff / (eff + 1.0), rtol=1e-5)
