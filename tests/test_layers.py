"""Shared layers: the Dense matmul form used on CPU."""

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.models import layers


def test_dense_bf16_rounds_a_float32_matmul_once():
  """A bf16 Dense keeps its bf16 result but computes it as the float32 product of the bf16 operands, rounded
  once (what accelerators do; on CPU it is also the only form XLA runs on its fast path)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 64), jnp.float32).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.PRNGKey(1), (64, 48), jnp.float32).astype(jnp.bfloat16)
  dn = (((2,), (0,)), ((), ()))
  out = layers.flat_dot_general(x, w, dn)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 3, 48)
  exact = np.einsum("bti,io->bto", np.asarray(x, np.float64), np.asarray(w, np.float64))
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16), np.float32))
  dense = layers.dense(48, ("embed", "mlp"), dtype=jnp.bfloat16, param_dtype=jnp.float32)
  p = dense.init(jax.random.PRNGKey(2), x)
  assert dense.apply(p, x).dtype == jnp.bfloat16


def test_dense_fp32_merges_leading_dims_exactly():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
  out = layers.flat_dot_general(x, w, (((3,), (0,)), ((), ())))
  np.testing.assert_allclose(out, jnp.einsum("abci,io->abco", x, w), rtol=1e-6, atol=1e-6)
  g = jax.grad(lambda w: jnp.sum(layers.flat_dot_general(x, w, (((3,), (0,)), ((), ()))) ** 2))(w)
  np.testing.assert_allclose(g, jax.grad(lambda w: jnp.sum(jnp.einsum("abci,io->abco", x, w) ** 2))(w), rtol=1e-5)
