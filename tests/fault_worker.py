"""The run tests/test_faults.py kills: `python tests/fault_worker.py WORKDIR [save:N | step:N]` trains the tiny
t2i config in WORKDIR and, when told, SIGKILLs itself right after checkpoint N's save has started (it is written
in the background) or in the middle of step N (after its rollout, before its update)."""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config():
  from configs import t2i_jpeg_tiny
  c = t2i_jpeg_tiny.get_config()
  c.prompts_per_step, c.group_size = 2, 4
  c.dm.steps = 2
  c.model.vae_fit_steps = 0
  c.train.total_steps = 6
  c.train.checkpoint_every = 2
  c.train.keep_checkpoints = 3
  c.train.sample_every = 0
  c.progress = False
  c.mesh.data = 2
  return c


def kill():
  sys.stdout.flush()
  os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
  from unirl_jax.rl.trainer import GRPOTrainer
  workdir = sys.argv[1]
  where, _, at = (sys.argv[2] if len(sys.argv) > 2 else "").partition(":")
  t = GRPOTrainer(config(), workdir)
  if where == "save":
    save = t.ckpt.save

    def save_then_die(step, *a, **k):
      out = save(step, *a, **k)
      if step == int(at):
        kill()
      return out
    t.ckpt.save = save_then_die
  elif where == "step":
    rollout = t.task.rollout

    def rollout_then_die(step, rng):
      out = rollout(step, rng)
      if step == int(at):
        kill()
      return out
    t.task.rollout = rollout_then_die
  t.run()
