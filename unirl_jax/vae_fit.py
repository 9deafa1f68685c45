"""Fits a tiny random DC-AE to the synthetic shapes, so the tiny presets decode images rather than noise.

A random DC-AE decodes every latent to near-white noise of fixed amplitude (its norms remove the latent's
scale): the maximum-JPEG-entropy corner, where the JPEG-incompressibility sanity run cannot move. A few hundred
autoencoder steps on flat coloured shapes give a decoder whose outputs start mid-range in both directions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unirl_jax.data import synthetic
from unirl_jax.models import dc_ae as dc_ae_lib


def shape_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """(n, size, size, 3) float32 in [-1, 1]: one random coloured shape on a random background each."""
  rs = np.random.RandomState(seed)
  names = list(synthetic.COLORS)
  out = np.empty((n, size, size, 3), np.float32)
  for i in range(n):
    fg, bg = rs.choice(len(names), 2, replace=False)
    s = rs.randint(size // 4, size // 2 + 1)
    x0, y0 = rs.randint(0, size - s + 1, 2)
    img = synthetic.draw(synthetic.SHAPES[rs.randint(3)], names[fg], names[bg], size, (x0, y0, x0 + s, y0 + s))
    out[i] = np.asarray(img, np.float32) / 127.5 - 1.0
  return out


def scene_images(n: int, size: int, seed: int = 0) -> np.ndarray:
  """(n, size, size, 3) float32 in [-1, 1]: multi-object scenes for GenEval-format prompts (data.shapes)."""
  from unirl_jax.data import shapes
  rs = np.random.RandomState(seed)
  recs = shapes.prompts(n, seed)
  return np.stack([np.asarray(shapes.render(r, size, rs), np.float32) / 127.5 - 1.0 for r in recs])


DATA = {"shapes": shape_images, "geneval_scenes": scene_images}


def fit(vae: dc_ae_lib.DCAE, params, steps: int, image_size: int, batch: int = 16, lr: float = 3e-3,
        latent_noise: float = 0.5, seed: int = 0, data: str = "shapes"):
  """Autoencoder fit of all DC-AE params: MSE(decode(z + σε), x) + 1e-3·|z|², z the scaled latents.

  The latent noise and penalty keep z near the N(0, 1) scale the DiT samples from, so unseen latents decode
  to smooth blobs too. Deterministic given `seed`. Returns (params, final reconstruction MSE).
  """
  data = jnp.asarray(DATA[data](max(batch * 8, 128), image_size, seed))
  tx = optax.adam(lr)

  def loss_fn(p, x, key):
    z = dc_ae_lib.encode_scaled(vae, p, x)
    rec = dc_ae_lib.decode_scaled(vae, p, z + latent_noise * jax.random.normal(key, z.shape, z.dtype))
    mse = jnp.mean((rec - x) ** 2)
    return mse + 1e-3 * jnp.mean(z ** 2), mse

  @jax.jit
  def step(p, opt, i):
    key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    idx = jax.random.choice(key, data.shape[0], (batch,), replace=False)
    (_, mse), g = jax.value_and_grad(loss_fn, has_aux=True)(p, data[idx], key)
    upd, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, upd), opt, mse

  opt = tx.init(params)
  mse = jnp.nan
  for i in range(steps):
    params, opt, mse = step(params, opt, i)
  return params, float(mse)
