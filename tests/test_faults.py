"""Training survives faults: kill -9 anywhere (mid-step, mid-checkpoint-save, at random) then a restart gives the
unbroken run's metrics and params; an unreadable newest checkpoint falls back to the one before; a reward service
that stays down stops the run with an error after checkpointing the last completed step, and a restart finishes
the run as if nothing happened; a non-finite update is skipped and counted, never applied."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np
import pytest

from unirl_jax import checkpoint, rewards
from unirl_jax.rewards.remote import RemoteRewardError, from_request
from unirl_jax.rl.trainer import GRPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fault_worker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "fault_worker.py")


def rows(workdir):
  out = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if k != "step_time"} for r in out]


def final_params(workdir):
  return checkpoint.restore_params(os.path.join(workdir, "final", "params"), as_numpy=True)


def assert_same_params(a, b):
  for (path, x), (_, y) in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("unbroken"))
  GRPOTrainer(fault_worker.config(), wd).run()
  return wd


def worker(workdir, fault=None, kill_after_s=None):
  env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
  p = subprocess.Popen([sys.executable, WORKER, workdir] + ([fault] if fault else []), env=env, cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    out, _ = p.communicate(timeout=kill_after_s)
  except subprocess.TimeoutExpired:
    p.kill()
    out, _ = p.communicate()
  return p.returncode, out


def test_kill_9_anywhere_then_resume_gives_the_unbroken_run(unbroken, tmp_path):
  wd = str(tmp_path / "run")
  rc, out = worker(wd, "save:2")  # killed while checkpoint 2 is being written
  assert rc == -9, out[-3000:]
  assert any(checkpoint.TMP_MARK in n for n in os.listdir(os.path.join(wd, "checkpoints"))), out[-3000:]
  rc, out = worker(wd, "step:5")  # the incomplete save is reported and ignored; killed mid-step 5
  assert rc == -9 and "was left incomplete" in out, out[-3000:]
  assert rows(wd)[-1]["step"] == 4
  rng = np.random.default_rng(0)
  rc, out = worker(wd, kill_after_s=float(rng.uniform(4, 20)))  # at a random moment (mid-compile, -step or -save)
  rc, out = worker(wd)
  assert rc == 0, out[-3000:]
  assert rows(wd) == rows(unbroken)
  assert_same_params(final_params(wd), final_params(unbroken))


@pytest.mark.parametrize("damage", ["metadata", "array data"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, damage):
  state = {"w": np.arange(6, dtype=np.float32), "step": np.int32(0)}
  ck = checkpoint.TrainCheckpoints(str(tmp_path), max_to_keep=3, async_save=False)
  for step in (1, 2):
    ck.save(step, {"w": state["w"] + step, "step": np.int32(step)}, extra={"data": {"pos": step}})
  ck.close()
  for root, _, files in os.walk(tmp_path / "2" / "state"):  # the newest one's metadata or array data cut short
    for f in files:
      if (f == "_METADATA") == (damage == "metadata") and os.path.getsize(os.path.join(root, f)) > 64:
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(16)
  log = []
  got, extra, step = checkpoint.TrainCheckpoints(str(tmp_path)).restore_latest(state, log=log.append)
  assert step == 1 and extra == {"data": {"pos": 1}}
  np.testing.assert_array_equal(got["w"], state["w"] + 1)
  assert len(log) == 1 and "checkpoint step 2" in log[0] and "does not read" in log[0]


class RewardService:
  """JPEG compressibility served over HTTP; it answers `up_for` requests, then every reply is a 500."""

  def __init__(self, up_for=None):
    self.up_for = up_for
    fn, svc = rewards.get("jpeg_compressibility"), self

    class H(BaseHTTPRequestHandler):
      def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        down = svc.up_for is not None and svc.up_for <= 0
        if svc.up_for is not None:
          svc.up_for -= 1
        status, reply = (500, b"down") if down else (200, json.dumps(
            {"scores": [float(x) for x in fn(from_request(body))]}).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

      def log_message(self, *a):
        pass

    self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url = "http://127.0.0.1:%d/" % self.server.server_address[1]


def test_a_reward_service_that_stays_down_stops_after_a_checkpoint_and_resumes(unbroken, tmp_path):
  svc = RewardService(up_for=3)  # one request per step: steps 1-3 are scored, then it stays down
  c = fault_worker.config()
  c.reward = "jpeg_served"
  c.remote_rewards = {"jpeg_served": {"url": svc.url, "retries": 1, "backoff_s": 0.01}}
  wd = str(tmp_path / "run")
  t = GRPOTrainer(c, wd)
  with pytest.raises(RemoteRewardError, match=f"reward server {svc.url} failed 2 times; last: HTTP 500"):
    t.run()  # checkpoint 2 on schedule, then step 4's rewards fail after a retry
  assert t.ckpt.latest_step() == 3  # step 3 (not a checkpoint step) saved before stopping: nothing lost
  assert rows(wd)[-1]["step"] == 3
  svc.up_for = None  # back up
  GRPOTrainer(c, wd).run()
  assert rows(wd) == rows(unbroken)
  assert_same_params(final_params(wd), final_params(unbroken))
  svc.server.shutdown()


def test_a_non_finite_update_is_skipped_and_counted(tmp_path):
  c = fault_worker.config()
  c.train.total_steps = 3
  t = GRPOTrainer(c, str(tmp_path))
  advantages, seen = t.advantages, {}

  def nan_at_step_2(r):
    a = advantages(r)
    seen[len(seen) + 1] = jax.device_get(t.state["trainable"])
    return a * np.nan if len(seen) == 2 else a
  t.advantages = nan_at_step_2
  history = t.run()
  assert [h["skipped"] for h in history] == [0, 1, 0]
  assert not np.isfinite(history[1]["loss"]) and np.isfinite(history[2]["loss"])
  assert_same_params(seen[3], seen[2])  # the skipped update left the params as they were
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(seen[2]), jax.tree.leaves(seen[1])))


def test_a_checkpoint_of_another_config_is_an_error_naming_what_differs(tmp_path):
  ck = checkpoint.TrainCheckpoints(str(tmp_path), async_save=False)
  ck.save(3, {"trainable": {"dit": {"w": np.zeros((4, 8), np.float32)}}, "step": np.int32(3)})
  ck.close()
  run = {"trainable": {"dit": {"w": np.zeros((4, 16), np.float32)}, "lm": {"b": np.zeros(2, np.float32)}},
         "step": np.int32(0)}
  with pytest.raises(checkpoint.CheckpointMismatch, match=r"checkpoint step 3 in .* was written by another config "
                     r"than this run's: trainable/lm/b: not in the checkpoint; trainable/dit/w: shape \(4, 8\) "
                     r"saved, \(4, 16\) wanted"):
    checkpoint.TrainCheckpoints(str(tmp_path)).restore_latest(run)
