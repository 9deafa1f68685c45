"""The PyTorch reference of UniRL's text-to-image GRPO step (`T2IGRPOTrainer`, unirl.md §2, §3.1-3.4), written
from the reference's description: transformers' Qwen2.5-VL, the meta-queries, the connector (a torch module written
here from §2.4), diffusers' SANA with UniRL's reference branch and diffusers' DC-AE; the SDE rollout with CFG and
log-probs, group advantages, the recomputed policy + KL loss and AdamW, as the original's trainer runs them.

`TorchUnified.unirl_tensors()` names every tensor as a UniRL checkpoint does, so `to_jax` converts weights (and
gradients, through the same linear key table) into our params.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unirl_jax.convert import unirl as unirl_convert
from unirl_jax.convert.qwen2_5_vl import canonical_key
from unirl_jax.convert.table import flatten, to_params

# (sigmas (n + 1,), timesteps (n,)) below are the JAX schedule's own float32 values, as Python floats.

TRAINED = ("t2i_queries", "connector", "dit")  # UniRL's t2i trainable groups (the LM and the VAE stay frozen)


class TorchRMSNorm(nn.Module):
  def __init__(self, dim, eps=1e-6):
    super().__init__()
    self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

  def forward(self, x):
    x32 = x.float()
    return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class TorchConnectorBlock(nn.Module):
  """Pre-norm block: bidirectional attention with biases and per-head QK-RMSNorm, then SwiGLU (unirl.md §2.4)."""

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
  """UniRL's `down_projector` (VisionTransformerProjector)."""

  def __init__(self, cfg):
    super().__init__()
    self.layers = nn.ModuleList([TorchConnectorBlock(cfg.hidden_size, cfg.num_heads, cfg.intermediate_size)
                                 for _ in range(cfg.num_layers)])
    self.norm_final = TorchRMSNorm(cfg.hidden_size)
    self.output_linear = nn.Linear(cfg.hidden_size, cfg.out_dim)

  def forward(self, x):
    for blk in self.layers:
      x = blk(x)
    return self.output_linear(self.norm_final(x))


def randomise(module: nn.Module, seed: int, scale: float = 0.1) -> None:
  """Adds scale * N(0, 1) to every parameter (inits such as zeros and ones make parity checks blind)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))


class TorchUnified(nn.Module):
  """blip3oQwenModel's parts at a unified config (fp32): `lm` (frozen), `t2i_queries`, `connector`, `dit` + the
  reference branch `ref_patch_embed` / `ref_linear` (added to the patch tokens: zeros in text-to-image), `vae`.
  Built on the CPU; `.to(device)` moves it (the step's functions follow their inputs' device)."""

  def __init__(self, cfg, seed: int = 0):
    super().__init__()
    import transformers
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    torch.manual_seed(seed)
    self.cfg = cfg
    self.lm = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**cfg.lm.to_hf_dict()))
    d = cfg.lm.text.hidden_size
    self.t2i_queries = nn.Parameter(torch.randn(1, cfg.num_queries, d))
    self.i2i_queries = nn.Parameter(torch.randn(1, cfg.num_queries, d))
    self.connector = TorchConnector(cfg.connector)
    dit = {k: v for k, v in cfg.dit.replace(ref_branch=False).to_diffusers_dict().items() if not k.startswith("_")}
    self.dit = SanaTransformer2DModel(**dit)
    inner = cfg.dit.inner_dim
    self.ref_patch_embed = nn.Module()
    self.ref_patch_embed.proj = nn.Conv2d(cfg.dit.in_channels, inner, cfg.dit.patch_size, cfg.dit.patch_size)
    self.ref_linear = nn.Linear(inner, inner)
    self.vae = AutoencoderDC(**{k: v for k, v in cfg.vae.to_diffusers_dict().items() if not k.startswith("_")})
    randomise(self, seed)
    self.dit.patch_embed.register_forward_hook(self._add_reference)
    self.lm.eval(), self.vae.eval()
    self.lm.requires_grad_(False), self.vae.requires_grad_(False), self.i2i_queries.requires_grad_(False)

  def _add_reference(self, module, inputs, tokens):
    """UniRL's edit conditioning on the patch tokens: + ref_linear(ref_patch_embed(ref)), ref = 0 for t2i."""
    r = self.ref_patch_embed.proj(torch.zeros_like(inputs[0])).flatten(2).transpose(1, 2)
    return tokens + self.ref_linear(r)

  def trained_parameters(self):
    return [p for n, p in self.named_parameters() if n.split(".")[0] in TRAINED or n.startswith("ref_")]

  def unirl_tensors(self, grads: bool = False) -> dict:
    """{UniRL checkpoint key: array} of every weight (or of every gradient, zeros where none)."""
    prefixes = {"lm.": "", "connector.": unirl_convert.CONNECTOR, "dit.": unirl_convert.DIT,
                "ref_": unirl_convert.DIT + "ref_", "vae.": unirl_convert.VAE, "t2i_queries": "model.t2i_queries",
                "i2i_queries": "model.i2i_queries"}
    out = {}
    for name, p in self.named_parameters():
      for pre, unirl in prefixes.items():
        if name.startswith(pre):
          key = unirl + name[len(pre):] if pre.endswith(".") or pre == "ref_" else unirl
          break
      t = (p.grad if p.grad is not None else torch.zeros_like(p)) if grads else p
      out[key] = t.detach().float().cpu().numpy()
    return out

  def to_jax(self, grads: bool = False) -> dict:
    """The unified params (or gradients) in our layout, through the UniRL conversion table."""
    from unirl_jax.models import unified
    tensors = self.unirl_tensors(grads)
    expected = {k: v.shape for k, v in flatten(unified.UnifiedModel(self.cfg).abstract_params()).items()}
    return to_params(list(tensors), tensors.__getitem__, unirl_convert.rules(self.cfg), expected, np.float32,
                     skip=unirl_convert.skip(self.cfg), rename=canonical_key)

  # ---- the step's pieces -------------------------------------------------------------------------------

  def condition(self, ids, mask):
    """LM embeddings + queries appended, the decoder without position ids, last-layer states of the queries ->
    the connector (the original's RL path)."""
    emb = self.lm.model.get_input_embeddings()(ids)
    q = self.t2i_queries.expand(ids.shape[0], -1, -1)
    m = torch.cat([mask, torch.ones(ids.shape[0], q.shape[1], dtype=mask.dtype, device=mask.device)], 1)
    h = self.lm.model.language_model(inputs_embeds=torch.cat([emb, q], 1), attention_mask=m).last_hidden_state
    return self.connector(h[:, -q.shape[1]:])

  def guided_velocity(self, x, t, cond, scale: float):
    """[null ; c] through the DiT in one batch, v = v_u + g·(v_c − v_u); x NCHW, t (B,) = 1000·σ."""
    b = x.shape[0]
    caps = torch.cat([torch.zeros_like(cond), cond])
    v = self.dit(torch.cat([x, x]), caps, t.repeat(2),
                 encoder_attention_mask=torch.ones(2 * b, cond.shape[1], dtype=torch.long, device=x.device)).sample
    return v[:b] + scale * (v[b:] - v[:b])


def sde_std(sigma: float, sigma_next: float, sigma_1: float, a: float) -> tuple[float, float]:
  denom = 1 - (sigma_1 if sigma == 1 else sigma)
  s_sde = a * np.sqrt(sigma / denom)
  return s_sde, s_sde * np.sqrt(sigma - sigma_next)


def sde_step(x, v, sigma: float, sigma_next: float, sigma_1: float, a: float, prev=None, noise=None):
  """Flow-GRPO's SDE step (unirl.md §3.2) in fp32 -> (x', μ, s, log p as the per-element mean)."""
  s_sde, std = sde_std(sigma, sigma_next, sigma_1, a)
  dt = sigma_next - sigma
  x, v = x.float(), v.float()
  mean = x * (1 + s_sde ** 2 / (2 * sigma) * dt) + v * (1 + s_sde ** 2 * (1 - sigma) / (2 * sigma)) * dt
  if prev is None:
    prev = mean + std * noise
  prev = prev.detach().float()
  lp = -((prev - mean) ** 2) / (2 * std ** 2) - np.log(std) - 0.5 * np.log(2 * np.pi)
  return prev, mean, std, lp.mean(dim=(1, 2, 3))


@torch.no_grad()
def rollout(m: TorchUnified, ids, mask, x0, noises, sigmas, timesteps, dc):
  """G SDE trajectories from the stored initial latents and per-step noises (NCHW) -> (latents (n+1, B, ...),
  log-probs (n, B), images in [-1, 1])."""
  cond = m.condition(ids, mask)
  x, xs, lps = x0, [x0], []
  for i in range(len(timesteps)):
    t = torch.full((x.shape[0],), float(timesteps[i]), device=x.device)
    v = m.guided_velocity(x, t, cond, dc.cfg)
    x, _, _, lp = sde_step(x, v, sigmas[i], sigmas[i + 1], sigmas[1], dc.noise_level, noise=noises[i])
    xs.append(x)
    lps.append(lp)
  return torch.stack(xs), torch.stack(lps), m.vae.decode(x / m.vae.config.scaling_factor).sample  # as UniRL


def advantages(rewards: np.ndarray, group: int, eps: float = 1e-4, clip: float = 5.0) -> np.ndarray:
  r = torch.tensor(rewards, dtype=torch.float32).view(-1, group)
  a = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)  # torch's unbiased std, as the original
  return torch.nan_to_num(a).clamp(-clip, clip).view(-1).numpy()


def reference_copy(m: TorchUnified) -> TorchUnified:
  """The frozen reference policy: a copy of the trained parts (the LM and VAE are shared, frozen anyway)."""
  lm, vae = m.lm, m.vae
  m.lm, m.vae = None, None
  ref = copy.deepcopy(m)
  m.lm, m.vae = lm, vae
  ref.lm, ref.vae = lm, vae
  ref.dit.patch_embed._forward_hooks.clear()
  ref.dit.patch_embed.register_forward_hook(ref._add_reference)
  ref.requires_grad_(False)
  return ref


def loss(m: TorchUnified, ref: TorchUnified, ids, mask, latents, old_log_probs, adv, sigmas, timesteps, dc):
  """The recomputed Flow-GRPO loss (unirl.md §3.4): mean over the G·T (sample, step) entries of the PPO-clipped
  policy term, plus β·mean of the Gaussian KL of the means to the reference; ρ against the rollout's log-probs."""
  cond = m.condition(ids, mask)
  with torch.no_grad():
    cond_ref = ref.condition(ids, mask)
  adv = torch.as_tensor(adv, device=latents.device)
  pg, kl = 0.0, 0.0
  n = len(timesteps)
  for i in range(n):
    x, prev = latents[i], latents[i + 1]
    t = torch.full((x.shape[0],), float(timesteps[i]), device=x.device)
    v = m.guided_velocity(x, t, cond, dc.cfg)
    _, mean, std, lp = sde_step(x, v, sigmas[i], sigmas[i + 1], sigmas[1], dc.noise_level, prev=prev)
    with torch.no_grad():
      v_ref = ref.guided_velocity(x, t, cond_ref, dc.cfg)
      _, mean_ref, _, _ = sde_step(x, v_ref, sigmas[i], sigmas[i + 1], sigmas[1], dc.noise_level, prev=prev)
    ratio = torch.exp(lp - old_log_probs[i])
    clipped = torch.clamp(ratio, 1 - dc.clip_eps, 1 + dc.clip_eps)
    pg = pg + torch.maximum(-adv * ratio, -adv * clipped).sum()
    kl = kl + (((mean - mean_ref) ** 2).mean(dim=(1, 2, 3)) / (2 * std ** 2)).sum()
  rows = latents.shape[1] * n
  return pg / rows + dc.beta * kl / rows
