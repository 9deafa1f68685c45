"""Fits a tiny random vision tower to see the synthetic shape scenes, the stand-in for Qwen2.5-VL's pretrained ViT.

The multimodal-reasoning cold start asks the tiny LM to describe 3 x 3-grid scenes from its image tokens. Trained
through the LM alone, the random tower learns colours but hardly shapes (a linear probe on its tokens after the
supervised stage: colour 1.0, shape 0.51), and even a tower fitted to separate them linearly leaves the LM at chance
on the colour and shape words (it learns only how many objects there are). So a random preset's tower is first
fitted here the way LLaVA's first stage aligns its projector: each grid cell's merged tokens are read against the
LM's own (frozen) embeddings of the words naming the cell's colour, shape, size and column (`' red'`,
`' circle'`, `' small'`, `' left'`; a learned vector for an empty cell), so a token over a red circle points
where those words do and the LM only has to copy, as it copies operands in the text task.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unirl_jax.data import pipeline
from unirl_jax.data import shapes
from unirl_jax.data.shape_edits import COLUMNS, SIZES, draw
from unirl_jax.data.synthetic_questions import scene
from unirl_jax.models.qwen2_5_vl.vision import VisionTower

# What the scene descriptions name, per cell; each head also has class 0: empty. The column word too: the tower
# knows where its patches are (2-D RoPE), the LM would have to work it out from the image tokens' positions.
HEADS = {"color": tuple(shapes.COLORS), "shape": shapes.SHAPES, "size": tuple(SIZES), "col": COLUMNS}


def _question_scene(rs):
  """synthetic_questions' scenes (the reasoning questions'), 56 px: colour, shape, size and column per cell."""
  objs = scene(rs)
  return draw(objs, 56), [(o.row * 3 + o.col, {"color": o.color, "shape": o.shape, "size": o.size,
                                               "col": COLUMNS[o.col]}) for o in objs]


def _geneval_scene(rs):
  """data.shapes' scenes for a random GenEval-format prompt (the reflection judge's), 32 px: colour and shape."""
  objs = shapes.layout(shapes.make_prompt(shapes.TAGS[rs.randint(len(shapes.TAGS))], rs), rs)
  return shapes.draw(objs, 32, rs), [(r * 3 + c, {"color": color, "shape": shape}) for shape, color, (r, c) in objs]


# model.vit_fit_data -> (renderer rs -> (image, [(cell, {head: value})]), the heads it labels)
DATA = {"questions": (_question_scene, ("color", "shape", "size", "col")),
        "geneval_scenes": (_geneval_scene, ("color", "shape"))}


def grid_of(vit_size: int, vision) -> int:
  """Merged tokens per side; they must tile the 3 x 3 scene grid."""
  g = vit_size // vision.patch_size // vision.spatial_merge_size
  if vit_size % (vision.patch_size * vision.spatial_merge_size) or g % 3:
    unit = 3 * vision.patch_size * vision.spatial_merge_size
    raise ValueError(f"model.vit_fit_size {vit_size}: the merged tokens must tile the 3 x 3 scene grid "
                     f"(a multiple of {unit}, e.g. {unit})")
  return g


def scenes(n: int, vit_size: int, vision, seed: int, data: str = "questions"
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """n random scenes -> (ViT patches (n, patches, patch_dim), labels {head: (n, 9) int32, 0 = empty cell})."""
  render, heads = DATA[data]
  rs = np.random.RandomState(seed)
  labels = {h: np.zeros((n, 9), np.int32) for h in heads}
  images = []
  for i in range(n):
    img, objs = render(rs)
    for cell, values in objs:
      for h in heads:
        labels[h][i, cell] = HEADS[h].index(values[h]) + 1
    images.append(img)
  spec = pipeline.ImageSpec(images[0].size[0], vit_size, vision.patch_size, vision.spatial_merge_size)
  return pipeline.vit_patches(images, spec, pipeline.vit_processor(spec)), labels


def cell_tokens(tokens: jax.Array, g: int) -> jax.Array:
  """(g*g, D) merged tokens in row-major order -> (9, D): the mean over each scene cell's tokens."""
  k = g // 3
  return tokens.reshape(3, k, 3, k, -1).mean((1, 3)).reshape(9, -1)


def word_vectors(tok, embedding, data: str = "questions") -> dict[str, np.ndarray]:
  """{head: (classes, D)} the unit-norm LM embeddings of each class's word (' red', ' circle', ...), for the
  heads `DATA[data]` labels."""
  out = {}
  for h in DATA[data][1]:
    names = HEADS[h]
    ids = [tok(" " + n, add_special_tokens=False)["input_ids"] for n in names]
    if any(len(i) != 1 for i in ids):
      raise ValueError(f"vit fit: the tokenizer splits a {h} word into several tokens: {dict(zip(names, ids))}")
    e = np.asarray(embedding, np.float32)[[i[0] for i in ids]]
    out[h] = e / np.linalg.norm(e, axis=-1, keepdims=True)
  return out


def fit(lm_config, visual_params, steps: int, words: dict[str, np.ndarray], vit_size: int = 84, batch: int = 32,
        lr: float = 3e-3, n_scenes: int = 2048, seed: int = 0, data: str = "questions", log_every: int = 0):
  """Fits the vision tower's params to per-cell labels with Adam, each head's logits the cell token's dot
  products with its class words' vectors (`words`, from `word_vectors`; frozen) times a learned scale, and a
  learned empty-cell vector. Deterministic given `seed`. Returns (visual params, {head: held-out accuracy on
  occupied cells, "empty": on all cells} over 256 other scenes)."""
  vision = lm_config.vision
  g = grid_of(vit_size, vision)
  tower = VisionTower(lm_config)
  grid = np.array([[1, g * vision.spatial_merge_size, g * vision.spatial_merge_size]])
  dim = vision.out_hidden_size
  if data not in DATA:
    raise ValueError(f"model.vit_fit_data {data!r} not one of {tuple(DATA)}")
  heads = DATA[data][1]
  if set(words) != set(heads) or any(np.shape(words[h]) != (len(HEADS[h]), dim) for h in heads):
    raise ValueError(f"vit fit: words must map {heads} to (classes, {dim}) vectors, got "
                     f"{ {h: np.shape(v) for h, v in words.items()} }")
  x_train, y_train = scenes(n_scenes, vit_size, vision, seed, data)
  x_eval, y_eval = scenes(256, vit_size, vision, seed + 1, data)
  key = jax.random.PRNGKey(seed)
  head_params = {h: {"empty": jax.random.normal(jax.random.fold_in(key, i), (dim,)) / np.sqrt(dim),
                     "log_scale": jnp.zeros(())} for i, h in enumerate(heads)}
  frozen = {h: jnp.asarray(v) for h, v in words.items()}

  def logits(p, x):  # x: (B, patches, patch_dim) -> {head: (B, 9, classes + 1)}, class 0 empty
    cells = jax.vmap(lambda xi: cell_tokens(tower.apply({"params": p["visual"]}, xi, grid), g))(x)
    return {h: jnp.exp(w["log_scale"]) * cells @ jnp.concatenate([w["empty"][None], frozen[h]]).T
            for h, w in p["heads"].items()}

  def loss_fn(p, x, y):
    out = logits(p, x)
    return sum(optax.softmax_cross_entropy_with_integer_labels(out[h], y[h]).mean() for h in heads)

  tx = optax.adam(lr)
  x_train, y_train = jnp.asarray(x_train), {h: jnp.asarray(v) for h, v in y_train.items()}

  @jax.jit
  def step(p, opt, i):
    idx = jax.random.choice(jax.random.fold_in(key, 1000 + i), n_scenes, (batch,), replace=False)
    loss, grads = jax.value_and_grad(loss_fn)(p, x_train[idx], {h: v[idx] for h, v in y_train.items()})
    upd, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, upd), opt, loss

  params = {"visual": visual_params, "heads": head_params}
  opt = tx.init(params)
  for i in range(steps):
    params, opt, loss = step(params, opt, i)
    if log_every and (i + 1) % log_every == 0:
      print(f"vit fit {i + 1:5d}/{steps}  loss {float(loss):.4f}", flush=True)
  out = jax.jit(logits)(params, jnp.asarray(x_eval))
  occupied = y_eval["color"] > 0
  acc = {h: float(((np.asarray(out[h]).argmax(-1) == y_eval[h]) & occupied).sum() / occupied.sum()) for h in heads}
  acc["empty"] = float(((np.asarray(out["color"]).argmax(-1) == 0) == ~occupied).mean())
  return params["visual"], acc
