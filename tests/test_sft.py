"""LM supervision in the pretraining trainer: the loss equals transformers' cross-entropy on the target tokens of
the same sequences (an image prompt included) and ignores the rest; chat records become the Qwen template with
the assistant turns as targets; a supervised stage on the synthetic questions trains the LM alone."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import image_prompt, left_pad

from configs import sft_reason_text_tiny
from unirl_jax.data import pipeline, records, synthetic_questions
from unirl_jax.data.records import DataError
from unirl_jax.pretrain import Pretrainer, lm_supervised_loss

TOL = 1e-5


def test_supervised_loss_equals_transformers_cross_entropy(hf_model, jax_model, images):
  model, params = jax_model
  cfg = model.config
  pv, grids = images
  n = int(np.prod(grids[0]))
  pv = np.concatenate([pv[:n], pv[:n]])  # both rows show the first image (one grid for the batch)
  rows = [image_prompt(cfg, n // 4) + [21, 22, 23, 24, 25, 26], image_prompt(cfg, n // 4, before=(5,)) + [31, 32, 33]]
  ids, mask = left_pad(rows, pad_id=cfg.pad_token_id)
  target = np.zeros_like(ids)
  target[0, -4:] = 1  # the last tokens of each row are the assistant's
  target[1, -2:] = 1
  batch = pipeline.PretrainBatch(jnp.asarray(ids), jnp.asarray(mask), pixel_values=jnp.asarray(pv),
                                 target_mask=jnp.asarray(target))
  ours, aux = lm_supervised_loss(model, params, batch, tuple(grids[0]))
  hf_model.model.rope_deltas = None
  labels = np.where(target == 1, ids, -100)
  with torch.no_grad():
    out = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pv),
                   image_grid_thw=torch.tensor(np.stack([grids[0], grids[0]])), labels=torch.tensor(labels),
                   mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)))
  assert float(aux["target_tokens"]) == 6
  np.testing.assert_allclose(float(ours), float(out.loss), atol=TOL, rtol=0)
  # data.max_target_len: the logits of the last 4 positions only, the same loss
  windowed, aux = lm_supervised_loss(model, params, batch, tuple(grids[0]), window=4)
  assert float(aux["target_tokens"]) == 6
  np.testing.assert_allclose(float(windowed), float(ours), atol=1e-6, rtol=0)
  # the rest is masked: every token as a label gives another loss
  with torch.no_grad():
    everything = hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          pixel_values=torch.tensor(pv), image_grid_thw=torch.tensor(np.stack([grids[0], grids[0]])),
                          labels=torch.tensor(np.where(mask == 1, ids, -100)),
                          mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64))).loss
  assert abs(float(everything) - float(ours)) > 1e-2


@pytest.fixture(scope="module")
def tok():
  from unirl_jax import tokenizer
  return tokenizer.qwen2_tokenizer()


def chat_record(tmp_path, rec):
  p = tmp_path / "c.jsonl"
  p.write_text(json.dumps({"type": "chat", **rec}) + "\n")
  return records.read_manifest(str(p))[0]


def test_chat_records_target_the_assistant_turns(tmp_path, tok):
  from PIL import Image
  Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "im.png")
  rec = chat_record(tmp_path, {"image": "im.png", "messages": [
      {"role": "user", "content": "How many?"}, {"role": "assistant", "content": "<think>one</think><answer>1</answer>"},
      {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "yes"}]})
  pre = pipeline.Preprocessor(tok, pipeline.ImageSpec(32, 56), 96, 151643)
  ex = pre(rec)
  ids, m, t = ex["input_ids"], ex["attention_mask"], ex["target_mask"]
  assert m[0] == 0 and m[-1] == 1 and not (t & (1 - m)).any()  # left-padded; pads are never targets
  text = tok.decode(ids[m == 1])
  assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                  + "<|image_pad|>" * 4 + "<|vision_end|>How many?<|im_end|>\n<|im_start|>assistant\n"
                  "<think>one</think><answer>1</answer><|im_end|>\n<|im_start|>user\nSure?<|im_end|>\n"
                  "<|im_start|>assistant\nyes<|im_end|>\n")
  # the targets are exactly the two assistant turns and their <|im_end|>, in two runs
  runs = np.flatnonzero(np.diff(np.concatenate([[0], t, [0]])))
  assert len(runs) == 4
  got = [tok.decode(ids[a:b]) for a, b in zip(runs[::2], runs[1::2])]
  assert got == ["<think>one</think><answer>1</answer><|im_end|>", "yes<|im_end|>"]
  assert ex["pixel_values"].shape[0] == 16  # (56 / 14)² patches
  batch = pipeline._stack([ex, ex])
  assert batch.task == "chat" and batch.images is None and batch.pixel_values.shape[0] == 32


@pytest.mark.parametrize("rec,msg", [
    ({"messages": []}, "needs a non-empty list 'messages'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "needs an assistant message"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "needs a user message"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0] must be {'role': one of"),
])
def test_bad_chat_records_are_named(tmp_path, rec, msg):
  with pytest.raises(DataError, match=re.escape(f"c.jsonl:1: a chat record {msg}") if "needs" in msg else
                     re.escape(msg)):
    chat_record(tmp_path, rec)


def test_a_dialogue_longer_than_max_text_len_or_a_target_outside_the_window_is_named(tmp_path, tok):
  rec = chat_record(tmp_path, {"messages": [{"role": "user", "content": "word " * 50},
                                            {"role": "assistant", "content": "ok"}]})
  with pytest.raises(DataError, match=r"c.jsonl:1: the dialogue has \d+ tokens, more than data.max_text_len=32"):
    pipeline.Preprocessor(tok, pipeline.ImageSpec(32, 56), 32, 151643)(rec)
  spec = pipeline.ImageSpec(32, 56)
  assert pipeline.Preprocessor(tok, spec, 96, 151643, max_target_len=3)(rec)["target_mask"][-3:].tolist() == [1, 1, 0]
  with pytest.raises(DataError, match=r"c.jsonl:1: its first target token is 3 from the end, beyond "
                                      r"data.max_target_len=2"):
    pipeline.Preprocessor(tok, spec, 96, 151643, max_target_len=2)(rec)


def test_supervised_stage_trains_the_lm_alone(tmp_path):
  data = str(tmp_path / "q")
  synthetic_questions.write(data, "arithmetic", n_train=32, n_eval=4)
  c = sft_reason_text_tiny.get_config()
  c.data.sources = (f"{data}/sft.jsonl",)
  c.data.batch_size = 4  # the 151,936-way logits of every position dominate the tiny LM's cost
  c.data.max_text_len = 96
  c.optim.warmup_steps = 2
  c.train.total_steps = 12
  c.train.log_every = 1000
  c.mesh.data = 2
  t = Pretrainer(c, str(tmp_path / "w"))
  init = t.params()
  hist = t.run()
  now = t.params()
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert {h["task"] for h in hist} == {"chat"}
  assert np.mean([h["loss"] for h in hist[-3:]]) < 0.9 * np.mean([h["loss"] for h in hist[:3]])
  assert not same(now["lm"]["language_model"], init["lm"]["language_model"])
  for k in ("dit", "connector", "vae", "t2i_queries", "i2i_queries"):
    assert same(now[k], init[k]), k
  assert same(now["lm"]["visual"], init["lm"]["visual"])
