"""Editing GRPO (i2i, cycle consistency) on tiny models: two steps move the trainable params and leave the frozen
ones bit-identical; the forward and reverse trajectories both carry gradient; the reward is the configured
weighted CLIP direction + CLIP image similarity with one advantage per (edit, reconstruction) pair; the prompt's
`<vision_end>` switch."""

import jax
import numpy as np
import pytest

from configs import i2i_tiny
from unirl_jax import clip_fit, rewards
from unirl_jax.data import prompts as prompt_lib
from unirl_jax.data import shape_edits
from unirl_jax.models import clip
from unirl_jax.rewards import clip as clip_rewards
from unirl_jax.rl import update
from unirl_jax.rl.trainer import GRPOTrainer


def config(data: str, clip_dir: str, steps: int = 2):
  c = i2i_tiny.get_config()
  c.model.init = "preset:tiny_qwen_vocab"
  c.prompt_file = f"{data}/train_edits.jsonl"
  c.edit.kinds = ()
  c.reward = "clip_direction:4,clip_image_similarity:1"  # the original's weights (the hand computation below)
  c.train.trainable = ("dit", "connector", "i2i_queries")  # the original's: the connector moves too
  c.clip_rewards = {"clip_direction": clip_dir, "clip_image_similarity": clip_dir}
  c.train.total_steps = steps
  c.prompts_per_step = 2
  c.group_size = 2
  c.dm.steps = 2
  c.progress = False
  c.train.checkpoint_every = 100
  c.train.sample_every = 1
  c.mesh.data = 1
  return c


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("i2i")
  data = str(root / "edits")
  shape_edits.write(data, n_train=8, n_eval=2, size=32, seed=0)
  cfg = clip_fit.shapes_config()
  tok = clip_fit.word_tokenizer(clip_fit.shapes_vocabulary(), cfg.text)
  clip_dir = clip_fit.save(str(root / "clip"), cfg, clip.init_params(cfg, jax.random.PRNGKey(0)), tok)
  return data, clip_dir, root


@pytest.fixture(scope="module")
def run(files):
  data, clip_dir, root = files
  t = GRPOTrainer(config(data, clip_dir), str(root / "run"))
  init = t.params()
  history = t.run()
  return t, init, history


def same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_steps_move_the_trainable_params_and_nothing_frozen(run):
  t, init, history = run
  now = t.params()
  for k in ("lm", "vae", "t2i_queries"):
    assert same(now[k], init[k]), k
  for k in ("dit", "connector", "i2i_queries"):
    assert not same(now[k], init[k]), k
  assert not same(now["dit"]["ref_linear"], init["dit"]["ref_linear"])
  for r in history:
    assert {"reward_clip_direction", "reward_clip_image_similarity", "policy_loss", "cycle_policy_loss",
            "cycle_kl", "cycle_ratio_min"} <= set(r)
    assert np.isfinite(r["loss"])


def test_reward_is_the_weighted_clip_sum_with_one_advantage_per_pair(run, files):
  """The rewards of a rollout against CLIP computed here on (source, edit, captions) and (reconstruction,
  source); the total 4·direction + 1·similarity, its group advantages by hand, shared by both trajectories."""
  t, _, _ = run
  roll = t.task.rollout(3, jax.random.PRNGKey(7))
  inp = roll.rewards
  g = t.config.group_size
  assert inp.reconstructions is not None and inp.sources.shape == inp.images.shape
  recs = t.prompts.step_records(3)
  for p, r in enumerate(recs):  # a group shares one source and its captions
    assert all(m["caption"] == r.metadata["caption"] for m in inp.metadata[p * g:(p + 1) * g])
    assert (inp.sources[p * g:(p + 1) * g] == inp.sources[p * g]).all()
  total, parts = rewards.score(t.config.reward, inp, t.reward_fns)
  model, params = clip.load(files[1])
  scorer = clip_rewards.Scorer(model, params)
  pre = clip_rewards.Preprocessor(files[1], model.config.text.max_position_embeddings)
  src_ids, src_mask = pre.text([m["caption"] for m in inp.metadata])
  tgt_ids, tgt_mask = pre.text([m["target_caption"] for m in inp.metadata])
  direction = np.asarray(scorer.direction(pre.pixels(inp.sources), pre.pixels(inp.images), src_ids, src_mask,
                                          tgt_ids, tgt_mask))
  similarity = np.asarray(scorer.image_similarity(pre.pixels(inp.reconstructions), pre.pixels(inp.sources)))
  np.testing.assert_allclose(parts["clip_direction"], direction, atol=1e-5)
  np.testing.assert_allclose(parts["clip_image_similarity"], similarity, atol=1e-5)
  hand = 4 * direction + 1 * similarity
  np.testing.assert_allclose(total, hand, atol=1e-5)
  grp = hand.reshape(-1, g)
  adv = ((grp - grp.mean(1, keepdims=True)) / (grp.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)
  np.testing.assert_allclose(t.advantages(total), np.clip(adv, -5, 5), atol=1e-4)
  exp = roll.experience
  assert exp.dm.trajectory.latents.shape == exp.cycle.trajectory.latents.shape  # one reconstruction per edit


def test_forward_and_reverse_trajectories_both_carry_gradient(run):
  """The step's loss is the forward part + the cycle part (each policy term + beta·KL); at the first update
  (policy = reference, so no KL gradient) zeroing one part's advantages leaves the other part's gradient:
  both are nonzero and differ, so each trajectory moves the params."""
  t, _, history = run
  b = t.config.dm.beta
  for r in history:
    parts = r["policy_loss"] + b * r["kl"] + r["cycle_policy_loss"] + b * r["cycle_kl"]
    np.testing.assert_allclose(r["loss"], parts, rtol=1e-5, atol=1e-9)
  roll = t.task.rollout(1, jax.random.PRNGKey(11))
  exp = roll.experience.replace(advantages=t.put_rows(np.array([1.0, -1.0, 0.5, -0.5], np.float32)))
  fwd, cyc = t.parts
  assert (cyc.field, cyc.task, cyc.grid) == ("cycle", "i2i", fwd.grid)
  # One compile: the forward part's gradient on the forward rows, then on the cycle rows in their place (the
  # cycle part is the same loss reading `exp.cycle`).
  fn = jax.jit(lambda tr, fr, e: update.grpo_grads((fwd,), tr, fr, tr, e)[1])
  flat = [np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(fn(t.ref_trainable, t.frozen, e)))])
          for e in (exp, exp.replace(dm=exp.cycle))]
  for g in flat:
    assert np.abs(g).max() > 0
  assert np.abs(flat[0] - flat[1]).max() > 1e-3 * max(np.abs(flat[0]).max(), np.abs(flat[1]).max())


def test_edit_prompt_vision_end_switch(run):
  t, _, _ = run
  ids = t.tok(prompt_lib.edit("make it red"), add_special_tokens=False)["input_ids"]
  lit = t.tok(prompt_lib.edit("make it red", literal_vision_end=True), add_special_tokens=False)["input_ids"]
  end = t.tok.convert_tokens_to_ids("<|vision_end|>")
  assert end in ids and end not in lit
  assert "<vision_end>\nPlease edit the image" in t.tok.decode(lit)


def test_sample_grid_shows_source_edits_and_reconstructions(run):
  t, _, _ = run
  roll = t.task.rollout(2, jax.random.PRNGKey(1))
  images, cols = t.task.sample_grid(roll)
  g = t.config.group_size
  assert cols == g + 1 and len(images) == 2 * 2 * (g + 1)
  assert (images[0] == roll.rewards.sources[0]).all() and (images[1:g + 1] == roll.rewards.images[:g]).all()
  assert (images[g + 2:2 * g + 2] == roll.rewards.reconstructions[:g]).all()


def test_split_advantage_gives_the_reconstruction_the_cycle_terms_own(run, files):
  """edit.advantage="split": the edit rows keep the total's advantage, the reconstruction rows get the group
  advantage of the cycle term alone, and the cycle loss reads them (its gradient equals the shared-advantage
  loss's with those advantages in the shared slot)."""
  import dataclasses
  from types import SimpleNamespace

  from unirl_jax.scenarios.i2i import Editing
  t, _, _ = run
  c = t.config
  split = dataclasses.replace(c, edit=dataclasses.replace(c.edit, advantage="split"))
  roll = t.task.rollout(5, jax.random.PRNGKey(3))
  total, parts = rewards.score(c.reward, roll.rewards, t.reward_fns)
  exp = roll.experience.replace(advantages=t.put_rows(t.advantages(total)))
  assert Editing.with_advantages(t.task, exp, parts) is exp  # "pair" (the default) changes nothing
  engine = SimpleNamespace(config=split, advantages=t.advantages, put_rows=t.put_rows)
  got = Editing.with_advantages(SimpleNamespace(engine=engine), exp, parts)
  own = t.advantages(parts["clip_image_similarity"])
  np.testing.assert_allclose(np.asarray(got.cycle.advantages), own, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got.advantages), np.asarray(exp.advantages))
  assert not np.allclose(own, np.asarray(exp.advantages), atol=1e-3)
  # A term scored at weight 0 only for this (clip_cycle_gain) gives its own unweighted group advantage.
  gain = clip_rewards.reward("clip_cycle_gain", files[1])(roll.rewards)
  np.testing.assert_allclose(gain, parts["clip_image_similarity"] - clip_rewards.reward(
      "clip_image_similarity", files[1])(dataclasses.replace(roll.rewards, reconstructions=roll.rewards.images)),
                             atol=1e-6)
  by_gain = dataclasses.replace(split, edit=dataclasses.replace(split.edit, cycle_reward="clip_cycle_gain"))
  engine = SimpleNamespace(config=by_gain, advantages=t.advantages, put_rows=t.put_rows)
  got_gain = Editing.with_advantages(SimpleNamespace(engine=engine), exp, {**parts, "clip_cycle_gain": gain})
  np.testing.assert_allclose(np.asarray(got_gain.cycle.advantages), t.advantages(gain), atol=1e-6)
  _, cyc = t.parts
  fn = jax.jit(lambda tr, fr, e: update.grpo_grads((cyc,), tr, fr, tr, e)[1])
  flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(g))])
  a = flat(fn(t.ref_trainable, t.frozen, got))
  b = flat(fn(t.ref_trainable, t.frozen, exp.replace(advantages=got.cycle.advantages)))
  assert np.abs(a).max() > 0
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * np.abs(b).max())
  with pytest.raises(Exception, match="edit.advantage"):
    dataclasses.replace(c.edit, advantage="both")
