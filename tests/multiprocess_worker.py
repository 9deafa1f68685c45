"""The runs tests/test_multiprocess.py compares: `python tests/multiprocess_worker.py KIND WORKDIR [DATA]` trains
the tiny config of KIND ("t2i", "reason", "pretrain") in WORKDIR, as one process of a `unirl_jax.launch` run or
(imported) in the test's own process on 8 devices."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from unirl_jax import rewards  # noqa: E402


@rewards.register("mp_completion_chars")
def completion_chars(inputs):
  """Varies within every group of a random LM's completions (format and accuracy are ~always 0 there)."""
  return np.asarray([len(c) / 10 for c in inputs.completions], np.float32)


def config(kind: str, data: str = ""):
  if kind == "t2i":
    from configs import t2i_jpeg_tiny
    c = t2i_jpeg_tiny.get_config()
    c.prompts_per_step, c.group_size = 2, 4
    c.dm.steps = 3
    c.train.sample_every = 1
  elif kind == "reason":
    from configs import reason_mm_tiny
    c = reason_mm_tiny.get_config()
    c.prompt_file = os.path.join(data, "train_questions.jsonl")
    c.model.init = "preset:tiny_qwen_vocab"
    c.model.vit_fit_steps = 0
    c.reward = "think_format:0.5,accuracy:1,mp_completion_chars:1"
    c.prompts_per_step, c.group_size = 2, 4
    c.lm.max_new_tokens = 6
    c.reason.vit_size = 28
    c.optim.lr = 1e-3
    c.train.sample_every = 1
  elif kind == "pretrain":
    from configs import pretrain_tiny
    c = pretrain_tiny.get_config()
    c.data.sources = (f"t2i:{data}/shards/t2i-*.tar", f"edit:{data}/shards/edit-*.tar")  # read per process
    c.train.log_every = 1
  else:
    raise ValueError(kind)
  c.model.vae_fit_steps = 0
  c.train.total_steps = 3 if kind == "pretrain" else 2
  c.train.checkpoint_every = 1
  if kind != "pretrain":
    c.progress = False
  c.mesh.data = -1
  return c


if __name__ == "__main__":
  kind, workdir = sys.argv[1], sys.argv[2]
  data = sys.argv[3] if len(sys.argv) > 3 else ""
  if len(sys.argv) > 4:  # stop after step N, as a killed run would (resumed by the next launch)
    from unirl_jax import distributed, run_config
    from unirl_jax.rl.trainer import GRPOTrainer
    run = run_config.load(config(kind, data))
    distributed.initialize(run.distributed)
    GRPOTrainer(run, workdir).run(stop_after=int(sys.argv[4]))
  else:
    from unirl_jax import train
    train.run(config(kind, data), workdir)
