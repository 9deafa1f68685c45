"""Optimizer groups with their own learning rates, schedules, clipping."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from unirl_jax import optim


def cfg(**kw):
  c = ml_collections.ConfigDict(dict(lr=1e-2, min_lr=0.0, warmup_steps=0, total_steps=10, schedule="constant",
                                     b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0))
  c.update(kw)
  return c


def test_group_learning_rates():
  params = {"dit": jnp.ones(3), "lm": jnp.ones(3)}
  grads = {"dit": jnp.ones(3), "lm": jnp.ones(3)}
  tx = optim.adamw(cfg(group_lr={"lm": 1e-4}), groups=tuple(params))
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step moves each param by its lr (the normalised gradient is 1).
  np.testing.assert_allclose(np.asarray(updates["dit"]), -1e-2, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(updates["lm"]), -1e-4, rtol=1e-4)
  with pytest.raises(ValueError, match="not trained"):
    optim.adamw(cfg(group_lr={"vae": 1e-3}), groups=("dit",))


def test_schedules_and_clipping():
  s = optim.schedule(1.0, 10, warmup_steps=2, min_lr=0.1)
  assert float(s(0)) == 0.0 and float(s(2)) == pytest.approx(1.0) and float(s(10)) == pytest.approx(0.1)
  assert float(optim.schedule(1.0, 4, kind="linear")(2)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match="schedule"):
    optim.schedule(1.0, 4, kind="exp")
  tx = optim.adamw(cfg(grad_clip=1.0, schedule="constant"))
  p = {"w": jnp.zeros(2)}
  u, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(p), p)
  assert np.isfinite(np.asarray(u["w"])).all()
  assert jax.tree.structure(u) == jax.tree.structure(p)
