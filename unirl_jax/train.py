"""`python -m unirl_jax.train [--config configs/X.py] [--config.key=value ...] [--workdir DIR]`.

With no flags it runs the tiny CPU default: text-to-image GRPO with the JPEG-compressibility reward. Restarting
with the same workdir resumes from its last checkpoint: params, optimizer, step and data position. The config
becomes a typed run config (`unirl_jax.run_config`) before anything is built: an unknown or misspelled key
is an error naming it and the nearest known key.
"""

from __future__ import annotations

import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "t2i_jpeg_tiny.py")


def run(config, workdir: str | None = None):
  """Trains the run a config describes (a ConfigDict, a dict or a typed run config)."""
  from unirl_jax import run_config
  run_cfg = config if isinstance(config, (run_config.GRPORun, run_config.PretrainRun)) else run_config.load(config)
  workdir = workdir or run_cfg.workdir
  from unirl_jax import distributed
  distributed.initialize(run_cfg.distributed)  # before anything touches a device
  if run_cfg.mode == "grpo":
    from unirl_jax.rl.trainer import GRPOTrainer
    history = GRPOTrainer(run_cfg, workdir).run()
  else:
    from unirl_jax.pretrain import Pretrainer
    trainer = Pretrainer(run_cfg, workdir)
    history = trainer.run()
    trainer.export()
  if distributed.is_main():
    print(f"final params: {os.path.join(workdir, 'final')} (python -m unirl_jax.generate --ckpt {workdir} "
          f"--prompt ...)")
  return history


def parse(argv: list[str]):
  """-> (typed run config, workdir) from the command line; a bad flag or config key raises run_config.ConfigError."""
  from absl import flags
  from ml_collections import config_flags
  from unirl_jax import run_config
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "an ml_collections config file", flag_values=fv,
                                    lock_config=True, sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "where checkpoints and metrics go (default: config.workdir)",
                        flag_values=fv)
    rest = fv(list(argv))
    config = run_config.load(fv.config)
  except OSError as e:  # the --config file does not exist or does not load
    raise run_config.ConfigError(f"--config {_config_path(argv)!r} does not load: "
                                 f"{' '.join(str(e).split())[-300:]}") from None
  except (flags.Error, AttributeError, KeyError) as e:  # e.g. --config.misspelled=1: name it and the nearest key
    msg = str(e)
    if isinstance(e, KeyError) and len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
      msg = msg[1:-1]  # a KeyError's str() is the repr of its message
    raise run_config.ConfigError(_explain(argv) or msg) from None
  if len(rest) > 1:
    raise run_config.ConfigError(f"unexpected arguments: {rest[1:]}")
  return config, fv.workdir


def _config_path(argv) -> str:
  for i, a in enumerate(argv[1:], 1):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return DEFAULT_CONFIG


def _explain(argv) -> str | None:
  """The first `--config.a.b=...` override whose key the config file lacks, with the nearest known key."""
  import difflib
  import importlib.util
  path = _config_path(argv)
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  try:
    spec = importlib.util.spec_from_file_location("_run_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  except Exception:  # noqa: BLE001 (then absl's own message is the best there is)
    return None
  for key in keys:
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        known = list(node.keys()) if hasattr(node, "keys") else []
        near = difflib.get_close_matches(part, known, n=1, cutoff=0.5)
        where = ".".join(parts[:i]) or "the run config"
        hint = f"; did you mean '{'.'.join(parts[:i] + [near[0]])}'?" if near else ""
        return f"unknown setting {key!r}{hint} (known in {where}: {', '.join(known)})"
      node = node[part]
  return None


def main(argv=None) -> int:
  from absl import logging
  from unirl_jax import run_config
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    config, workdir = parse(sys.argv if argv is None else argv)
  except run_config.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  run(config, workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
