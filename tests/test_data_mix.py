"""Mixing tasks in pretraining (the supervised cold start): each batch holds every task's share of rows
(data.mix='rows') or one task, interleaved by share (data.mix='batches'); both resume where they stopped; the
mixed step's loss is the sum of its parts and trains the DiT and the LM together."""

import collections

import jax
import numpy as np
import pytest

from configs import pretrain_tiny
from unirl_jax.data import pipeline, records, synthetic, synthetic_questions
from unirl_jax.pretrain import Pretrainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = tmp_path_factory.mktemp("mix")
  t2i = synthetic.generate(str(d / "shapes"), n=48, size=32, edit_fraction=0.0)
  synthetic_questions.write(str(d / "q"), "arithmetic", n_train=16, n_eval=2)
  return t2i, str(d / "q" / "sft.jsonl")


@pytest.fixture(scope="module")
def pre():
  from unirl_jax import tokenizer
  return pipeline.Preprocessor(tokenizer.qwen2_tokenizer(), pipeline.ImageSpec(32, 56), 96, 151643)


def read(data):
  recs, _ = records.read_sources(data)
  return recs


def key(rec):
  return rec.caption if isinstance(rec, records.T2IRecord) else rec.messages[0][1]


def test_rows_mix_holds_each_share_every_batch_and_each_record_once_a_pass(data, pre):
  recs = read(data)
  ds = pipeline.make_dataset(recs, pre, 8, seed=3, weights={"t2i": 0.75, "chat": 0.25}, mix="rows")
  t2i_texts = collections.Counter()
  chat_texts = collections.Counter()
  for i in range(8):  # one pass: 48 t2i records at 6 a batch, 16 chat at 2
    b = ds[i]
    assert set(b) == {"t2i", "chat"}
    assert b["t2i"].task == "t2i" and b["t2i"].input_ids.shape[0] == 6 and b["t2i"].images.shape == (6, 32, 32, 3)
    assert b["chat"].task == "chat" and b["chat"].input_ids.shape[0] == 2
    t2i_texts.update(pre.tok.batch_decode(b["t2i"].input_ids, skip_special_tokens=True))
    chat_texts.update(pre.tok.batch_decode(b["chat"].input_ids, skip_special_tokens=True))
  assert sum(t2i_texts.values()) == 48 and sum(chat_texts.values()) == 16
  # a pass reads every record once: every chat text once (they are distinct), each caption as often as it occurs
  assert len(chat_texts) == 16 and max(chat_texts.values()) == 1
  want = collections.Counter(pre.tok.decode(pre(r)["input_ids"], skip_special_tokens=True)
                             for r in recs if isinstance(r, records.T2IRecord))
  assert t2i_texts == want


def test_batches_mix_follows_the_weights(data, pre):
  ds = pipeline.make_dataset(read(data), pre, 4, seed=0, weights={"t2i": 0.75, "chat": 0.25}, mix="batches")
  tasks = [ds[i].task for i in range(400)]
  assert abs(tasks.count("chat") / 400 - 0.25) < 0.01, tasks.count("chat")


@pytest.mark.parametrize("mix", ["rows", "batches"])
def test_a_resumed_iterator_reads_what_the_unbroken_one_does(data, pre, mix):
  ds = pipeline.make_dataset(read(data), pre, 4, seed=1, weights={"t2i": 0.5, "chat": 0.5}, mix=mix)
  flat = lambda b: [np.asarray(x) for x in jax.tree.leaves(b)]
  unbroken = [flat(b) for _, b in zip(range(7), iter(ds.to_iter_dataset()))]
  it = iter(ds.to_iter_dataset())
  for _ in range(4):
    next(it)
  state = it.get_state()
  it2 = iter(ds.to_iter_dataset())
  it2.set_state(state)
  for want in unbroken[4:]:
    got = flat(next(it2))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


def test_shares_that_give_a_fraction_of_a_row_are_named(data, pre):
  with pytest.raises(ValueError, match=r"data.mix='rows': the t2i share 0.7 of data.batch_size 8 is 5.6 rows; set data.task_weights"):
    pipeline.make_dataset(read(data), pre, 8, seed=0, weights={"t2i": 0.7, "chat": 0.3}, mix="rows")
  with pytest.raises(ValueError, match="data.mix 'cols' not one of"):
    pipeline.make_dataset(read(data), pre, 8, seed=0, mix="cols")


def test_a_mixed_step_sums_its_parts_and_trains_the_dit_and_the_lm(tmp_path, data):
  c = pretrain_tiny.get_config()
  c.data.sources = data
  c.data.mix = "rows"
  c.data.task_weights = {"t2i": 0.5, "chat": 0.5}
  c.data.batch_size = 4
  c.data.max_text_len = 96
  c.data.max_target_len = 24
  c.train.total_steps = 2
  c.train.log_every = 1000
  c.train.trainable = ("dit", "connector", "t2i_queries", "lm/language_model")
  c.mesh.data = 2
  t = Pretrainer(c, str(tmp_path / "w"))
  init = t.params()
  hist = t.run()
  now = t.params()
  for h in hist:
    assert h["task"] == "t2i+chat"
    np.testing.assert_allclose(h["loss"], h["loss_t2i"] + h["loss_chat"], rtol=1e-6)
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for k in ("dit", "connector", "t2i_queries"):
    assert not same(now[k], init[k]), k
  assert not same(now["lm"]["language_model"], init["lm"]["language_model"])
  for k in ("vae", "i2i_queries"):
    assert same(now[k], init[k]), k
  assert same(now["lm"]["visual"], init["lm"]["visual"])
