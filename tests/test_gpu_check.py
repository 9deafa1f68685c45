"""The one-shot accelerator check runs end to end on the tiny bench config (on CPU: no MFU, no fit verdict), its
random weights are what it says, and the trace summary accounts for the traced update's device time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.bench import tiny as bench_tiny
from unirl_jax.bench import gpu_check, grpo, trace_summary


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  trace_dir = str(tmp_path_factory.mktemp("trace"))
  return gpu_check.run(bench_tiny.get_config(), repeats=1, sections=("lm_decode", "dm_update", "torch_step"),
                       log=lambda *_: None, trace_dir=trace_dir, torch_config=bench_tiny.get_config())


def test_every_section_reports(result):
  assert "errors" not in result
  c = bench_tiny.get_config()
  assert [r["rows"] for r in result["lm_decode"]] == list(gpu_check.DECODE_ROWS)
  for r in result["lm_decode"]:
    assert r["new_tokens"] == c.bench.new_tokens and r["prompt_tokens"] == c.max_text_len
    assert r["median_s"] > 0 and r["hbm_bytes"] > 0 and r["hbm_roofline_frac"] is None  # CPU: no HBM peak
  dm = result["dm_update"]
  assert dm["loss_finite"] and dm["update"]["median_s"] > 0 and dm["update"]["mfu"] is None
  assert dm["fits_80gb"] is None and dm["peak_memory_bytes"] > 0
  assert dm["update"]["memory_analysis"]["argument_size_in_bytes"] > 0
  assert (dm["trajectories"], dm["image_size"], dm["sde_steps"]) == (c.group_size, c.image_size, c.dm.steps)
  _, _, model, rc = grpo.abstract_update(c)
  lh = c.image_size // model.config.vae.spatial_compression_ratio
  assert dm["update"]["flops"] == grpo.phase_flops(model.config, rc, rc.rows, c.max_text_len, (lh, lh), False)["update"]
  ts = result["torch_step"]
  assert ts["torch_device"] == "cpu" and set(ts["ratio"]) == {"rollout", "reward", "update", "step"}
  text = gpu_check.summary(result)
  assert "DM update" in text and "LM decode" in text and "torch step" in text


def test_trace_summary_accounts_for_the_update(result):
  tr = result["dm_update"]["trace"]
  assert tr["total_ms"] > 0
  assert sum(tr["by_kind"].values()) == pytest.approx(tr["total_ms"])
  assert tr["by_kind"].get("gemm", 0) > 0  # the DiT's matmuls are seen as such
  assert sum(ms for _, ms, _ in tr["hlo_ops"]) <= tr["total_ms"] + 1e-6
  assert "busiest kernels" in trace_summary.format_summary(tr)


def test_random_like():
  tree = {"w": jax.ShapeDtypeStruct((300, 70000), jnp.bfloat16), "i": jax.ShapeDtypeStruct((4,), jnp.int32),
          "b": jax.ShapeDtypeStruct((3,), jnp.float32)}
  out = gpu_check.random_like(tree, jax.random.PRNGKey(0), scale=0.5)  # "w" is larger than the 16M-value draw
  assert jax.tree.map(lambda x: (x.shape, x.dtype), out) == jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert np.all(np.asarray(out["i"]) == 0)
  assert np.std(np.asarray(out["w"], np.float32)) == pytest.approx(0.5, rel=0.02)
  zeros = gpu_check.random_like(tree, jax.random.PRNGKey(0), zeros=True)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(zeros))


def test_kernel_kinds():
  kinds = {n: trace_summary.kind_of(n) for n in (
      "nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT", "conv2d_c1_k1_nhwc", "MemcpyD2D", "loop_multiply_fusion_14",
      "input_add_reduce_fusion_7", "flash_fprop_kernel", "loop_dynamic_slice_fusion", "nccl_all_reduce")}
  assert kinds == {"nvjet_sm90_tst_128x160_64x5_2x1_v_bz_NNT": "gemm", "conv2d_c1_k1_nhwc": "conv",
                   "MemcpyD2D": "copy", "loop_multiply_fusion_14": "fusion", "input_add_reduce_fusion_7": "reduce",
                   "flash_fprop_kernel": "attention", "loop_dynamic_slice_fusion": "scatter/gather",
                   "nccl_all_reduce": "reduce"}
