"""The step-time benchmark: runs end to end on the tiny config with every JSON field, and its analytic FLOPs
equal hand-computed values and XLA's own count of an un-scanned forward."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

from configs.bench import tiny as bench_tiny
from unirl_jax.bench import __main__ as bench
from unirl_jax.bench import flops
from unirl_jax.models import connector, dc_ae, qwen2_5_vl, sana, sana_config

PHASES = ("lm_prefill", "lm_decode", "rollout", "reward", "update", "step")  # the CoT task's own phases


def xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


@pytest.fixture(scope="module")
def result():
  """The tiny bench on the CoT task, the one whose step runs every phase (LM sampling too)."""
  from configs import t2icot_tiny
  c = bench_tiny.get_config()
  c.task = "t2icot"
  c.reward = "jpeg_compressibility,format"
  c.max_text_len = 96
  c.lm = t2icot_tiny.get_config().lm
  c.lm.max_new_tokens = c.bench.new_tokens
  c.lm.max_cond_len = 100
  c.train.trainable = ("lm/language_model", "dit", "connector", "t2i_queries")
  c.bench.repeats = 2
  return bench.run(c, log=lambda *_: None)


def test_bench_json_has_every_field(result):
  out = json.loads(json.dumps(result))
  assert {"device", "versions", "commit", "config", "phases", "peak_memory_bytes"} <= set(out)
  assert out["device"]["platform"] == "cpu" and out["device"]["peak_bf16_flops"] is None
  assert {"jax", "flax", "torch", "transformers", "diffusers"} <= set(out["versions"])
  assert set(out["phases"]) == set(PHASES)
  for name, r in out["phases"].items():
    assert {"median_s", "min_s", "max_s", "spread", "repeats"} <= set(r), name
    assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and r["repeats"] == 2, name
    if name != "reward":
      assert r["flops"] > 0 and r["flops_per_s"] == pytest.approx(r["flops"] / r["median_s"]), name
      assert r["mfu"] is None  # no known peak on CPU
    if name not in ("reward", "step"):
      assert r["compile_s"] >= 0, name
  assert out["phases"]["update"]["memory_analysis"]["temp_size_in_bytes"] > 0
  assert out["phases"]["lm_decode"]["tokens_per_s"] > 0 and out["phases"]["rollout"]["images_per_s"] > 0
  assert out["phases"]["rollout"]["denoise_steps_per_s"] > 0 and out["peak_memory_bytes"] > 0
  p = out["phases"]
  assert p["step"]["flops"] == sum(p[k]["flops"] for k in ("lm_prefill", "lm_decode", "rollout", "update"))


def test_compile_only_reports_compile_time_and_memory():
  c = bench_tiny.get_config()
  c.model.kernels = "accelerator"  # compiles the GPU/TPU program's layers on this CPU host
  out = bench.run(c, compile_only=True, log=lambda *_: None)["compile_only"]
  assert out["compile_s"] > 0 and out["memory_analysis"]["argument_size_in_bytes"] > 0
  assert out["trajectories"] == c.prompts_per_step * c.group_size and out["params"]["dit"] > 0


def test_linear_flops():
  assert flops.linear(tokens=3, d_in=5, d_out=7) == 2 * 3 * 5 * 7
  a, w = jnp.zeros((3, 5)), jnp.zeros((5, 7))
  assert xla_flops(jnp.matmul, a, w) == flops.linear(3, 5, 7)


def test_decoder_layer_flops_by_hand():
  cfg = dataclasses.replace(qwen2_5_vl.tiny().text, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=96)
  d, hd = 64, cfg.head_dim  # head_dim 16
  assert hd == 16
  t, s = 10, 10
  q, kv, o = 2 * t * d * 64, 2 * (2 * t * d * 32), 2 * t * 64 * d
  attn = 2 * t * s * 64 + 2 * t * s * 64  # QK^T and AV over 4 heads x 16
  mlp = 3 * 2 * t * d * 96
  assert flops.decoder_layer(cfg, t, s) == q + kv + o + attn + mlp == 640000


def test_sana_block_flops_by_hand():
  cfg = sana_config.tiny(num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2,
                         cross_attention_head_dim=8, cross_attention_dim=16, mlp_ratio=2.5)
  n, m, d, hid = 16, 5, 16, 40
  self_attn = 4 * 2 * n * d * d + 2 * (2 * n * 8 * (2 * 8 + 1))  # q, k, v, out + linear attention of 2 heads
  cross = 2 * 2 * n * d * d + 2 * 2 * m * d * d + 4 * n * m * 16  # q, out; k, v of the caption; attention
  ff = 2 * n * d * 2 * hid + 2 * n * 9 * 2 * hid + 2 * n * hid * d  # 1x1 up, depthwise 3x3, 1x1 down
  assert flops.sana_block(cfg, n, m) == self_attn + cross + ff == 152576


def test_analytic_flops_match_xla_on_unscanned_forwards():
  """XLA counts a scanned layer once, so one layer each; elementwise work keeps XLA a few % above."""
  cfg = sana_config.tiny(num_attention_heads=4, attention_head_dim=32, num_cross_attention_heads=4,
                         cross_attention_head_dim=32, cross_attention_dim=128, caption_channels=64, num_layers=1,
                         ref_branch=True)
  m, p = sana.SanaTransformer(cfg), sana.init_params(cfg, jax.random.PRNGKey(0))
  x, ctx, t = jnp.zeros((1, 16, 16, cfg.in_channels)), jnp.zeros((1, 20, 64)), jnp.zeros((1,))
  ratio = xla_flops(lambda p: m.apply({"params": p}, x, ctx, t, ref_latents=x), p) / flops.sana_forward(cfg, 16, 16, 20)
  assert 1.0 <= ratio < 1.05
  ratio = xla_flops(lambda p: sana.SanaContext(cfg).apply({"params": p}, ctx), p) / flops.sana_context(cfg, 20)
  assert 1.0 <= ratio < 1.05

  lc = qwen2_5_vl.tiny()
  lc = lc.replace(text=dataclasses.replace(lc.text, num_hidden_layers=1))
  lm, lp = qwen2_5_vl.Qwen2_5_VL(lc), qwen2_5_vl.init_params(lc, jax.random.PRNGKey(0))
  ids = jnp.zeros((1, 64), jnp.int32)
  ratio = xla_flops(lambda p: lm.apply({"params": p}, ids), lp) / flops.lm_forward(lc.text, 64, logits_tokens=64)
  assert 1.0 <= ratio < 1.05

  cc = connector.tiny(num_layers=1)
  cm, cp = connector.Connector(cc), connector.init_params(cc, jax.random.PRNGKey(0))
  ratio = xla_flops(lambda p: cm.apply({"params": p}, jnp.zeros((1, 8, cc.hidden_size))), cp) / flops.connector(cc, 8)
  assert 1.0 <= ratio < 1.05

  vc = dc_ae.dc_ae_f32c32_sana(decoder_block_out_channels=(16, 32, 64, 64, 128, 128),
                               encoder_block_out_channels=(16, 32, 64, 64, 128, 128))
  vm, vp = dc_ae.DCAE(vc), dc_ae.init_params(vc, jax.random.PRNGKey(0))
  ratio = xla_flops(lambda p: vm.apply({"params": p}, jnp.zeros((1, 4, 4, 32)), method="decode"), vp)
  ratio /= flops.dc_ae_decode(vc, 4, 4)
  assert 0.95 < ratio < 1.05
