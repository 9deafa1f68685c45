"""Config presets, validation, and reading both HF config.json layouts."""

import json

import numpy as np
import pytest
import torch

from unirl_jax.models import qwen2_5_vl
from unirl_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

# The flat layout of the hub's Qwen/Qwen2.5-VL-3B-Instruct config.json (transformers 4.x era).
HUB_3B = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 128000,
    "max_window_layers": 70, "model_type": "qwen2_5_vl", "num_attention_heads": 16, "num_hidden_layers": 36,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936,
}


def test_flat_hub_layout_is_the_3b_preset(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(HUB_3B))
  cfg = Qwen2_5_VLConfig.from_hf(str(tmp_path))
  assert cfg == qwen2_5_vl.qwen2_5_vl_3b(pad_token_id=151643)


def test_nested_v5_layout_is_the_3b_preset():
  from transformers import Qwen2_5_VLConfig as HFConfig
  nested = HFConfig(**HUB_3B).to_dict()
  assert "text_config" in nested and "rope_parameters" in nested["text_config"]
  assert Qwen2_5_VLConfig.from_hf(nested) == qwen2_5_vl.qwen2_5_vl_3b(pad_token_id=151643)


def test_to_hf_round_trip():
  cfg = qwen2_5_vl.tiny()
  assert Qwen2_5_VLConfig.from_hf(cfg.to_hf_dict()) == cfg


def test_initializer_range_is_read_written_and_used():
  """transformers' `initializer_range` (the std of embeddings and linear kernels at random init)."""
  import dataclasses
  import jax
  cfg = qwen2_5_vl.tiny(tie_word_embeddings=False)
  cfg = cfg.replace(text=dataclasses.replace(cfg.text, initializer_range=0.3))
  d = cfg.to_hf_dict()
  assert d["text_config"]["initializer_range"] == 0.3 and Qwen2_5_VLConfig.from_hf(d) == cfg
  import flax.linen as nn
  from unirl_jax.models.qwen2_5_vl.params import _boxed_init
  params = nn.unbox(_boxed_init(cfg, jax.random.PRNGKey(0)))
  text = params["language_model"]
  for x in (text["embed_tokens"]["embedding"], text["layers"]["self_attn"]["q_proj"]["kernel"],
            text["layers"]["mlp"]["down_proj"]["kernel"], params["lm_head"]["kernel"]):
    assert abs(float(np.std(x)) - 0.3) < 0.03, x.shape


def test_3b_param_count_matches_transformers():
  """The real-size preset initialises abstractly with exactly the reference's parameter count."""
  from transformers import Qwen2_5_VLConfig as HFConfig, Qwen2_5_VLForConditionalGeneration
  cfg = qwen2_5_vl.qwen2_5_vl_3b()
  with torch.device("meta"):
    hf = Qwen2_5_VLForConditionalGeneration(HFConfig(**cfg.to_hf_dict()))
  ref = sum(p.numel() for p in hf.parameters())  # tied head counted once
  ours = qwen2_5_vl.num_params(qwen2_5_vl.abstract_params(cfg))
  assert ours == ref
  assert 3.7e9 < ours < 3.8e9


@pytest.mark.parametrize("kw,msg", [
    (dict(mrope_section=(2, 3, 2)), "mrope_section"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
])
def test_invalid_text_config(kw, msg):
  import dataclasses
  with pytest.raises(ValueError, match=msg):
    qwen2_5_vl.tiny(text=dataclasses.replace(qwen2_5_vl.tiny().text, **kw))


def test_invalid_execution_options():
  with pytest.raises(ValueError, match="remat"):
    qwen2_5_vl.tiny(remat="sometimes")
  with pytest.raises(ValueError, match="image_token_id"):
    qwen2_5_vl.tiny(image_token_id=10_000)


def test_missing_mrope_section_is_named():
  d = dict(HUB_3B)
  d.pop("rope_scaling")
  with pytest.raises(ValueError, match="mrope_section"):
    Qwen2_5_VLConfig.from_hf(d)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_and_unroll_do_not_change_outputs(remat):
  import jax
  import jax.numpy as jnp
  base = qwen2_5_vl.tiny()
  params = qwen2_5_vl.init_params(base)
  ids = jnp.asarray(np.random.RandomState(0).randint(3, 500, size=(1, 5)))
  loss = lambda m: lambda p: m.apply({"params": p}, input_ids=ids).astype(jnp.float32).std()
  ref_v, ref_g = jax.value_and_grad(loss(qwen2_5_vl.Qwen2_5_VL(base)))(params)
  v, g = jax.value_and_grad(loss(qwen2_5_vl.Qwen2_5_VL(base.replace(remat=remat, scan_unroll=2))))(params)
  np.testing.assert_allclose(v, ref_v, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_full_attention_indexes_beyond_the_depth_are_never_reached_as_in_transformers(images):
  """transformers loads a vision config whose fullatt_block_indexes point past its depth (it tests `i in
  indexes` per block), so it must convert; such an index changes nothing."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  base = qwen2_5_vl.tiny()
  d = base.to_hf_dict()
  d["vision_config"]["fullatt_block_indexes"] = [1, 40]
  cfg = Qwen2_5_VLConfig.from_hf(d)
  assert cfg.vision.fullatt_block_indexes == (1, 40)
  pv, grid = images
  params = qwen2_5_vl.init_params(base, jax.random.PRNGKey(0))
  out = [qwen2_5_vl.Qwen2_5_VL(c).apply({"params": params}, jnp.asarray(pv), grid, method="get_image_features")
         for c in (cfg, base.replace(vision=dataclasses.replace(base.vision, fullatt_block_indexes=(1,))))]
  np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))
