"""The connector vs a PyTorch module written here from the documented architecture (unirl.md §2.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unirl_jax.models import connector


class TorchRMSNorm(nn.Module):
  def __init__(self, dim, eps=1e-6):
    super().__init__()
    self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

  def forward(self, x):
    x32 = x.float()
    return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class TorchBlock(nn.Module):
  def __init__(self, d, heads, hidden):
    super().__init__()
    self.heads = heads
    self.norm1, self.norm2 = TorchRMSNorm(d), TorchRMSNorm(d)
    self.attn = nn.Module()
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
      setattr(self.attn, n, nn.Linear(d, d))
    self.attn.q_norm, self.attn.k_norm = TorchRMSNorm(d // heads), TorchRMSNorm(d // heads)
    self.ffn = nn.Module()
    self.ffn.w1, self.ffn.w2, self.ffn.w3 = nn.Linear(d, hidden), nn.Linear(d, hidden), nn.Linear(hidden, d)

  def forward(self, x):
    b, n, d = x.shape
    h = self.norm1(x)
    q, k, v = (getattr(self.attn, p)(h).view(b, n, self.heads, -1) for p in ("q_proj", "k_proj", "v_proj"))
    q, k = self.attn.q_norm(q), self.attn.k_norm(k)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    x = x + self.attn.out_proj(o.transpose(1, 2).reshape(b, n, d))
    h = self.norm2(x)
    return x + self.ffn.w3(F.silu(self.ffn.w1(h)) * self.ffn.w2(h))


class TorchConnector(nn.Module):
  def __init__(self, cfg):
    super().__init__()
    self.layers = nn.ModuleList([TorchBlock(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size)
                                 for _ in range(cfg.num_layers)])
    self.norm_final = TorchRMSNorm(cfg.hidden_size)
    self.output_linear = nn.Linear(cfg.hidden_size, cfg.out_dim)

  def forward(self, x):
    for blk in self.layers:
      x = blk(x)
    return self.output_linear(self.norm_final(x))


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
