"""The UniRL-Zero unified model: Qwen2.5-VL -> meta-query states -> connector -> SANA conditioning; DC-AE latents.

Params are one plain dict {"lm", "t2i_queries", "i2i_queries", "connector", "dit", "vae"}; the methods here
are pure functions of (params, inputs) that RL and pretraining compose (UniRL's `blip3oQwenModel`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from unirl_jax.diffusion import sampler as sampler_lib
from unirl_jax.diffusion.sampler import Guidance
from unirl_jax.models import connector as connector_lib
from unirl_jax.models import dc_ae as dc_ae_lib
from unirl_jax.models import qwen2_5_vl
from unirl_jax.models import sana as sana_lib
from unirl_jax.models.connector import ConnectorConfig
from unirl_jax.models.dc_ae import DCAEConfig
from unirl_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
from unirl_jax.models.sana_config import SanaConfig

TASKS = ("t2i", "i2i")


@dataclasses.dataclass(frozen=True)
class UnifiedConfig:
  lm: Qwen2_5_VLConfig
  connector: ConnectorConfig
  dit: SanaConfig
  vae: DCAEConfig
  num_queries: int = 256
  # The original's conditioning forward passes no position_ids, so the decoder uses arange(L) on all three
  # M-RoPE axes ("1d"); "3d" uses get_rope_index positions instead.
  positions: str = "1d"
  ref_keep: float = 0.8  # editing reference latents: ref_keep * z + (1 - ref_keep) * noise

  def __post_init__(self):
    errors = []
    if self.connector.hidden_size != self.lm.text.hidden_size:
      errors.append(f"connector.hidden_size {self.connector.hidden_size} != LM width {self.lm.text.hidden_size}")
    if self.connector.out_dim != self.dit.caption_channels:
      errors.append(f"connector.out_dim {self.connector.out_dim} != dit.caption_channels {self.dit.caption_channels}")
    if self.dit.in_channels != self.vae.latent_channels or self.dit.out_channels != self.vae.latent_channels:
      errors.append(f"dit in/out channels {self.dit.in_channels}/{self.dit.out_channels} != vae latent channels "
                    f"{self.vae.latent_channels}")
    if not self.dit.ref_branch:
      errors.append("dit.ref_branch must be True (UniRL feeds editing references through it)")
    if self.positions not in ("1d", "3d"):
      errors.append(f"positions {self.positions!r} not '1d' or '3d'")
    if errors:
      raise ValueError("invalid UnifiedConfig: " + "; ".join(errors))

  def replace(self, **kw) -> "UnifiedConfig":
    return dataclasses.replace(self, **kw)


def unirl_zero_3b_1600m(**kw) -> UnifiedConfig:
  """Qwen2.5-VL-3B (151,668-row vocabulary after UniRL pretraining) + connector + SANA-1.6B + DC-AE f32c32."""
  lm = qwen2_5_vl.qwen2_5_vl_3b()
  lm = lm.replace(text=dataclasses.replace(lm.text, vocab_size=151668))
  return UnifiedConfig(lm=lm, connector=connector_lib.unirl_connector(), dit=sana_lib.sana_1600m(ref_branch=True),
                       vae=dc_ae_lib.dc_ae_f32c32_sana(), **kw)


def tiny(**kw) -> UnifiedConfig:
  vae = dc_ae_lib.tiny()
  c = vae.latent_channels
  return UnifiedConfig(lm=qwen2_5_vl.tiny(), connector=connector_lib.tiny(hidden_size=64, out_dim=12),
                       dit=sana_lib.tiny(in_channels=c, out_channels=c, caption_channels=12, ref_branch=True),
                       vae=vae, num_queries=8, **kw)


class UnifiedModel:
  """Holds the four linen modules; every method is a pure function of its params argument."""

  def __init__(self, config: UnifiedConfig):
    self.config = config
    self.lm = qwen2_5_vl.Qwen2_5_VL(config.lm)
    self.connector = connector_lib.Connector(config.connector)
    self.dit = sana_lib.SanaTransformer(config.dit)
    self.dit_context = sana_lib.SanaContext(config.dit)
    self.vae = dc_ae_lib.DCAE(config.vae)

  # ---- params -----------------------------------------------------------------------------------

  def init_params(self, rng: jax.Array, lm=None, dit=None, vae=None) -> dict:
    """Fresh params; pass converted `lm`/`dit`/`vae` params to start from pretrained experts.

    The meta-queries are drawn from N(0, 1) as in the original (not 0.02), the connector from its own
    init, and a given DiT without a reference branch gets one (ref_patch_embed = patch_embed, ref_linear = 0).
    """
    cfg = self.config
    k = jax.random.split(rng, 6)
    d = cfg.lm.text.hidden_size
    if dit is not None and "ref_patch_embed" not in dit:
      dit = sana_lib.with_ref_branch(dit)
    return {
        "lm": qwen2_5_vl.init_params(cfg.lm, k[0]) if lm is None else lm,
        "t2i_queries": jax.random.normal(k[1], (1, cfg.num_queries, d), jnp.float32),
        "i2i_queries": jax.random.normal(k[2], (1, cfg.num_queries, d), jnp.float32),
        "connector": connector_lib.init_params(cfg.connector, k[3]),
        "dit": sana_lib.init_params(cfg.dit, k[4]) if dit is None else dit,
        "vae": dc_ae_lib.init_params(cfg.vae, k[5]) if vae is None else vae,
    }

  def abstract_params(self) -> dict:
    cfg = self.config
    q = jax.ShapeDtypeStruct((1, cfg.num_queries, cfg.lm.text.hidden_size), jnp.float32)
    return {"lm": qwen2_5_vl.abstract_params(cfg.lm), "t2i_queries": q, "i2i_queries": q,
            "connector": connector_lib.abstract_params(cfg.connector), "dit": sana_lib.abstract_params(cfg.dit),
            "vae": dc_ae_lib.abstract_params(cfg.vae)}

  def logical_axes(self) -> dict:
    cfg = self.config
    q = P(None, "queries", "embed")
    return {"lm": qwen2_5_vl.logical_axes(cfg.lm), "t2i_queries": q, "i2i_queries": q,
            "connector": connector_lib.logical_axes(cfg.connector), "dit": sana_lib.logical_axes(cfg.dit),
            "vae": dc_ae_lib.logical_axes(cfg.vae)}

  # ---- conditioning -----------------------------------------------------------------------------

  def query_states(self, params, input_ids, attention_mask, pixel_values=None, image_grid_thw=None,
                   task: str = "t2i", query_shift=None):
    """LM last-layer (post-norm) hidden states at the appended queries: (B, num_queries, LM width).

    query_shift (B,): positions left empty between the text and the queries. The original right-pads a batch
    to its longest prompt and appends the queries after the pads, so a shorter prompt's queries sit that many
    positions further from its text; a left-padded row with this shift computes the same (RoPE is relative).
    """
    if task not in TASKS:
      raise ValueError(f"task {task!r} not one of {TASKS}")
    cfg = self.config
    lm = {"params": params["lm"]}
    embeds = self.lm.apply(lm, input_ids, pixel_values, image_grid_thw, method="embed")
    b, t = input_ids.shape
    queries = jnp.broadcast_to(params[f"{task}_queries"].astype(embeds.dtype), (b, cfg.num_queries, embeds.shape[-1]))
    embeds = jnp.concatenate([embeds, queries], axis=1)
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    mask = jnp.concatenate([attention_mask.astype(jnp.int32), jnp.ones((b, cfg.num_queries), jnp.int32)], axis=1)
    if cfg.positions == "1d":
      positions = jnp.broadcast_to(jnp.arange(t + cfg.num_queries), (b, t + cfg.num_queries))
    else:
      ids = jnp.concatenate([input_ids, jnp.full((b, cfg.num_queries), cfg.lm.pad_token_id, input_ids.dtype)], 1)
      positions = qwen2_5_vl.get_rope_index(ids, image_grid_thw, mask, cfg.lm)[0]
    if query_shift is not None:
      is_query = (jnp.arange(t + cfg.num_queries) >= t).astype(positions.dtype)
      shift = jnp.asarray(query_shift, positions.dtype)[:, None] * is_query  # (B, T + Q)
      positions = positions + (shift[None] if positions.ndim == 3 else shift)
    hidden, _ = self.lm.apply(lm, embeds, positions, mask, method="hidden_states")
    return hidden[:, -cfg.num_queries:]

  def condition(self, params, input_ids, attention_mask, pixel_values=None, image_grid_thw=None, task="t2i",
                query_shift=None):
    """The SANA caption input for a chat-templated prompt: (B, num_queries, caption_channels)."""
    h = self.query_states(params, input_ids, attention_mask, pixel_values, image_grid_thw, task, query_shift)
    return self.connector.apply({"params": params["connector"]}, h)

  def null_condition(self, cond: jax.Array) -> jax.Array:
    """The original's unconditional input: the connector output times 0."""
    return jnp.zeros_like(cond)

  # ---- diffusion expert -------------------------------------------------------------------------

  def velocity(self, params, x_t, cond, timestep, ref_latents=None):
    """SANA velocity (ε − x₀ prediction) at flow time σ = timestep / 1000; NHWC latents."""
    return self.dit.apply({"params": params["dit"]}, x_t, cond, timestep, ref_latents=ref_latents)

  def caption_context(self, dit_params, cond):
    """SANA's caption K/V for every layer (`sana.SanaContext`): computed once, shared by all denoising steps
    through `self.dit.apply(..., context=...)`."""
    return self.dit_context.apply({"params": dit_params}, cond)

  def guidance_context(self, dit_params, cond, guidance: Guidance):
    """The caption K/V of every CFG branch ([∅, c] for two-way; null = `null_condition`), once per rollout."""
    return self.caption_context(dit_params, guidance.conditions(cond, self.null_condition(cond)))

  def guided_velocity(self, dit_params, context, guidance: Guidance, ref_latents=None, detach_uncond=False):
    """(x, t) -> the guided SANA velocity over `guidance_context`'s rows, all branches in one DiT call.
    Without `ref_latents` the DiT gets zero reference latents (UniRL's text-to-image input)."""
    def apply(x, t, ref):
      ref = jnp.zeros_like(x) if ref is None else ref
      return self.dit.apply({"params": dit_params}, x, None, t, ref_latents=ref, context=context)
    return sampler_lib.guided_velocity(apply, guidance, ref_latents, detach_uncond)

  def encode(self, params, images):
    """Images in [-1, 1], (B, H, W, 3) -> scaled latents (× scaling_factor, as UniRL)."""
    return dc_ae_lib.encode_scaled(self.vae, params["vae"], images)

  def decode(self, params, latents):
    """Scaled latents -> images in [-1, 1]."""
    return dc_ae_lib.decode_scaled(self.vae, params["vae"], latents)

  def noisy_reference(self, latents, rng):
    """UniRL's editing reference: 0.8·z + 0.2·ε (drawn once, shared by every sample and step)."""
    k = self.config.ref_keep
    return k * latents + (1 - k) * jax.random.normal(rng, latents.shape, latents.dtype)


def trainable_mask(params: dict, trainable=("dit", "connector", "t2i_queries", "i2i_queries")) -> dict:
  """A bool pytree: True for params that train (the default is UniRL's pretraining set)."""
  return {k: jax.tree.map(lambda _: k in trainable, v) for k, v in params.items()}


def freeze(params: dict, mask: dict) -> dict:
  """stop_gradient on frozen leaves: gradients still flow *through* the frozen LM to the queries."""
  return jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)



# ---- checkpoint directories ---------------------------------------------------------------------
# DIR/unified.json (the four configs in their reference formats + UniRL fields), DIR/params/ (Orbax, the
# whole params dict), DIR/unirl_jax.json, and the tokenizer/processor files when known.

EXEC_FIELDS = ("dtype", "param_dtype", "remat", "scan_unroll", "attention_impl", "kernels")


def config_to_dict(cfg: UnifiedConfig) -> dict:
  conn = {k: v for k, v in dataclasses.asdict(cfg.connector).items() if k not in EXEC_FIELDS}
  dit = {**cfg.dit.to_diffusers_dict(), "ref_branch": cfg.dit.ref_branch}
  return {"lm": cfg.lm.to_hf_dict(), "connector": conn, "dit": dit, "vae": cfg.vae.to_diffusers_dict(),
          "num_queries": cfg.num_queries, "positions": cfg.positions, "ref_keep": cfg.ref_keep}


def config_from_dict(d: dict, **overrides) -> UnifiedConfig:
  dit = dict(d["dit"])
  return UnifiedConfig(lm=Qwen2_5_VLConfig.from_hf(d["lm"]), connector=ConnectorConfig(**d["connector"]),
                       dit=SanaConfig.from_diffusers(dit, ref_branch=bool(dit.get("ref_branch", True))),
                       vae=DCAEConfig.from_diffusers(d["vae"]),
                       **{k: d[k] for k in ("num_queries", "positions", "ref_keep") if k in d}, **overrides)


EXEC_MODULES = ("lm", "connector", "dit", "vae")
_VAE_KNOBS = ("dtype", "param_dtype", "kernels")  # the DC-AE has no layer stack to remat or scan


def with_execution(cfg: UnifiedConfig, **knobs) -> UnifiedConfig:
  """Sets dtype/remat/... on the sub-models: a value applies to all of them (e.g. dtype="bfloat16",
  remat="full"), a dict to the ones it names (e.g. remat={"dit": "full", "lm": "save_dots"})."""
  per = {m: {} for m in EXEC_MODULES}
  for k, v in knobs.items():
    if isinstance(v, dict):
      unknown = set(v) - set(EXEC_MODULES)
      if unknown:
        raise ValueError(f"{k}: unknown sub-model(s) {sorted(unknown)}; expected some of {EXEC_MODULES}")
      if "vae" in v and k not in _VAE_KNOBS:
        raise ValueError(f"{k}: the vae takes only {_VAE_KNOBS}")
      for m, mv in v.items():
        per[m][k] = mv
    else:
      for m in EXEC_MODULES:
        if m != "vae" or k in _VAE_KNOBS:
          per[m][k] = v
  return cfg.replace(**{m: getattr(cfg, m).replace(**per[m]) for m in EXEC_MODULES})


def save(path: str, cfg: UnifiedConfig, params: dict, side_files_from: str | None = None,
         overwrite: bool = False) -> str:
  """Writes a self-contained unified checkpoint dir (staged: nothing half-written is left on failure)."""
  import json
  import os
  from unirl_jax.convert.pipeline import copy_side_files, staged_dir
  from unirl_jax import checkpoint
  with staged_dir(path, overwrite) as tmp:
    checkpoint.save_params(os.path.join(tmp, "params"), jax.device_get(params))
    with open(os.path.join(tmp, "unified.json"), "w") as f:
      json.dump(config_to_dict(cfg), f, indent=1)
    with open(os.path.join(tmp, "unirl_jax.json"), "w") as f:
      json.dump({"kind": "unirl", "param_dtype": cfg.dit.param_dtype}, f)
    if side_files_from:
      copy_side_files(side_files_from, tmp, skip=("config.json", "unirl_jax.json", "unified.json"))
  return path


def load(path: str, mesh=None, rules=None, **knobs) -> tuple[UnifiedModel, dict]:
  """-> (model, params) from a dir written by `save` / `python -m convert unirl`; knobs as in with_execution."""
  import json
  import os
  from unirl_jax import checkpoint, sharding
  cfg_path = os.path.join(path, "unified.json")
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(f"{path} has no unified.json (write one with `python -m convert unirl`)")
  try:
    with open(cfg_path) as f:
      cfg = config_from_dict(json.load(f))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{cfg_path}: not a unified model config ({type(e).__name__}: {e})") from None
  stored = json.load(open(os.path.join(path, "unirl_jax.json"))).get("param_dtype", "float32")
  cfg = with_execution(cfg, param_dtype=stored, **knobs)
  model = UnifiedModel(cfg)
  target = model.abstract_params()
  shardings = None
  if mesh is not None:
    shardings = sharding.param_shardings(model.logical_axes(), mesh, rules, shapes=target)
  return model, checkpoint.restore_params(os.path.join(path, "params"), target, shardings)


def tiny_qwen_vocab(**kw) -> UnifiedConfig:
  """`tiny()` whose LM uses Qwen's real 151,936-token vocabulary and special ids, for the offline tokenizer."""
  cfg = tiny(**kw)
  lm = cfg.lm.replace(text=dataclasses.replace(cfg.lm.text, vocab_size=151936), image_token_id=151655,
                      video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
                      bos_token_id=151643, eos_token_id=(151645,), pad_token_id=151643)
  return cfg.replace(lm=lm)


def shapes(**kw) -> UnifiedConfig:
  """The GenEval-on-shapes cold start (configs/pretrain_geneval_tiny.py): `tiny_qwen_vocab`'s LM and DC-AE with
  a DiT wide enough to draw multi-object scenes (4 layers of width 64; `tiny`'s width-16 DiT learns only the
  mean image) and a connector to match. The random LM is drawn at std 0.25, not 0.02: at 0.02 the N(0, 1)
  meta-queries drown the prompt tokens in the query states (0.2 % apart across prompts, so the DiT never learns
  to read them); at 0.25 they differ by ~50 %."""
  cfg = tiny_qwen_vocab(**kw)
  cfg = cfg.replace(lm=cfg.lm.replace(text=dataclasses.replace(cfg.lm.text, initializer_range=0.25)))
  c = cfg.vae.latent_channels
  dit = sana_lib.tiny(in_channels=c, out_channels=c, num_attention_heads=4, attention_head_dim=16, num_layers=4,
                      num_cross_attention_heads=4, cross_attention_head_dim=16, cross_attention_dim=64,
                      caption_channels=64, sample_size=8, ref_branch=True)
  return cfg.replace(connector=connector_lib.tiny(hidden_size=64, out_dim=64), dit=dit)


def small(**kw) -> UnifiedConfig:
  """A CPU-benchmark size (~60 M params, most of them the 151,936-row embedding): a 4-layer width-256 LM,
  a 2-layer connector, a 4-layer width-256 SANA and the tiny DC-AE."""
  cfg = tiny_qwen_vocab(**kw)
  text = dataclasses.replace(cfg.lm.text, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=2, mrope_section=(4, 6, 6))
  lm = cfg.lm.replace(text=text, vision=dataclasses.replace(cfg.lm.vision, out_hidden_size=256))
  c = cfg.vae.latent_channels
  dit = sana_lib.tiny(in_channels=c, out_channels=c, num_attention_heads=8, attention_head_dim=32, num_layers=4,
                      num_cross_attention_heads=8, cross_attention_head_dim=32, cross_attention_dim=256,
                      caption_channels=128, sample_size=16, ref_branch=True)
  return cfg.replace(lm=lm, connector=connector_lib.tiny(hidden_size=256, num_heads=4, intermediate_size=512,
                                                         out_dim=128), dit=dit)


def mid(**kw) -> UnifiedConfig:
  """An accelerator-comparison size (~0.5 B params): an 8-layer width-1024 LM over Qwen's vocabulary, a 4-layer
  width-1024 connector, an 8-layer width-1120 SANA (SANA-1.6B's head and FFN shapes) on 32x32 latents (1,024
  tokens, as at 1024 px) through the tiny DC-AE (128 px images)."""
  cfg = tiny_qwen_vocab(**kw)
  text = dataclasses.replace(cfg.lm.text, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                             num_attention_heads=16, num_key_value_heads=2, mrope_section=(8, 12, 12))
  lm = cfg.lm.replace(text=text, vision=dataclasses.replace(cfg.lm.vision, out_hidden_size=1024))
  c = cfg.vae.latent_channels
  dit = sana_lib.tiny(in_channels=c, out_channels=c, num_attention_heads=35, attention_head_dim=32, num_layers=8,
                      num_cross_attention_heads=10, cross_attention_head_dim=112, cross_attention_dim=1120,
                      caption_channels=1152, sample_size=32, ref_branch=True)
  return cfg.replace(lm=lm, connector=connector_lib.tiny(hidden_size=1024, num_heads=8, intermediate_size=2048,
                                                         out_dim=1152, num_layers=4), dit=dit)
