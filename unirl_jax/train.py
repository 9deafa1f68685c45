"""`python -m unirl_jax.train [--config configs/X.py] [--config.key=value ...] [--workdir DIR]`.

With no flags it runs the tiny CPU default: text-to-image GRPO with the JPEG-compressibility reward. Restarting
with the same workdir resumes from its last checkpoint: params, optimizer, step and data position.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "t2i_jpeg_tiny.py")

_CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "an ml_collections config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints and metrics go (default: config.workdir)")


def run(config, workdir: str):
  if config.mode == "grpo":
    from unirl_jax.rl.trainer import GRPOTrainer
    return GRPOTrainer(config, workdir).run()
  if config.mode != "pretrain":
    raise ValueError(f"config.mode {config.mode!r} not one of 'pretrain', 'grpo'")
  from unirl_jax.pretrain import Pretrainer
  trainer = Pretrainer(config, workdir)
  history = trainer.run()
  out = trainer.export(os.path.join(workdir, "final"))
  print(f"final params: {out} (python -m unirl_jax.generate --ckpt {out} --prompt ...)")
  return history


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  sys.path.insert(0, ROOT)  # configs/ imports each other
  config = _CONFIG.value
  run(config, _WORKDIR.value or config.workdir)


if __name__ == "__main__":
  app.run(main)
