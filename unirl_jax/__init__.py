"""unirl-jax: UniRL-Zero (arXiv 2510.17937) in JAX/Flax."""
