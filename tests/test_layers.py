"""Shared layers: the Dense matmul forms and the `kernels` knob that picks them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unirl_jax.models import layers


def test_dense_bf16_rounds_a_float32_matmul_once():
  """A bf16 Dense keeps its bf16 result but computes it as the float32 product of the bf16 operands, rounded
  once (what accelerators do; on CPU it is also the only form XLA runs on its fast path)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 64), jnp.float32).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.PRNGKey(1), (64, 48), jnp.float32).astype(jnp.bfloat16)
  dn = (((2,), (0,)), ((), ()))
  out = layers.flat_dot_general(x, w, dn, f32_result=True)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 3, 48)
  exact = np.einsum("bti,io->bto", np.asarray(x, np.float64), np.asarray(w, np.float64))
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16), np.float32))
  dense = layers.dense(48, ("embed", "mlp"), dtype=jnp.bfloat16, param_dtype=jnp.float32, kernels="cpu")
  p = dense.init(jax.random.PRNGKey(2), x)
  assert dense.apply(p, x).dtype == jnp.bfloat16


def test_dense_fp32_merges_leading_dims_exactly():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (16, 8))
  out = layers.flat_dot_general(x, w, (((3,), (0,)), ((), ())))
  np.testing.assert_allclose(out, jnp.einsum("abci,io->abco", x, w), rtol=1e-6, atol=1e-6)
  g = jax.grad(lambda w: jnp.sum(layers.flat_dot_general(x, w, (((3,), (0,)), ((), ()))) ** 2))(w)
  want = jax.grad(lambda w: jnp.sum(jnp.einsum("abci,io->abco", x, w) ** 2))(w)
  # a sum of 30 products per element in another order: 1e-5 of the gradient's scale
  np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def _dots(jaxpr) -> list:
  return [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]


def test_kernels_knob_picks_the_matmul_form_not_the_host():
  """The Dense form follows the config's `kernels`, whatever backend traces it: "cpu" asks for a float32
  result of a bf16 matmul and rounds it after; "accelerator" emits the plain bf16 dot."""
  x = jnp.ones((2, 3, 16), jnp.bfloat16)
  forms = {}
  for k in ("cpu", "accelerator"):
    dense = layers.dense(8, ("embed", "mlp"), dtype=jnp.bfloat16, kernels=k)
    p = dense.init(jax.random.PRNGKey(0), x)
    (dot,) = _dots(jax.make_jaxpr(lambda p, x: dense.apply(p, x))(p, x).jaxpr)
    forms[k] = dot.params["preferred_element_type"]
    assert dense.apply(p, x).dtype == jnp.bfloat16
  assert forms == {"cpu": jnp.float32, "accelerator": None}  # None: the operands' dtype
  assert layers.kernels_for("auto") == ("cpu" if jax.default_backend() == "cpu" else "accelerator")
  with pytest.raises(ValueError, match="model.kernels"):
    layers.dense(8, ("embed", "mlp"), kernels="gpu").init(jax.random.PRNGKey(0), x)


def test_depthwise_conv_kernels_agree_and_differ_in_form():
  """The two depthwise forms give the same output (1e-5) and the knob alone decides which one is traced."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 8))
  convs = {k: layers.DepthwiseConv(8, 3, kernels=k) for k in ("cpu", "accelerator")}
  p = convs["cpu"].init(jax.random.PRNGKey(1), x)
  p = jax.tree.map(lambda a: a + 0.1, p)  # a non-zero bias
  outs, prims = {}, {}
  for k, m in convs.items():
    outs[k] = m.apply(p, x)
    prims[k] = {e.primitive.name for e in jax.make_jaxpr(lambda p, x: m.apply(p, x))(p, x).jaxpr.eqns}
  np.testing.assert_allclose(outs["cpu"], outs["accelerator"], rtol=1e-5, atol=1e-5)
  assert "conv_general_dilated" in prims["accelerator"] and "conv_general_dilated" not in prims["cpu"]
