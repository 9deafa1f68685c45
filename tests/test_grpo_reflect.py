"""Reflective generation (task "reflect") on the tiny model: two GRPO steps move every trained group and leave the
frozen ones bit-identical; a rollout judged "yes" makes no image 2 for the rewards and no DM loss for it (its
advantage does not reach the revision part); the judge sees image 1; the reward components against hand
computations."""

import json
import os

import jax
import numpy as np
import pytest

from configs import reflect_tiny
from unirl_jax import rewards, train_state
from unirl_jax.data import shapes
from unirl_jax.data.pipeline import vit_patches
from unirl_jax.rewards import RewardInputs, reflection
from unirl_jax.rl.trainer import GRPOTrainer
from unirl_jax.scenarios import reflect

SAME = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
YES = "<think>I see a red circle.</think><judge>yes</judge>"
NO = "<think>I see a red circle.</think><judge>no</judge><answer>a blue square in the centre</answer>"


def config(prompt_file):
  c = reflect_tiny.get_config()
  c.model.init = "preset:tiny_qwen_vocab"
  c.model.vae_fit_steps = 0
  c.prompt_file = prompt_file
  c.reward = "reflect_final:1,reflect_judge:0.5,reflect_improve:0.5,reflect_format:0.25"
  c.reflect.advantage = "shared"
  c.prompts_per_step = 2
  c.group_size = 2
  c.dm.steps = 2
  c.lm.max_new_tokens = 32
  c.reflect.vit_size = 56
  c.optim.lr = 1e-3
  c.train.total_steps = 2
  c.train.checkpoint_every = 100
  c.train.sample_every = 1
  c.progress = False
  c.mesh.data = 1
  return c


class ForcedJudge:
  """Stands in for the sampler: row i completes with texts[i % len(texts)] (then EOS and pads), so the test
  decides which rollouts are judged "yes" and which "no"; the loss then trains those tokens as sampled ones."""

  def __init__(self, tok, texts, n, eos, pad):
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    assert max(map(len, rows)) <= n
    self.rows = [r + [pad] * (n - len(r)) for r in rows]

  def __call__(self, params, ids, mask, pv, grids, rng):
    b = ids.shape[0]
    return {"tokens": jax.numpy.asarray([self.rows[i % len(self.rows)] for i in range(b)], jax.numpy.int32)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  d = tmp_path_factory.mktemp("reflect")
  prompt_file = str(d / "prompts.jsonl")
  with open(prompt_file, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in shapes.prompts(6, 0))
  wd = str(d / "w")
  t = GRPOTrainer(config(prompt_file), wd)
  lmc = t.model.config.lm
  t.task.sampler = ForcedJudge(t.tok, [YES, NO], 32, lmc.eos_token_id[0], lmc.pad_token_id)
  init = t.params()
  history = t.run()
  return t, init, history, wd


def test_two_steps_move_every_trained_group_and_nothing_else(run):
  t, init, history, wd = run
  now = t.params()
  for k in ("dit", "connector", "t2i_queries"):
    assert not SAME(now[k], init[k]), k
  assert not SAME(now["lm"]["language_model"], init["lm"]["language_model"])
  for k in ("vae", "i2i_queries"):
    assert SAME(now[k], init[k]), k
  assert SAME(now["lm"]["visual"], init["lm"]["visual"])
  for r in history:
    assert {"reward_reflect_final", "reward_reflect_judge", "reward_reflect_improve", "reward_reflect_format",
            "lm_kl", "revision_policy_loss", "policy_loss"} <= set(r)
    assert r["reward_reflect_format"] == 1.0  # both forced completions follow the format
  sample = json.load(open(os.path.join(wd, "samples", "step_000001.json")))
  assert sample["revised"] == [False, True, False, True]
  assert sample["second_prompts"][1] == "a blue square in the centre"
  assert sample["second_prompts"][0] == sample["prompts"][0]
  assert os.path.exists(os.path.join(wd, "samples", "step_000001.png"))


def test_a_yes_makes_no_image_2_and_no_revision_loss(run):
  t, *_ = run
  roll = t.task.rollout(3, jax.random.PRNGKey(2))
  r = roll.rewards
  assert r.revised.tolist() == [False, True, False, True]
  assert r.judgements.tolist() == [reflection.YES, reflection.NO] * 2
  np.testing.assert_array_equal(r.images[0], r.first_images[0])  # the final image of a "yes" is image 1
  assert not np.array_equal(r.images[1], r.first_images[1])
  exp = roll.experience
  from PIL import Image
  pv = vit_patches([Image.fromarray(x) for x in r.first_images], t.task.spec, t.task.vit)
  np.testing.assert_array_equal(np.asarray(exp.lm.pixel_values), pv)  # the judge sees each row's image 1
  revision = next(p for p in t.parts if getattr(p, "field", None) == "revision")
  ref = t.params()
  tr = t.state["trainable"]

  grad_fn = jax.jit(jax.grad(lambda tr, adv: revision.loss_sum(train_state.merge(tr, t.frozen), ref,
                                                                 exp.replace(advantages=adv))[0]))
  grads = lambda adv: jax.device_get(grad_fn(tr, jax.numpy.asarray(adv, jax.numpy.float32)))

  base = np.array([0.5, -1.0, 0.25, 1.0])
  g0 = grads(base)
  for i in range(4):
    changed = base.copy()
    changed[i] = 0.0
    moved = not SAME(grads(changed), g0)
    assert moved == bool(r.revised[i]), i  # only the "no" rows' advantages reach the revision loss
  assert float(revision.denominator(exp)) == 2 * float(np.sum(exp.schedule.sde_mask))


def test_split_advantage_gives_each_image_its_own_scores_advantage(run):
  """reflect.advantage="split": the judge's tokens keep the total's advantage, image 1's trajectory gets the group
  advantage of reflect_first, image 2's that of reflect_final, and each DM loss reads its own (its gradient equals
  the loss's with those advantages in the shared slot)."""
  import dataclasses
  from types import SimpleNamespace

  from unirl_jax.rl import update
  from unirl_jax.scenarios.reflect import Reflection
  t, *_ = run
  c = t.config
  roll = t.task.rollout(4, jax.random.PRNGKey(5))
  total = np.array([0.5, 1.5, 0.25, 1.0], np.float32)
  parts = {"reflect_first": np.array([0.0, 1.0, 0.5, 0.25], np.float32),
           "reflect_final": np.array([0.5, 0.0, 1.0, 0.75], np.float32)}
  exp = roll.experience.replace(advantages=t.put_rows(t.advantages(total)))
  assert Reflection.with_advantages(t.task, exp, parts) is exp  # "shared" (the default) changes nothing
  split = dataclasses.replace(c, reflect=dataclasses.replace(c.reflect, advantage="split"))
  engine = SimpleNamespace(config=split, advantages=t.advantages, put_rows=t.put_rows)
  got = Reflection.with_advantages(SimpleNamespace(engine=engine), exp, parts)
  np.testing.assert_allclose(np.asarray(got.dm.advantages), t.advantages(parts["reflect_first"]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(got.revision.advantages), t.advantages(parts["reflect_final"]), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got.advantages), np.asarray(exp.advantages))
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(g))])
  for part in (t.parts[0], t.parts[-1]):  # image 1's DM loss, image 2's (revision) DM loss
    own = got.dm.advantages if part is t.parts[0] else got.revision.advantages
    fn = jax.jit(lambda tr, fr, e: update.grpo_grads((part,), tr, fr, tr, e)[1])
    a = flat(fn(t.ref_trainable, t.frozen, got))
    b = flat(fn(t.ref_trainable, t.frozen, exp.replace(advantages=own)))
    assert np.abs(a).max() > 0
    assert not np.allclose(a, flat(fn(t.ref_trainable, t.frozen, exp)), atol=1e-3 * np.abs(a).max())
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * np.abs(b).max())
  with pytest.raises(Exception, match="reflect.advantage"):
    dataclasses.replace(c.reflect, advantage="both")


def test_split_advantage_needs_its_rewards_in_the_spec(tmp_path):
  with open(tmp_path / "p.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in shapes.prompts(2, 0))
  c = config(str(tmp_path / "p.jsonl"))
  c.reflect.advantage = "split"
  with pytest.raises(ValueError, match=r"reflect.advantage='split' needs the rewards \['reflect_first'\]"):
    GRPOTrainer(c, str(tmp_path / "w"))


def test_the_judge_prompt_holds_the_prompt_and_image_1s_tokens():
  from unirl_jax.data.pipeline import ImageSpec
  spec = ImageSpec(32, 56)
  p = reflect.judge_prompts(["a photo of a circle"], spec)[0]
  assert p.count("<|image_pad|>") == spec.vit_tokens == 4
  assert "<|vision_end|>The image was generated for the prompt: a photo of a circle. Does it" in p


def test_reward_components_by_hand():
  scores = {0: 1.0, 1: 0.25, 2: 0.5, 3: 1.0, 4: 0.0}  # the verifier: a score per image, keyed by its pixel value
  verifier = lambda inputs: np.asarray([scores[int(x[0, 0, 0])] for x in inputs.images], np.float32)
  fns = reflection.make(verifier, threshold=1.0)
  img = lambda k: np.full((2, 2, 3), k, np.uint8)
  first = np.stack([img(0), img(1), img(1), img(2), img(0)])  # v1: 1, .25, .25, .5, 1
  final = np.stack([img(0), img(3), img(1), img(4), img(0)])  # rows 1 and 3 revised: v2 1.0 and 0.0
  judgements = np.array([reflection.YES, reflection.NO, reflection.YES, reflection.NO, reflection.UNPARSED])
  revised = judgements == reflection.NO
  inputs = RewardInputs(final, ["p"] * 5, [YES, NO, YES, NO, "no tags"], first_images=first, judgements=judgements,
                        revised=revised)
  np.testing.assert_allclose(fns["reflect_final"](inputs), [1.0, 1.0, 0.25, 0.0, 1.0])
  np.testing.assert_allclose(fns["reflect_first"](inputs), [1.0, 0.25, 0.25, 0.5, 1.0])
  np.testing.assert_allclose(fns["reflect_judge"](inputs), [1.0, 1.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(fns["reflect_improve"](inputs), [0.0, 0.75, 0.0, -0.5, 0.0])
  np.testing.assert_allclose(fns["reflect_passed"](inputs), [1, 0, 0, 0, 1])
  np.testing.assert_allclose(fns["reflect_says_yes"](inputs), [1, 0, 1, 0, 0])
  total, parts = rewards.score("reflect_final:1,reflect_judge:0.5,reflect_improve:0.5,reflect_format:0.25",
                               inputs, fns)
  np.testing.assert_allclose(parts["reflect_format"], [1, 1, 1, 1, 0])
  np.testing.assert_allclose(total, [1.75, 2.125, 0.5, 0.5, 1.0], rtol=1e-6)


@pytest.mark.parametrize("text,want", [
    (YES, (reflection.YES, None)),
    (NO, (reflection.NO, "a blue square in the centre")),
    ("<judge> NO </judge>", (reflection.NO, None)),
    ("<answer>x</answer><judge>no</judge>", (reflection.NO, None)),  # a revision must follow the judgement
    ("<think>hmm</think>", (reflection.UNPARSED, None)),
])
def test_parse(text, want):
  assert reflection.parse(text) == want


@pytest.mark.parametrize("text,ok", [
    (YES, 1.0), (NO, 1.0),
    ("<think>a</think><judge>yes</judge><answer>b</answer>", 0.0),  # a revision after a yes
    ("<think>a</think><judge>no</judge>", 0.0),  # a no without one
    ("<judge>yes</judge>", 0.0),
])
def test_format(text, ok):
  assert reflection.reflect_format(RewardInputs(None, ["p"], [text]))[0] == ok


def test_second_prompts_fall_back_to_the_prompt():
  texts, j, revised = reflect.second_prompts(["p1", "p2", "p3"], [YES, "<judge>no</judge>", NO])
  assert texts == ["p1", "p2", "a blue square in the centre"]
  assert j.tolist() == [reflection.YES, reflection.NO, reflection.NO] and revised.tolist() == [False, True, True]
