"""2 processes x 4 CPU devices (`python -m unirl_jax.launch`, jax.distributed with gloo collectives) train the same
steps as 1 process x 8 devices: the GRPO step of t2i and of multimodal reasoning (LM completions through the
vision tower), and pretraining from tar shards (each process reading its rows); the same metrics and exported
params within 1e-5, the t2i run stopped after its first step and resumed from its checkpoint."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from unirl_jax import checkpoint, train
from unirl_jax.data import synthetic, synthetic_questions

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import multiprocess_worker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multiprocess_worker.py")


def launch(args, nproc=2, devices=4, timeout=900):
  env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
  cmd = [sys.executable, "-m", "unirl_jax.launch", "--nproc", str(nproc), "--devices_per_process", str(devices),
         "--", sys.executable, *args]
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def metrics(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{k: v for k, v in r.items() if k != "step_time"} for r in rows]


def assert_same_run(got_dir, want_dir):
  got, want = metrics(got_dir), metrics(want_dir)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    assert set(g) == set(w)
    for k, v in w.items():
      if isinstance(v, str):
        assert g[k] == v, k
      else:
        assert g[k] == pytest.approx(v, rel=1e-5, abs=1e-5), (g["step"], k, g[k], v)
  a = checkpoint.restore_params(os.path.join(got_dir, "final", "params"), as_numpy=True)
  b = checkpoint.restore_params(os.path.join(want_dir, "final", "params"), as_numpy=True)
  flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  # Within 1e-5: the updates are ~lr = 1e-3 per step, and Adam's m / sqrt(v) turns the reduction-order rounding of
  # a near-zero gradient element into differences of ~2e-6 (a wrong data split moves params by ~1e-3).
  for (path, x), (_, y) in zip(flat_a, flat_b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("questions"))
  synthetic_questions.write(data, "shapes", n_train=8, n_eval=4, size=28)
  return data


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("shards"))
  manifest = synthetic.generate(data, n=48, size=32, seed=0)
  synthetic.write_tar_shards(manifest, os.path.join(data, "shards"), shard_size=10)
  return data


@pytest.mark.parametrize("kind", ["t2i", "reason", "pretrain"])
def test_two_processes_train_like_one(kind, questions, shards, tmp_path):
  data = {"reason": questions, "pretrain": shards}.get(kind, "")
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  if kind == "t2i":  # stopped after step 1, then resumed: both processes write and restore the checkpoint
    out = launch([WORKER, kind, two, data, "1"])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert len(metrics(two)) == 1
  out = launch([WORKER, kind, two, data])
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
  assert "[1] " in out.stdout  # both processes ran and spoke
  train.run(multiprocess_worker.config(kind, data), one)  # 1 process x 8 devices
  assert_same_run(two, one)
  # The metrics, samples and export were written once, by process 0: one row per step, no stray files.
  assert len(metrics(two)) == len(metrics(one))
  assert sorted(os.listdir(two)) == sorted(os.listdir(one))


def test_where_the_processes_come_from(monkeypatch):
  from unirl_jax import distributed, launch as launch_lib
  from unirl_jax.distributed import DistributedSettings as S, settings_from_env
  for k in ("UNIRL_COORDINATOR", "UNIRL_NUM_PROCESSES", "UNIRL_PROCESS_ID", "UNIRL_DISTRIBUTED", "SLURM_NTASKS",
            "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(k, raising=False)
  assert settings_from_env(S()) is None  # nothing says there are others: one process
  env = launch_lib.process_env({"XLA_FLAGS": "--xla_foo --xla_force_host_platform_device_count=8"}, 1, 2,
                               "localhost:1234", 4)
  assert env["XLA_FLAGS"] == "--xla_foo --xla_force_host_platform_device_count=4"
  for k in ("UNIRL_COORDINATOR", "UNIRL_NUM_PROCESSES", "UNIRL_PROCESS_ID"):
    monkeypatch.setenv(k, env[k])
  assert settings_from_env(S(initialization_timeout_s=7)) == {
      "coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1, "initialization_timeout": 7}
  assert settings_from_env(S(mode="off")) is None
  monkeypatch.setenv("UNIRL_DISTRIBUTED", "off")
  assert settings_from_env(S()) is None
  monkeypatch.setenv("UNIRL_DISTRIBUTED", "sometimes")
  with pytest.raises(ValueError, match="UNIRL_DISTRIBUTED='sometimes' not one of"):
    settings_from_env(S())
  for k in ("UNIRL_COORDINATOR", "UNIRL_NUM_PROCESSES", "UNIRL_PROCESS_ID", "UNIRL_DISTRIBUTED"):
    monkeypatch.delenv(k)
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  monkeypatch.setenv("SLURM_NTASKS", "4")  # srun with 4 tasks: JAX's SLURM detection takes it from here
  assert settings_from_env(S()) == {"initialization_timeout": 300}
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert settings_from_env(S()) is None
  monkeypatch.setenv("UNIRL_DISTRIBUTED", "on")  # e.g. a TPU pod slice
  assert settings_from_env(S()) == {"initialization_timeout": 300}
  with pytest.raises(ValueError, match="give all of coordinator, num_processes and process_id"):
    settings_from_env(S(coordinator="host:1"))
  with pytest.raises(ValueError, match=r"process_id 2 is not in \[0, num_processes=2\)"):
    settings_from_env(S(coordinator="host:1", num_processes=2, process_id=2))
  monkeypatch.delenv("UNIRL_DISTRIBUTED")
  assert not distributed.initialize(S(mode="off")) and distributed.is_main()


def test_the_launcher_stops_the_others_when_one_fails():
  import time
  from unirl_jax import launch as launch_lib
  code = ("import os, sys, time\n"
          "print('process', os.environ['UNIRL_PROCESS_ID'], 'of', os.environ['UNIRL_NUM_PROCESSES'], flush=True)\n"
          "sys.exit(3) if os.environ['UNIRL_PROCESS_ID'] == '1' else time.sleep(120)")
  t0 = time.time()
  assert launch_lib.launch([sys.executable, "-c", code], nproc=2, prefix=False) == 3
  assert time.time() - t0 < 60  # process 0 was stopped, not waited for
  assert launch_lib.main(["--nproc", "2"]) == 2  # no `-- COMMAND`
