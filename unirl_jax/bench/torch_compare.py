"""JAX vs PyTorch (eager transformers / diffusers) on the same component and weights: check outputs, then time.

Each compare_* builds a random torch reference, saves it, converts it with `unirl_jax.convert.pipeline`, loads our port,
asserts both compute the same thing and times both (medians; JAX compile reported apart) in fp32.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from unirl_jax.bench.timing import compile_fn, time_fn

FWD_TOL = 1e-4  # max |jax - torch| allowed on fp32 forward outputs, relative to max(1, max |torch|)
LR = 1e-4
QWEN_INIT_STD = 0.25  # as tests/conftest.py: text weights large enough that greedy decoding varies


# ---- shared -------------------------------------------------------------------------------------------

def _torch():
  import torch
  return torch


def _nchw(x: np.ndarray):
  return _torch().from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))


def _nhwc(t) -> np.ndarray:
  return t.detach().float().numpy().transpose(0, 2, 3, 1)


def _randomise(module, seed: int) -> None:
  """Adds 0.1 * N(0, 1) to every parameter (diffusers inits some to exact constants)."""
  torch = _torch()
  torch.manual_seed(seed)
  with torch.no_grad():
    for p in module.parameters():
      p.add_(0.1 * torch.randn_like(p))


def _n_params(module) -> int:
  return sum(p.numel() for p in module.parameters())


def _knobs(cfg) -> dict:
  """The JAX-side execution knobs of `cfg` (remat, scan unroll, attention kernel) for the converted model."""
  return {k: getattr(cfg, k) for k in ("remat", "scan_unroll", "attention_impl", "kernels") if hasattr(cfg, k)}


def _convert(kind: str, module, tmp: str) -> str:
  """save_pretrained + import into our format -> the converted dir."""
  from unirl_jax.convert.pipeline import import_kind
  module.save_pretrained(f"{tmp}/torch")
  return import_kind(kind, f"{tmp}/torch", f"{tmp}/jax")


@contextlib.contextmanager
def _quiet_donation():
  """Silences JAX's note that some donated buffers (e.g. scalars) could not be reused."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
    yield


def _check_close(ours, ref, what: str) -> float:
  """-> max |ours - ref|; raises AssertionError past FWD_TOL x max(1, max |ref|) (fp32 sums over wider layers
  drift in proportion to the output's scale)."""
  ref = np.asarray(ref, np.float32)
  diff = float(np.abs(np.asarray(ours, np.float32) - ref).max())
  bound = FWD_TOL * max(1.0, float(np.abs(ref).max()))
  if not diff < bound:
    raise AssertionError(f"{what}: JAX and torch outputs differ by {diff:.3g} (tolerance {bound:.3g})")
  return diff


def _result(component: str, jax_t: dict, torch_t: dict, compile_s: float, check: dict, config: dict) -> dict:
  return {"component": component, "jax": jax_t, "torch": torch_t, "ratio": jax_t["median_s"] / torch_t["median_s"],
          "jax_compile_s": compile_s, **check, "config": {**config, "torch_threads": _torch().get_num_threads()}}


# ---- SANA training step -------------------------------------------------------------------------------

def _sana_inputs(cfg, batch: int, hw: tuple[int, int], caption_len: int, seed: int) -> dict:
  rs = np.random.RandomState(seed)
  h, w = hw
  return {"x": rs.randn(batch, h, w, cfg.in_channels).astype(np.float32),
          "ctx": rs.randn(batch, caption_len, cfg.caption_channels).astype(np.float32),
          "t": rs.uniform(0, 1000, batch).astype(np.float32),
          "mask": np.ones((batch, caption_len), np.int32),
          "target": rs.randn(batch, h, w, cfg.out_channels).astype(np.float32)}


def _sana_torch(cfg, seed: int):
  from diffusers import SanaTransformer2DModel
  _torch().manual_seed(seed)
  d = cfg.to_diffusers_dict()
  d.pop("_class_name")
  m = SanaTransformer2DModel(**d)
  _randomise(m, seed)
  return m


def _sana_torch_forward(m, inp: dict):
  torch = _torch()
  return m(_nchw(inp["x"]), torch.from_numpy(inp["ctx"]), torch.from_numpy(inp["t"]),
           encoder_attention_mask=torch.from_numpy(inp["mask"])).sample


def _sana_torch_step(m, inp: dict):
  """-> a no-arg training step (MSE on the velocity, backward, AdamW)."""
  torch = _torch()
  opt = torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.0)
  target = _nchw(inp["target"])
  m.train()

  def step():
    opt.zero_grad()
    loss = ((_sana_torch_forward(m, inp) - target) ** 2).mean()
    loss.backward()
    opt.step()
  return step


def _sana_jax_step(model, opt):
  """-> the jitted (params, opt_state, x, ctx, t, mask, target) -> (params, opt_state, loss)."""
  import optax

  def loss_fn(params, x, ctx, t, mask, target):
    v = model.apply({"params": params}, x, ctx, t, encoder_attention_mask=mask)
    return jnp.mean((v - target) ** 2)

  def step(params, opt_state, x, ctx, t, mask, target):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, ctx, t, mask, target)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss
  return jax.jit(step, donate_argnums=(0, 1))


def _loop(compiled, state: list, args: tuple):
  """-> a no-arg fn running compiled(*state, *args) and carrying the (donated) state forward."""
  def run():
    with _quiet_donation():
      params, opt_state, loss = compiled(*state, *args)
    state[:] = [params, opt_state]
    return loss
  return run


def compare_sana(cfg, batch: int, hw: tuple[int, int], caption_len: int, repeats: int, seed=0) -> dict:
  """A SANA DiT training step (forward + backward of an MSE + AdamW) in JAX and torch."""
  import optax
  from unirl_jax.models import sana
  torch = _torch()
  m = _sana_torch(cfg, seed)
  with tempfile.TemporaryDirectory() as tmp:
    model, params = sana.load(_convert("sana", m, tmp), **_knobs(cfg))
  inp = _sana_inputs(cfg, batch, hw, caption_len, seed)
  args = tuple(jnp.asarray(inp[k]) for k in ("x", "ctx", "t", "mask", "target"))
  m.eval()
  with torch.no_grad():
    ref = _nhwc(_sana_torch_forward(m, inp))
  ours = jax.jit(lambda p, *a: model.apply({"params": p}, *a[:3], encoder_attention_mask=a[3]))(params, *args[:4])
  diff = _check_close(ours, ref, "sana velocity")
  opt = optax.adamw(LR, weight_decay=0.0)
  state = [params, opt.init(params)]
  with _quiet_donation():
    compiled, compile_s = compile_fn(_sana_jax_step(model, opt), *state, *args)
  jax_t = time_fn(_loop(compiled, state, args), repeats)
  torch_t = time_fn(_sana_torch_step(m, inp), repeats)
  config = {"batch": batch, "hw": tuple(hw), "caption_len": caption_len, "num_layers": cfg.num_layers,
            "inner_dim": cfg.inner_dim, "params": _n_params(m)}
  return _result("sana_train_step", jax_t, torch_t, compile_s, {"max_abs_diff": diff}, config)


# ---- DC-AE decode -------------------------------------------------------------------------------------

def _dc_ae_torch(cfg, seed: int):
  from diffusers import AutoencoderDC
  _torch().manual_seed(seed)
  d = {k: v for k, v in cfg.to_diffusers_dict().items() if not k.startswith("_")}
  m = AutoencoderDC(**d).eval()
  _randomise(m, seed)
  return m


def compare_dc_ae(cfg, batch: int, latent_hw: tuple[int, int], repeats: int, seed=0) -> dict:
  """DC-AE decode of random latents in JAX (jit) and torch (no_grad)."""
  from unirl_jax.models import dc_ae
  torch = _torch()
  m = _dc_ae_torch(cfg, seed)
  with tempfile.TemporaryDirectory() as tmp:
    model, params = dc_ae.load(_convert("dc_ae", m, tmp), **_knobs(cfg))
  h, w = latent_hw
  z = np.random.RandomState(seed).randn(batch, h, w, cfg.latent_channels).astype(np.float32)
  z_t, z_j = _nchw(z), jnp.asarray(z)

  def torch_decode():
    with torch.no_grad():
      return m.decode(z_t).sample

  decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
  compiled, compile_s = compile_fn(decode, params, z_j)
  diff = _check_close(compiled(params, z_j), _nhwc(torch_decode()), "dc_ae decode")
  jax_t = time_fn(lambda: compiled(params, z_j), repeats)
  torch_t = time_fn(lambda: (torch_decode(), None)[1], repeats)
  f = cfg.spatial_compression_ratio
  config = {"batch": batch, "latent_hw": tuple(latent_hw), "image_hw": (h * f, w * f),
            "latent_channels": cfg.latent_channels, "params": _n_params(m)}
  return _result("dc_ae_decode", jax_t, torch_t, compile_s, {"max_abs_diff": diff}, config)


# ---- Qwen2.5-VL greedy decoding ----------------------------------------------------------------------

def _qwen_torch(cfg, seed: int):
  import transformers
  d = cfg.to_hf_dict()
  d["text_config"]["initializer_range"] = QWEN_INIT_STD
  _torch().manual_seed(seed)
  m = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**d)).eval()
  m.generation_config.eos_token_id = None  # a fixed length: nothing stops (ours: eos_token_ids=())
  return m


def _qwen_prompt(cfg, batch: int, prompt_len: int, seed: int) -> np.ndarray:
  """Random text ids, avoiding the special (vision, bos, eos, pad) tokens."""
  special = {cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id,
             cfg.bos_token_id, cfg.pad_token_id, *cfg.eos_token_id}
  ids = np.setdiff1d(np.arange(cfg.text.vocab_size), np.fromiter(special, np.int64))
  return np.random.RandomState(seed).choice(ids, (batch, prompt_len)).astype(np.int32)


def _qwen_jax_generate(model, params, ids: np.ndarray, new_tokens: int):
  """-> (no-arg greedy generate through the Sampler's own jitted prefill + decode, AOT-compiled; compile s)."""
  from unirl_jax.models.qwen2_5_vl.sampling import Sampler, SamplingConfig
  s = Sampler(model, SamplingConfig(max_new_tokens=new_tokens, greedy=True, eos_token_ids=(),
                                    pad_token_id=model.config.pad_token_id))
  ids_j = jnp.asarray(ids)
  mask = jnp.ones(ids.shape, jnp.int32)
  rng = jax.random.PRNGKey(0)
  prefill, c1 = compile_fn(s._prefill, params, ids_j, mask, None, grid=None, max_len=ids.shape[1] + new_tokens)
  last, cache, pos = prefill(params, ids_j, mask, None)
  with _quiet_donation():
    decode, c2 = compile_fn(s._decode, params, cache, last, pos, rng)

  def run():
    last, cache, pos = prefill(params, ids_j, mask, None)
    with _quiet_donation():
      return decode(params, cache, last, pos, rng)["tokens"]
  return run, c1 + c2


def _qwen_torch_generate(m, ids: np.ndarray, new_tokens: int, pad_id: int):
  torch = _torch()
  ids_t = torch.from_numpy(ids.astype(np.int64))
  mask_t = torch.ones_like(ids_t)

  def run():
    m.model.rope_deltas = None  # transformers 5 keeps the last call's rope offsets
    with torch.no_grad():
      out = m.generate(input_ids=ids_t, attention_mask=mask_t, do_sample=False, max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, pad_token_id=pad_id)
    return out[:, ids.shape[1]:]
  return run


def compare_qwen_decode(cfg, batch: int, prompt_len: int, new_tokens: int, repeats: int, seed=0) -> dict:
  """Greedy Qwen2.5-VL text generation (prefill + new_tokens decode steps) in JAX and torch."""
  from unirl_jax.models import qwen2_5_vl
  m = _qwen_torch(cfg, seed)
  with tempfile.TemporaryDirectory() as tmp:
    model, params = qwen2_5_vl.load(_convert("qwen2_5_vl", m, tmp), **_knobs(cfg))
  ids = _qwen_prompt(cfg, batch, prompt_len, seed)
  jax_run, compile_s = _qwen_jax_generate(model, params, ids, new_tokens)
  torch_run = _qwen_torch_generate(m, ids, new_tokens, cfg.pad_token_id)
  ours, ref = np.asarray(jax_run()), torch_run().numpy()
  if ours.shape != ref.shape or not (ours == ref).all():
    raise AssertionError(f"qwen greedy tokens differ: jax {ours.tolist()} vs torch {ref.tolist()}")
  jax_t = time_fn(jax_run, repeats)
  torch_t = time_fn(lambda: (torch_run(), None)[1], repeats)
  for t in (jax_t, torch_t):
    t["tokens_per_s"] = batch * new_tokens / t["median_s"]
  config = {"batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "num_layers": cfg.text.num_hidden_layers, "hidden_size": cfg.text.hidden_size, "params": _n_params(m),
            "torch_attention": m.config._attn_implementation}
  return _result("qwen_greedy_generate", jax_t, torch_t, compile_s, {"tokens_equal": True}, config)


# ---- all + table --------------------------------------------------------------------------------------

def compare_all(cfg_dict: dict) -> list[dict]:
  """Runs the compares named in {"sana": (cfg, batch, hw, caption_len), "dc_ae": (cfg, batch, latent_hw),
  "qwen": (cfg, batch, prompt_len, new_tokens), "repeats": n}."""
  repeats = cfg_dict.get("repeats", 5)
  fns = {"sana": compare_sana, "dc_ae": compare_dc_ae, "qwen": compare_qwen_decode}
  return [fn(*cfg_dict[k], repeats=repeats) for k, fn in fns.items() if k in cfg_dict]


def _check_str(r: dict) -> str:
  if "tokens_equal" in r:
    return "tokens equal" if r["tokens_equal"] else "TOKENS DIFFER"
  return f"max|diff| {r['max_abs_diff']:.1e}"


def format_table(results: list[dict]) -> str:
  """component | jax median ms | torch median ms | jax/torch ratio | check."""
  rows = [("component", "jax median ms", "torch median ms", "jax/torch", "check")]
  rows += [(r["component"], f"{r['jax']['median_s'] * 1e3:.2f}", f"{r['torch']['median_s'] * 1e3:.2f}",
            f"{r['ratio']:.3f}", _check_str(r)) for r in results]
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
  lines.insert(1, "-+-".join("-" * w for w in widths))
  return "\n".join(lines)


__all__ = ["compare_sana", "compare_dc_ae", "compare_qwen_decode", "compare_all", "format_table"]
