"""The connector vs a PyTorch module written from the documented architecture (unirl.md §2.4;
unirl_jax.bench.torch_unified.TorchConnector, also the torch GRPO step's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from unirl_jax.bench.torch_unified import TorchConnector
from unirl_jax.models import connector


def torch_connector(cfg, seed=0):
  torch.manual_seed(seed)
  m = TorchConnector(cfg).eval()
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.2 * torch.randn_like(p))
  return m


def test_connector_matches_torch_reference():
  from unirl_jax.convert.connector import connector_params
  cfg = connector.tiny()
  m = torch_connector(cfg)
  params = connector_params({k: v.numpy() for k, v in m.state_dict().items()}, cfg)
  x = np.random.RandomState(0).randn(2, 7, cfg.hidden_size).astype(np.float32)
  with torch.no_grad():
    ref = m(torch.tensor(x)).numpy()
  out = connector.Connector(cfg).apply({"params": params}, jnp.asarray(x))
  assert out.shape == (2, 7, cfg.out_dim)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=0)


def test_bidirectional_and_permutation_equivariant():
  """No mask and no positions: permuting the queries permutes the outputs."""
  cfg = connector.tiny()
  params = connector.init_params(cfg)
  x = jnp.asarray(np.random.RandomState(1).randn(1, 6, cfg.hidden_size).astype(np.float32))
  f = lambda x: connector.Connector(cfg).apply({"params": params}, x)
  perm = np.array([5, 2, 0, 1, 4, 3])
  np.testing.assert_allclose(np.asarray(f(x[:, perm])), np.asarray(f(x))[:, perm], atol=1e-5)
  y = x.at[:, -1].add(1.0)  # changing the last query changes the first output: not causal
  assert np.abs(np.asarray(f(y))[:, 0] - np.asarray(f(x))[:, 0]).max() > 1e-4


def test_real_size_param_count():
  """unirl.md §2.4: ~508 M parameters."""
  n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(connector.abstract_params(connector.unirl_connector())))
  cfg = connector.unirl_connector()
  with torch.device("meta"):
    ref = sum(p.numel() for p in TorchConnector(cfg).parameters())
  assert n == ref and 500e6 < n < 515e6


def test_invalid_config():
  with pytest.raises(ValueError, match="num_heads"):
    connector.tiny(num_heads=5)
