"""Fits a tiny random DC-AE to the synthetic shapes, so the tiny presets decode images rather than noise.

A random DC-AE decodes every latent to near-white noise of fixed amplitude (its norms remove the latent's
scale): the maximum-JPEG-entropy corner, where the JPEG-incompressibility sanity run cannot move. A few hundred
autoencoder steps on flat coloured shapes give a decoder whose outputs start mid-range in both directions.
The GenEval scenes take another recipe (`RECIPES`): sharp decodes from unit-scale latents.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

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


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a DC-AE is fitted to one synthetic set."""

  images: Callable[[int, int, int], np.ndarray]  # (n, size, seed) -> (n, size, size, 3) in [-1, 1]
  n_images: int  # the fitted set
  latent_noise: float  # σ of the noise added to the latents before decoding
  relative_noise: bool  # σ·std(z) (the latents' scale left free) instead of σ
  latent_penalty: float  # λ·mean(z²)
  unit_latents: bool  # return the scaling factor that gives the fitted latents unit std


RECIPES = {
    # The JPEG runs': absolute noise over small latents, so decodes stay mid-entropy and the JPEG rewards move
    # both ways (tests/test_jpeg_sanity.py).
    "shapes": Recipe(shape_images, 128, 0.5, False, 1e-3, False),
    # The GenEval scenario's: sharp decodes (the detector needs clean shapes; absolute noise or a penalty on |z|
    # shrinks the signal under the noise and blurs them), latents at the N(0, 1) scale the DiT samples at.
    "geneval_scenes": Recipe(scene_images, 1024, 0.2, True, 0.0, True),
}
DATA = {k: r.images for k, r in RECIPES.items()}


def fit(vae: dc_ae_lib.DCAE, params, steps: int, image_size: int, batch: int = 16, lr: float = 3e-3,
        seed: int = 0, data: str = "shapes", log_every: int = 0):
  """Autoencoder fit of all DC-AE params with `RECIPES[data]`: MSE(decode(z + noise), x) + λ·mean(z²), z the
  scaled latents. Deterministic given `seed`. Returns (params, final reconstruction MSE, scaling factor):
  the factor to set as the config's `scaling_factor` (one giving unit-std latents for a `unit_latents`
  recipe, else the config's own).
  """
  r = RECIPES[data]
  data = jnp.asarray(r.images(max(batch, r.n_images), image_size, seed))
  tx = optax.adam(lr)

  def loss_fn(p, x, key):
    z = dc_ae_lib.encode_scaled(vae, p, x)
    sigma = r.latent_noise * (jax.lax.stop_gradient(z.std()) if r.relative_noise else 1.0)
    rec = dc_ae_lib.decode_scaled(vae, p, z + sigma * jax.random.normal(key, z.shape, z.dtype))
    mse = jnp.mean((rec - x) ** 2)
    return mse + r.latent_penalty * jnp.mean(z ** 2), mse

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
    if log_every and (i + 1) % log_every == 0:
      print(f"vae fit {i + 1:5d}/{steps}  reconstruction mse {float(mse):.4f}", flush=True)
  scale = vae.config.scaling_factor
  if r.unit_latents:
    encode = jax.jit(lambda p, x: dc_ae_lib.encode_scaled(vae, p, x))
    z = jnp.concatenate([encode(params, data[i:i + 64]) for i in range(0, data.shape[0], 64)])
    scale /= float(z.std())
  return params, float(mse), scale
