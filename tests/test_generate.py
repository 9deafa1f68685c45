"""`python -m unirl_jax.generate`: grids, editing, determinism, errors, and equality with a hand composition."""


import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from unirl_jax import generate
from unirl_jax.chat import demo_config, gradient_image
from unirl_jax.models import unified

PROMPTS = ["a red cube on a table", "two dogs"]
STEPS = 3


def random_params(model, seed=0):
  """"Trained-looking" params from the shapes alone (no init compile): every leaf random, norms around 1."""
  rs = np.random.RandomState(seed)

  def draw(path, s):
    n = rs.randn(*s.shape).astype(np.float32)
    name = path[-1].key
    if name == "scale":
      return 1 + 0.1 * n
    if name == "kernel":
      return n / np.sqrt(np.prod(s.shape[:-1]))
    return n if name in ("embedding", "t2i_queries", "i2i_queries") else 0.1 * n

  return jax.tree_util.tree_map_with_path(draw, model.abstract_params())


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """A tiny unified checkpoint whose LM has the real vocabulary and special ids (the offline tokenizer works)."""
  cfg = unified.tiny().replace(lm=demo_config())
  return unified.save(str(tmp_path_factory.mktemp("gen") / "ckpt"), cfg, random_params(unified.UnifiedModel(cfg)))


def run(ckpt, out, *flags):
  return generate.main(["--ckpt", ckpt, "--out", str(out), "--steps", str(STEPS), *flags])


@pytest.fixture(scope="module")
def t2i_grid(ckpt, tmp_path_factory):
  out = tmp_path_factory.mktemp("t2i") / "grid.png"
  assert run(ckpt, out, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seeds", "2", "--seed", "5") == 0
  return out


def tiles(path, size=32):
  a = np.asarray(Image.open(path))
  return {(r, c): a[r * size:(r + 1) * size, c * size:(c + 1) * size]
          for r in range(a.shape[0] // size) for c in range(a.shape[1] // size)}


def test_t2i_grid_is_prompts_by_seeds(t2i_grid):
  img = Image.open(t2i_grid)
  assert img.size == (64, 64) and img.mode == "RGB"
  t = tiles(t2i_grid)
  for a, b in [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((1, 0), (1, 1))]:
    assert np.abs(t[a].astype(int) - t[b].astype(int)).max() > 0, (a, b)


def test_same_seed_same_image_and_a_run_workdir_finds_its_final_params(ckpt, t2i_grid, tmp_path, capsys):
  """--ckpt takes a training run's workdir too (its final/ export)."""
  import shutil
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  assert run(str(workdir), tmp_path / "x.png", "--prompt", "a") == 2
  assert "has not completed" in capsys.readouterr().err
  shutil.copytree(ckpt, workdir / "final")
  out = tmp_path / "again.png"
  assert run(str(workdir), out, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seeds", "2", "--seed", "5") == 0
  np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(t2i_grid)))


def test_t2i_equals_hand_composition(ckpt, t2i_grid):
  """condition -> CFG of two plain velocity calls (caption K/V recomputed every step) -> euler_sample -> decode,
  composed here by hand: the generator's once-per-rollout caption context changes nothing."""
  from unirl_jax.chat import load_tokenizer
  from unirl_jax.data import prompts
  from unirl_jax.diffusion.sampler import euler_sample
  from unirl_jax.diffusion.schedule import FlowMatchSchedule
  model, params = unified.load(ckpt)
  tok = load_tokenizer(ckpt)
  enc = tok([prompts.t2i(p) for p in PROMPTS], padding=True, padding_side="left", return_tensors="np",
            add_special_tokens=False)
  sigmas, timesteps = FlowMatchSchedule(shift=3.0).set_timesteps(STEPS)
  x0 = jax.random.normal(jax.random.PRNGKey(5), (1, 8, 8, model.config.vae.latent_channels))  # seed 5, column 0

  @jax.jit
  def compose(params, ids, mask):
    cond = model.condition(params, ids, mask, task="t2i")
    def v(x, t):
      v_u, v_c = model.velocity(params, x, jnp.zeros_like(cond), t), model.velocity(params, x, cond, t)
      return v_u + 3.5 * (v_c - v_u)
    return model.decode(params, euler_sample(v, jnp.concatenate([x0, x0]), sigmas, timesteps, use_scan=False))

  want = generate.to_uint8(compose(params, enc["input_ids"], enc["attention_mask"]))
  t = tiles(t2i_grid)
  for row in range(2):
    assert np.abs(t[(row, 0)].astype(int) - want[row].astype(int)).max() <= 1
    assert np.mean(t[(row, 0)] != want[row]) < 0.01


def test_edit_writes_an_image_and_uses_the_source(ckpt, tmp_path):
  gradient_image(50, 40).save(tmp_path / "src.png")
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "black.png")
  outs = []
  for src in ("src.png", "black.png"):
    out = tmp_path / f"edit_{src}"
    assert run(ckpt, out, "--edit", str(tmp_path / src), "--prompt", "make it blue", "--vit-size", "56") == 0
    outs.append(np.asarray(Image.open(out)))
  assert outs[0].shape == (32, 32, 3)
  assert np.abs(outs[0].astype(int) - outs[1].astype(int)).max() > 0


@pytest.mark.parametrize("flags, message", [
    (["--size", "30"], "--size 30 must be a positive multiple of 4"),
    (["--edit", "x.png", "--vit-size", "50"], "--vit-size 50 must be a positive multiple of 28"),
    (["--edit", "missing.png", "--vit-size", "56"], "no such file"),
    (["--reflect", "--edit", "x.png"], "--reflect and --edit do not combine"),
    (["--reflect", "--vit-size", "50"], "--vit-size 50 must be a positive multiple of 28"),
])
def test_bad_flags_are_clear_errors(ckpt, tmp_path, capsys, flags, message):
  assert run(ckpt, tmp_path / "x.png", "--prompt", "a cat", *flags) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "x.png").exists()


def test_geneval_eval_scores_the_images_it_writes(ckpt, tmp_path, capsys):
  """`python -m unirl_jax.eval`: per-image results re-scored from the saved images, per-tag means, the generator's
  images (the same as `generate` with that prompt and seed), and a prompt file without metadata refused."""
  import json
  from unirl_jax import eval as eval_cli
  from unirl_jax.data import shapes
  from unirl_jax.rewards import geneval
  from unirl_jax.rewards.shapes import detect
  recs = shapes.prompts(3, seed=0)  # single_object, two_object, counting
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in recs))
  out = tmp_path / "eval"
  assert eval_cli.main(["--ckpt", ckpt, "--prompts", str(path), "--out", str(out), "--seeds", "2",
                        "--steps", str(STEPS), "--batch", "2"]) == 0
  res = json.load(open(out / "results.json"))
  rows = [json.loads(line) for line in open(out / "images.jsonl")]
  assert len(rows) == 6 and set(res["tags"]) == {"single_object", "two_object", "counting"}
  for row, rec in zip(rows, [r for r in recs for _ in range(2)]):
    want = geneval.evaluate(detect(np.asarray(Image.open(out / row["image"]))), rec)
    assert (row["score"], row["strict_correct"], row["correct"]) == (want.score, want.strict_correct, want.correct)
  for tag, v in res["tags"].items():
    assert v["score"] == pytest.approx(np.mean([r["score"] for r in rows if r["tag"] == tag]))
  assert res["overall"]["score"] == pytest.approx(np.mean([v["score"] for v in res["tags"].values()]))
  # The third prompt (second batch, padded) at seed 1 is what generate draws for it.
  assert run(ckpt, tmp_path / "g.png", "--prompt", recs[2]["prompt"], "--seed", "1", "--cfg", "3.5") == 0
  # (eval left-pads every prompt to the file's longest: the same condition up to float rounding, so the uint8
  # pixels may differ by one step)
  g = np.asarray(Image.open(tmp_path / "g.png")).astype(int)
  assert np.abs(g - np.asarray(Image.open(out / rows[5]["image"])).astype(int)).max() <= 1
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"prompt": "a cat"}) + "\n")
  assert eval_cli.main(["--ckpt", ckpt, "--prompts", str(bad), "--out", str(out)]) == 2
  assert "record 1 has no GenEval 'tag'/'include' metadata" in capsys.readouterr().err


def test_edit_eval_scores_the_edits_and_reconstructions_it_writes(ckpt, tmp_path, capsys):
  """`python -m unirl_jax.eval --benchmark edit`: each edit is what `generate --edit` draws for that source,
  instruction and seed (the RL rollout's guidance by default); direction and cycle re-scored from the saved
  images with the CLIP rewards; a missing CLIP dir is refused naming the flag."""
  import json
  from unirl_jax import clip_fit
  from unirl_jax import eval as eval_cli
  from unirl_jax.data import shape_edits
  from unirl_jax.data.pipeline import square
  from unirl_jax.models import clip
  from unirl_jax.rewards import RewardInputs
  from unirl_jax.rewards import clip as clip_rewards
  shape_edits.write(str(tmp_path / "edits"), n_train=1, n_eval=2, size=32, seed=0)
  data = tmp_path / "edits" / "eval_edits.jsonl"
  cc = clip_fit.shapes_config()
  clip_dir = clip_fit.save(str(tmp_path / "clip"), cc, clip.init_params(cc, jax.random.PRNGKey(0)),
                           clip_fit.word_tokenizer(clip_fit.shapes_vocabulary(), cc.text))
  out = tmp_path / "ev"
  args = ["--benchmark", "edit", "--ckpt", ckpt, "--data", str(data), "--out", str(out), "--seeds", "1",
          "--steps", str(STEPS), "--batch", "1", "--vit-size", "56", "--size", "32"]
  assert eval_cli.main(args + ["--clip", clip_dir]) == 0
  res = json.load(open(out / "results.json"))
  rows = [json.loads(line) for line in open(out / "images.jsonl")]
  recs = [json.loads(line) for line in open(data)]
  assert len(rows) == 2 and res["cfg"] == 3.0 and res["ref_cfg"] == 1.0
  load = lambda p: np.asarray(Image.open(p).convert("RGB"))
  src = np.stack([np.asarray(square(Image.open(tmp_path / "edits" / r["image"]), 32)) for r in recs])
  inputs = RewardInputs(np.stack([load(out / r["edit"]) for r in rows]), [r["prompt"] for r in recs], None, recs,
                        sources=src, reconstructions=np.stack([load(out / r["recon"]) for r in rows]))
  np.testing.assert_allclose([r["direction"] for r in rows], clip_rewards.reward("clip_direction", clip_dir)(inputs),
                             atol=1e-5)
  np.testing.assert_allclose([r["cycle"] for r in rows],
                             clip_rewards.reward("clip_image_similarity", clip_dir)(inputs), atol=1e-5)
  assert res["overall"]["cycle"] == pytest.approx(np.mean([r["cycle"] for r in rows]))
  assert set(res["kinds"]) == {r["kind"] for r in recs}
  assert run(ckpt, tmp_path / "g.png", "--prompt", recs[1]["prompt"], "--edit", str(tmp_path / "edits" / recs[1]["image"]),
             "--cfg", "3.0", "--ref-cfg", "1.0", "--vit-size", "56", "--size", "32") == 0
  assert np.abs(load(tmp_path / "g.png").astype(int) - load(out / rows[1]["edit"]).astype(int)).max() <= 1
  assert eval_cli.main(args + ["--clip", str(tmp_path / "nope")]) == 2
  assert "--clip" in capsys.readouterr().err


def test_reflect_regenerates_after_a_no_only(ckpt, t2i_grid, tmp_path, monkeypatch):
  no = "<think>it is green</think><judge>no</judge><answer>a blue cube</answer>"
  seen = {}

  def fake_judge(model, tok, max_new_tokens):
    def judge(lm_params, ids, mask, pv, grids):
      seen.update(pv=pv, grids=grids, texts=tok.batch_decode(ids, skip_special_tokens=False))
      return [no if "red cube" in t else "<think>two dogs</think><judge>yes</judge>" for t in seen["texts"]]
    return judge

  monkeypatch.setattr(generate, "judge_fn", fake_judge)
  out = tmp_path / "r.png"
  assert run(ckpt, out, "--reflect", "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seeds", "2", "--seed", "5",
             "--vit-size", "56") == 0
  rows = json.load(open(tmp_path / "r.json"))
  assert [(r["prompt"], r["seed"], r["judgement"], r["second_prompt"]) for r in rows] == [
      (PROMPTS[0], 5, "no", "a blue cube"), (PROMPTS[0], 6, "no", "a blue cube"),
      (PROMPTS[1], 5, "yes", None), (PROMPTS[1], 6, "yes", None)]
  assert all(t.count("<|image_pad|>") == 4 for t in seen["texts"]) and len(seen["grids"]) == 4
  t, g = tiles(out), tiles(t2i_grid)
  for p in range(2):
    for s in range(2):
      np.testing.assert_array_equal(t[(p * 2 + s, 0)], g[(p, s)])  # image 1 is the plain t2i image
  for r in (0, 1):
    assert np.abs(t[(r, 1)].astype(int) - t[(r, 0)].astype(int)).max() > 0  # regenerated
  for r in (2, 3):
    np.testing.assert_array_equal(t[(r, 1)], t[(r, 0)])  # judged satisfied: image 1 is final


def test_reflect_with_the_models_own_judge(ckpt, tmp_path):
  out = tmp_path / "r.png"
  assert run(ckpt, out, "--reflect", "--prompt", "a cat", "--vit-size", "56", "--max-new-tokens", "4") == 0
  (row,) = json.load(open(tmp_path / "r.json"))
  assert row["judgement"] in ("yes", "no", "unparsed") and isinstance(row["judge"], str)
  assert np.asarray(Image.open(out)).shape == (32, 64, 3)
