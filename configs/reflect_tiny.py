"""Reflective generation GRPO (task "reflect", docs/scenarios.md) on the tiny unified model (CPU): image 1 from
a GenEval-format shapes prompt, the LM judges it and, after a "no", revises the prompt, image 2 from the
revision; rewards from the offline GenEval verifier (shapes detector): the final image's partial credit, the
judgement's agreement with the verifier on image 1, image 2's gain, and the judge's format.

python -m unirl_jax.data.shapes_sft --out workdir/shapes_sft
python -m unirl_jax.train --config configs/pretrain_reflect_tiny.py     # the cold start, once
python -m unirl_jax.train --config configs/reflect_tiny.py

Keys left out take unirl_jax.run_config.GRPORun's defaults.
"""

import ml_collections

from configs import t2i_geneval_tiny

DATA = "workdir/shapes_sft"
COLD_START = "workdir/pretrain_reflect_tiny"


def get_config():
  c = t2i_geneval_tiny.get_config()
  c.task = "reflect"
  c.workdir = "workdir/reflect_tiny"
  c.model.init = f"{COLD_START}/final"
  c.prompt_file = f"{DATA}/train_prompts.jsonl"
  # reflect_passed / reflect_says_yes at weight 0: logged, for the judge's accuracy on passing and failing images;
  # reflect_first (v(image 1)) at weight 0: image 1's own advantage under reflect.advantage="split".
  c.reward = ("reflect_final:1,reflect_judge:0.5,reflect_improve:0.5,reflect_format:0.25,reflect_first:0,"
              "reflect_passed:0,reflect_says_yes:0")
  c.reflect = ml_collections.ConfigDict(dict(verifier="geneval_shapes", pass_threshold=1.0, vit_size=84,
                                             advantage="shared"))
  c.max_text_len = 128  # the judge prompt with image 1's 9 tokens
  c.lm = ml_collections.ConfigDict(dict(max_new_tokens=96, temperature=1.0, top_k=50, top_p=1.0, beta=0.01,
                                        clip_eps=0.2, aggregation="seq_mean_token_mean"))
  c.train.trainable = ("lm/language_model", "dit", "connector", "t2i_queries")
  c.optim.group_lr = {"lm": c.optim.lr / 3}
  return c
