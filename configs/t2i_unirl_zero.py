"""UniRL-Zero text-to-image GRPO with the GenEval reward at the real size (the original's
train_blip3o_t2i.sh): the JPEG run's settings with GenEval's train_metadata.jsonl prompts.

GenEval scores images with an object detector, which the original runs as a separate service; so does this
config. On the scoring machine, wrap the detector (e.g. GenEval's Mask2Former) as a function image ->
{class: [unirl_jax.rewards.geneval.Detection]} and serve GenEval's partial credit around it:

python -m unirl_jax.rewards.serve --reward geneval --detector my_detector:detect --host 0.0.0.0 --port 8000

then point `remote_rewards.gen_eval` at it (a run that cannot reach it stops with an error naming the URL).
"""

from configs import t2i_jpeg_unirl_zero


def get_config():
  c = t2i_jpeg_unirl_zero.get_config()
  c.workdir = "workdir/t2i_unirl_zero"
  c.prompt_file = "train_metadata.jsonl"
  c.remote_rewards = {"gen_eval": {"url": "http://127.0.0.1:8000/", "timeout_s": 300.0, "retries": 3}}
  c.reward = "gen_eval"
  return c
