"""JAX vs torch benchmark harness on tiny configs: parity checks pass, every field is there, timings are sane."""

import numpy as np
import pytest

from unirl_jax.bench import torch_compare as tc
from unirl_jax.models import dc_ae, sana_config
from unirl_jax.models.qwen2_5_vl import config as qwen_config

TIMING_KEYS = {"median_s", "min_s", "max_s", "spread", "repeats"}


@pytest.fixture(scope="module")
def sana_result():
  return tc.compare_sana(sana_config.tiny(), batch=2, hw=(8, 8), caption_len=5, repeats=2)


@pytest.fixture(scope="module")
def dc_ae_result():
  return tc.compare_dc_ae(dc_ae.tiny(), batch=2, latent_hw=(2, 3), repeats=2)


@pytest.fixture(scope="module")
def qwen_result():
  return tc.compare_qwen_decode(qwen_config.tiny(), batch=2, prompt_len=6, new_tokens=8, repeats=2)


def check_common(r, component, check):
  assert r["component"] == component
  assert {"component", "jax", "torch", "ratio", "jax_compile_s", "config", check} <= set(r)
  for side in ("jax", "torch"):
    t = r[side]
    assert TIMING_KEYS <= set(t) and t["repeats"] == 2
    assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"]
  assert r["ratio"] == pytest.approx(r["jax"]["median_s"] / r["torch"]["median_s"])
  assert r["jax_compile_s"] > 0


def test_sana_train_step(sana_result):
  r = sana_result
  check_common(r, "sana_train_step", "max_abs_diff")
  assert 0 <= r["max_abs_diff"] < 1e-4
  assert r["config"]["batch"] == 2 and r["config"]["hw"] == (8, 8) and r["config"]["params"] > 0


def test_dc_ae_decode(dc_ae_result):
  r = dc_ae_result
  check_common(r, "dc_ae_decode", "max_abs_diff")
  assert 0 <= r["max_abs_diff"] < 1e-4
  assert r["config"]["image_hw"] == (8, 12)


def test_qwen_greedy_generate(qwen_result):
  r = qwen_result
  check_common(r, "qwen_greedy_generate", "tokens_equal")
  assert r["tokens_equal"] is True
  for side in ("jax", "torch"):
    assert r[side]["tokens_per_s"] == pytest.approx(2 * 8 / r[side]["median_s"])


def test_format_table(sana_result, dc_ae_result, qwen_result):
  lines = tc.format_table([sana_result, dc_ae_result, qwen_result]).splitlines()
  assert len(lines) == 5 and "jax/torch" in lines[0]
  assert lines[2].startswith("sana_train_step") and "max|diff|" in lines[2]
  assert "tokens equal" in lines[4]
  assert f"{qwen_result['ratio']:.3f}" in lines[4]


def test_compare_all_runs_only_the_entries_given():
  out = tc.compare_all({"dc_ae": (dc_ae.tiny(), 1, (2, 2)), "repeats": 1})
  assert [r["component"] for r in out] == ["dc_ae_decode"]
  assert out[0]["jax"]["repeats"] == 1 and out[0]["max_abs_diff"] < 1e-4


def test_mismatch_raises():
  with pytest.raises(AssertionError, match="differ by"):
    tc._check_close(np.zeros(3), np.array([0.0, 0.0, 1e-3]), "demo")
