"""Test setup: 8 forced CPU devices and fast compiles (before jax is imported), offline hub, tiny HF reference
models."""

import os
import sys

# Tests compile far more than they run (tiny models): LLVM's optimisation passes off halve XLA:CPU's compile
# time. They only change how fast the machine code runs, not the HLO or the float semantics.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# Identical programs compiled again (a resumed trainer, a second sampler, another test file's tiny model) come
# from this session's disk cache, which the pytest-xdist workers of one run share.
import tempfile  # noqa: E402

_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
_cache = (os.path.join(tempfile.gettempdir(), f"unirl_jax_xla_cache_{_run}") if _run
          else tempfile.mkdtemp(prefix="unirl_jax_xla_cache_"))
jax.config.update("jax_compilation_cache_dir", _cache)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unirl_jax.models import qwen2_5_vl  # noqa: E402


def tiny_hf_config(**overrides):
  """The transformers config of `qwen2_5_vl.tiny()`, with text weights large enough that greedy decoding varies."""
  from transformers import Qwen2_5_VLConfig
  d = qwen2_5_vl.tiny(**overrides).to_hf_dict()
  d["text_config"]["initializer_range"] = 0.25
  return Qwen2_5_VLConfig(**d)


def randomize_biases_and_norms(model, seed=0, scale=0.05):
  """Adds scale·N(0, 1) to every bias and norm weight (transformers inits them to exactly 0 and 1, where a bias or
  norm mapping error could not fail a parity test)."""
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(".bias") or "norm" in name or ".ln_q." in name:
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
  return model


def save_tiny_hf(path, seed=0, **overrides):
  import torch
  from transformers import Qwen2_5_VLForConditionalGeneration
  torch.manual_seed(seed)
  model = randomize_biases_and_norms(Qwen2_5_VLForConditionalGeneration(tiny_hf_config(**overrides)), seed)
  model.save_pretrained(path)
  return path


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
  return str(save_tiny_hf(tmp_path_factory.mktemp("hf") / "tiny"))


@pytest.fixture(scope="session")
def hf_model(hf_dir):
  from transformers import Qwen2_5_VLForConditionalGeneration
  return Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def jax_dir(hf_dir, tmp_path_factory):
  from unirl_jax.convert.pipeline import import_qwen2_5_vl
  return import_qwen2_5_vl(hf_dir, str(tmp_path_factory.mktemp("jax") / "tiny"))


@pytest.fixture(scope="session")
def jax_model(jax_dir):
  return qwen2_5_vl.load(jax_dir)


@pytest.fixture(scope="session")
def images():
  """Two images whose processor grids differ in height and width (non-square), as numpy inputs."""
  from PIL import Image
  from transformers import Qwen2VLImageProcessorPil
  rs = np.random.RandomState(0)
  imgs = [Image.fromarray(rs.randint(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(112, 168), (140, 84)]]
  proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
  out = proc(images=imgs, return_tensors="np")
  return out["pixel_values"].astype(np.float32), out["image_grid_thw"]


def image_prompt(cfg, n_image_tokens, before=(5, 6, 7), after=(8, 9, 10)):
  return list(before) + [cfg.vision_start_token_id] + [cfg.image_token_id] * n_image_tokens + \
      [cfg.vision_end_token_id] + list(after)


def left_pad(rows, pad_id=0):
  n = max(map(len, rows))
  ids = np.array([[pad_id] * (n - len(r)) + list(r) for r in rows], np.int64)
  mask = np.array([[0] * (n - len(r)) + [1] * len(r) for r in rows], np.int64)
  return ids, mask
