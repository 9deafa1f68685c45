"""Reflective generation at the real size (ours: the original released no reflection trainer, docs/scenarios.md):
the settings of the CoT run (configs/t2icot_unirl_zero.py: G=8, T=1, top-k 50, DiT group lr 3e-6, LLM lr 5e-7,
DM beta 4e-3, LM k3 KL 0.01) with the GenEval detector service of configs/t2i_unirl_zero.py as the verifier.
Image 1 is seen by the LM at 448² (256 tokens); the judge writes up to 512 tokens. Starts from a reflection cold
start built with the pretraining trainer (data.mix="rows" of t2i and judgement records, docs/scenarios.md).
"""

import ml_collections

from configs import t2icot_unirl_zero


def get_config():
  c = t2icot_unirl_zero.get_config()
  c.task = "reflect"
  c.workdir = "workdir/reflect_unirl_zero"
  c.model.init = "ckpt/reflect_cold_start"
  c.reflect = ml_collections.ConfigDict(dict(verifier="gen_eval", pass_threshold=1.0, vit_size=448,
                                             advantage="shared"))
  # reflect_passed / reflect_says_yes at weight 0: logged, for the judge's accuracy on passing and failing images;
  # reflect_first at weight 0: image 1's own advantage under reflect.advantage="split".
  c.reward = ("reflect_final:1,reflect_judge:0.5,reflect_improve:0.5,reflect_format:0.25,reflect_first:0,"
              "reflect_passed:0,reflect_says_yes:0")
  c.lm = ml_collections.ConfigDict(dict(max_new_tokens=512, temperature=1.0, top_k=50, top_p=1.0, beta=0.01,
                                        clip_eps=0.2, aggregation="seq_mean_token_mean"))
  return c
