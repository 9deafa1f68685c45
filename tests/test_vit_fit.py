"""The vision-tower fit (unirl_jax.vit_fit): the fitted tiny tower tells each cell's colour, shape and size."""

import jax
import numpy as np
import pytest

from unirl_jax import run_config, tokenizer, vit_fit
from unirl_jax.models import unified


@pytest.fixture(scope="module")
def tower():
  cfg = unified.tiny_qwen_vocab()
  params = unified.UnifiedModel(cfg).init_params(jax.random.PRNGKey(0))
  emb = params["lm"]["language_model"]["embed_tokens"]["embedding"]
  return cfg.lm, params["lm"]["visual"], vit_fit.word_vectors(tokenizer.load(), emb), np.asarray(emb)


def test_word_vectors_are_the_lm_embeddings_of_the_class_words(tower):
  _, _, words, emb = tower
  red = tokenizer.load()(" red", add_special_tokens=False)["input_ids"]
  assert len(red) == 1
  np.testing.assert_allclose(words["color"][list(vit_fit.HEADS["color"]).index("red")],
                             emb[red[0]] / np.linalg.norm(emb[red[0]]), rtol=1e-6)
  assert {h: v.shape for h, v in words.items()} == {"color": (6, 64), "shape": (3, 64), "size": (2, 64),
                                                   "col": (3, 64)}


def test_fit_sees_every_cell_in_the_words_directions(tower):
  lm_cfg, visual, words, _ = tower
  fitted, acc = vit_fit.fit(lm_cfg, visual, steps=300, words=words, n_scenes=1024, seed=0)
  # Held-out scenes (another seed), occupied cells: chance is 1/6 colour, 1/3 shape and column, 1/2 size. The
  # column comes slowest (the tower's RoPE is relative: it has to find the image's edges).
  assert acc["color"] > 0.95 and acc["shape"] > 0.9 and acc["size"] > 0.9 and acc["col"] > 0.6, acc
  assert acc["empty"] > 0.95, acc
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), fitted, visual))
  assert all(moved)
  assert jax.tree.structure(fitted) == jax.tree.structure(visual)  # the heads are not left in the tower
  with pytest.raises(ValueError, match=r"words must map \('color', 'shape', 'size', 'col'\)"):
    vit_fit.fit(lm_cfg, visual, steps=1, words={"color": words["color"]})


def test_cell_tokens_pool_row_major():
  tokens = np.arange(36 * 2, dtype=np.float32).reshape(36, 2)  # a 6 x 6 merged grid
  cells = np.asarray(vit_fit.cell_tokens(tokens, 6))
  np.testing.assert_array_equal(cells[0], tokens[[0, 1, 6, 7]].mean(0))
  np.testing.assert_array_equal(cells[5], tokens[[16, 17, 22, 23]].mean(0))  # row 1, column 2


def test_sizes_that_do_not_tile_the_grid_are_named(tower):
  with pytest.raises(ValueError, match=r"model\.vit_fit_size 56: .*multiple of 84"):
    vit_fit.grid_of(56, tower[0].vision)


def test_geneval_scenes_label_colour_and_shape_per_cell(tower):
  x, labels = vit_fit.scenes(16, 84, tower[0].vision, seed=0, data="geneval_scenes")
  assert x.shape == (16, 36, tower[0].vision.patch_dim) and set(labels) == {"color", "shape"}
  occupied = labels["color"] > 0
  assert np.array_equal(occupied, labels["shape"] > 0) and occupied.any(axis=1).all()
  words = vit_fit.word_vectors(tokenizer.load(), np.ones((151936, 64)), "geneval_scenes")
  assert set(words) == {"color", "shape"}


def test_bad_settings_are_named():
  with pytest.raises(run_config.ConfigError, match=r"model\.vit_fit_steps must be >= 0"):
    run_config.ModelSettings(vit_fit_steps=-1)
  with pytest.raises(run_config.ConfigError, match=r"model\.vit_fit_data 'cats' not one of"):
    run_config.ModelSettings(vit_fit_data="cats")
