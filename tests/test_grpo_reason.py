"""Reasoning GRPO (task "reason") on the tiny model: two steps of text and of image questions move the LM decoder
and leave everything else out of the optimizer state; rewards see the decoded completions; a group whose rewards
are all equal gets advantage exactly 0; the image rows' log-probs go through the vision tower."""

import json
import os

import jax
import numpy as np
import pytest

from configs import reason_mm_tiny, reason_text_tiny
from unirl_jax import rewards
from unirl_jax.data import synthetic_questions
from unirl_jax.data.records import DataError
from unirl_jax.rl.advantages import group_advantages
from unirl_jax.rl.lm import completion_log_probs
from unirl_jax.rl.trainer import GRPOTrainer



@rewards.register("test_completion_chars")
def completion_chars(inputs):
  """Varies within every group of a random LM's completions (format and accuracy are ~always 0 there)."""
  return np.asarray([len(c) / 10 for c in inputs.completions], np.float32)


SAME = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def config(kind, data, steps=2):
  c = (reason_text_tiny if kind == "arithmetic" else reason_mm_tiny).get_config()
  c.prompt_file = os.path.join(data, "train_questions.jsonl")
  c.model.init = "preset:tiny_qwen_vocab"
  c.reward = "think_format:0.5,accuracy:1,test_completion_chars:1"
  c.train.total_steps = steps
  c.prompts_per_step = 2
  c.group_size = 2
  c.lm.max_new_tokens = 6
  c.reason.vit_size = 28
  c.train.trainable = ("lm/language_model",)  # the vision tower frozen: it must stay bit-identical
  c.optim.lr = 1e-3
  c.progress = False
  c.train.checkpoint_every = 100
  c.train.sample_every = 1
  c.mesh.data = 1
  return c


@pytest.fixture(scope="module", params=synthetic_questions.KINDS)
def run(request, tmp_path_factory):
  kind = request.param
  data = str(tmp_path_factory.mktemp(f"q_{kind}"))
  synthetic_questions.write(data, kind, n_train=8, n_eval=4, size=28)
  wd = str(tmp_path_factory.mktemp(f"reason_{kind}"))
  t = GRPOTrainer(config(kind, data), wd)
  init = t.params()
  history = t.run()
  return kind, t, init, history, wd, data


def test_two_steps_move_only_the_lm_decoder(run):
  kind, t, init, history, wd, _ = run
  assert set(t.state["trainable"]) == {"lm"} and set(t.state["trainable"]["lm"]) == {"language_model"}
  opt_leaves = {x.shape for x in jax.tree.leaves(t.state["opt_state"])}
  assert all(x.shape in opt_leaves for x in jax.tree.leaves(t.state["trainable"]))
  n_opt = sum(x.size for x in jax.tree.leaves(t.state["opt_state"]) if x.ndim)
  n_lm = sum(x.size for x in jax.tree.leaves(init["lm"]["language_model"]))
  assert n_opt == 2 * n_lm  # Adam's two moments of the decoder and nothing else
  now = t.params()
  assert not SAME(now["lm"]["language_model"], init["lm"]["language_model"])
  for k in ("dit", "connector", "vae", "t2i_queries", "i2i_queries"):
    assert SAME(now[k], init[k]), k
  assert SAME(now["lm"]["visual"], init["lm"]["visual"])
  assert len(history) == 2 and all({"reward_think_format", "reward_accuracy", "lm_kl", "completion_tokens"}
                                   <= set(r) for r in history)
  assert history[0]["adv_abs_max"] > 0
  assert history[0]["lm_kl"] == 0.0  # the first update's policy is the reference
  sample = json.load(open(os.path.join(wd, "samples", "step_000001.json")))
  assert len(sample["completions"]) == 4 and sample["questions"] == t.prompts.captions(1)
  assert not os.path.exists(os.path.join(wd, "samples", "step_000001.png"))  # no images


def test_rewards_see_the_decoded_completions_and_the_answers(run):
  kind, t, *_ = run
  roll = t.task.rollout(1, jax.random.PRNGKey(5))
  r = roll.rewards
  assert r.images is None and len(r) == 4 and r.completion_budget == 6
  toks, mask = np.asarray(roll.experience.lm.tokens), np.asarray(roll.experience.lm.mask)
  for i in range(4):
    n = int(mask[i].sum())
    assert r.completion_lengths[i] == n
    assert r.completions[i] == t.tok.decode(toks[i, :n], skip_special_tokens=True)
  recs = t.prompts.step_records(1)
  assert [m["answer"] for m in r.metadata] == [x.metadata["answer"] for x in recs for _ in range(2)]
  assert all("image" not in m for m in r.metadata)
  assert (roll.experience.lm.pixel_values is None) == (kind == "arithmetic")
  total, _ = rewards.score(t.config.reward, r)
  assert total.shape == (4,)


@pytest.mark.parametrize("run", ["shapes"], indirect=True)
def test_image_rows_log_probs_use_the_image(run):
  kind, t, *_ = run
  roll = t.task.rollout(1, jax.random.PRNGKey(5))
  c = roll.experience.lm
  lm_params = t.params()["lm"]
  pv = c.pixel_values.reshape(-1, c.pixel_values.shape[-1])
  grid = (t.task.grid,) * c.tokens.shape[0]
  with_image = completion_log_probs(t.model.lm, lm_params, c.prompt_ids, c.prompt_mask, c.tokens, c.mask, pv, grid)
  other = completion_log_probs(t.model.lm, lm_params, c.prompt_ids, c.prompt_mask, c.tokens, c.mask, pv[::-1],
                               grid)
  m = np.asarray(c.mask) > 0
  assert np.isfinite(np.asarray(with_image)[m]).all()
  assert np.abs(np.asarray(with_image) - np.asarray(other))[m].max() > 1e-4  # the image matters


def test_equal_rewards_give_zero_advantage_exactly():
  r = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5, 0.5], np.float32)
  a = np.asarray(group_advantages(r, 4, "unbiased", 1e-4, 5.0))
  assert (a[:4] == 0.0).all() and (a[:4].view(np.uint32) == 0).all() and np.abs(a[4:]).max() > 0


def test_mixed_image_and_text_questions_and_dm_training_are_refused(tmp_path):
  data = str(tmp_path)
  synthetic_questions.write(data, "shapes", n_train=4, n_eval=2, size=28)
  rows = [json.loads(x) for x in open(os.path.join(data, "train_questions.jsonl"))]
  del rows[2]["image"]
  with open(os.path.join(data, "mixed.jsonl"), "w") as f:
    f.writelines(json.dumps(x) + "\n" for x in rows)
  c = config("shapes", data)
  c.prompt_file = os.path.join(data, "mixed.jsonl")
  with pytest.raises(DataError, match="mixed.jsonl:3: no image, unlike the file's first record"):
    GRPOTrainer(c, str(tmp_path / "w"))
  c = config("shapes", data)
  c.train.trainable = ("lm/language_model", "dit")
  with pytest.raises(ValueError, match="task reason trains the LM only"):
    GRPOTrainer(c, str(tmp_path / "w2"))


@pytest.mark.parametrize("run", ["shapes"], indirect=True)  # image questions: the longer path
def test_reasoning_eval_scores_its_own_completions(run, tmp_path, capsys):
  from unirl_jax import eval as eval_lib
  kind, t, _, _, wd, data = run
  out = str(tmp_path / "ev")
  argv = ["--benchmark", "reasoning", "--ckpt", wd, "--data", f"{data}/eval_questions.jsonl", "--out", out,
          "--seeds", "2", "--max-new-tokens", "6", "--batch", "4", "--vit-size", "28"]
  assert eval_lib.main(argv) == 0
  res = json.load(open(os.path.join(out, "results.json")))
  rows = [json.loads(x) for x in open(os.path.join(out, "completions.jsonl"))]
  assert res["questions"] == len(rows) == 4 and res["k"] == 2
  # the summary is the rewards of the saved completions
  x = lambda texts, k: rewards.RewardInputs(None, ["q"] * len(texts), texts,
                                            [{"answer": r["answer"]} for r in rows for _ in range(k)])
  greedy = [r["greedy"] for r in rows]
  samples = [s for r in rows for s in r["samples"]]
  assert res["overall"]["pass@1"] == pytest.approx(rewards.get("accuracy")(x(greedy, 1)).mean())
  assert res["overall"]["format@k"] == pytest.approx(rewards.get("think_format")(x(samples, 2)).mean())
  assert sum(v["n"] for v in res["kinds"].values()) == 4
  # greedy is deterministic: a second run writes the same completions
  i = argv.index("--out")
  assert eval_lib.main(argv[:i] + ["--out", out + "2"] + argv[i + 2:]) == 0
  assert [json.loads(x)["greedy"] for x in open(os.path.join(out + "2", "completions.jsonl"))] == greedy
  assert eval_lib.main(argv + ["--temperature", "0"]) == 2
  assert "--temperature must be > 0" in capsys.readouterr().err
