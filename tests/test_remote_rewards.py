"""The remote reward client against loopback servers: the real `rewards.serve` server, and small misbehaving ones
(slow, malformed, wrong length, NaN, down, a 500 then success). Every failure names the server."""

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from unirl_jax import rewards, run_config
from unirl_jax.rewards import RewardInputs
from unirl_jax.rewards.remote import RemoteReward, RemoteRewardError, from_request, to_request
from unirl_jax.rewards.serve import make_server


def batch(n=3):
  rng = np.random.default_rng(0)
  return RewardInputs(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), [f"p{i}" for i in range(n)],
                      completions=[f"c{i}" for i in range(n)], metadata=[{"tag": "t", "i": i} for i in range(n)])


@contextlib.contextmanager
def serving(server):
  t = threading.Thread(target=server.serve_forever, daemon=True)
  t.start()
  try:
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}/"
  finally:
    server.shutdown()
    server.server_close()


def scripted(replies):
  """A server answering the i-th request with replies[i] = (status, body bytes, delay s); counts requests."""
  seen = []

  class H(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
      self.rfile.read(int(self.headers["Content-Length"]))
      status, body, delay = replies[min(len(seen), len(replies) - 1)]
      seen.append(status)
      time.sleep(delay)
      self.send_response(status)
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)

    def log_message(self, *a):
      pass

  return ThreadingHTTPServer(("127.0.0.1", 0), H), seen


def scores_body(values):
  return json.dumps({"scores": values}).encode()


def test_request_round_trip_keeps_every_field():
  x = batch()
  y = from_request(json.loads(json.dumps(to_request(x))))
  np.testing.assert_array_equal(y.images, x.images)  # PNG is lossless
  assert (y.prompts, y.completions, y.metadata) == (x.prompts, x.completions, x.metadata)
  # a task without images (reasoning): completions, their token counts and the budget travel too
  x = RewardInputs(None, ["q1", "q2"], completions=["<answer>1</answer>", "2"], metadata=[{"answer": "1"}] * 2,
                   completion_lengths=np.array([5, 9], np.int32), completion_budget=16)
  y = from_request(json.loads(json.dumps(to_request(x))))
  assert y.images is None and (y.prompts, y.completions, y.metadata) == (x.prompts, x.completions, x.metadata)
  assert list(y.completion_lengths) == [5, 9] and y.completion_budget == 16


def test_served_reward_equals_the_local_one():
  x = batch()
  with serving(make_server(rewards.get("jpeg_incompressibility"))) as url:
    got = RemoteReward(url)(x)
  np.testing.assert_allclose(got, rewards.get("jpeg_incompressibility")(x), rtol=1e-6)


@pytest.mark.parametrize("reply,msg", [
    ((200, b"<html>oops</html>", 0), "non-JSON"),
    ((200, json.dumps({"score": [1, 2, 3]}).encode(), 0), "no 'scores' list"),
    ((200, scores_body([1.0, 2.0]), 0), "returned 2 scores for 3 rows"),
    ((200, b'{"scores": [1.0, NaN, 2.0]}', 0), r"non-finite or non-numeric scores at rows \[1\]"),
    ((200, scores_body([1.0, "x", 2.0]), 0), r"non-finite or non-numeric scores at rows \[1\]"),
])
def test_bad_replies_are_retried_then_fail_naming_the_server_and_the_fault(reply, msg):
  server, seen = scripted([reply])
  with serving(server) as url:
    with pytest.raises(RemoteRewardError, match=f"failed 3 times; last: .*{msg}") as e:
      RemoteReward(url, retries=2, backoff_s=0.01)(batch())
  assert url in str(e.value) and len(seen) == 3


def test_a_bad_reply_then_a_good_one_succeeds():
  server, seen = scripted([(200, b"<html>oops</html>", 0), (200, scores_body([0.5, 1.5, 2.5]), 0)])
  with serving(server) as url:
    np.testing.assert_array_equal(RemoteReward(url, retries=2, backoff_s=0.01)(batch()), [0.5, 1.5, 2.5])
  assert len(seen) == 2


def test_a_refused_request_fails_at_once():
  server, seen = scripted([(400, b"bad batch", 0)])
  with serving(server) as url:
    with pytest.raises(RemoteRewardError, match="refused the request") as e:
      RemoteReward(url, retries=2, backoff_s=0.01)(batch())
  assert url in str(e.value) and len(seen) == 1  # our request is wrong: asking again cannot help


def test_a_500_then_success_is_retried():
  server, seen = scripted([(500, b"warming up", 0), (200, scores_body([0.5, 1.5, 2.5]), 0)])
  with serving(server) as url:
    got = RemoteReward(url, retries=2, backoff_s=0.01)(batch())
  np.testing.assert_array_equal(got, [0.5, 1.5, 2.5])
  assert seen == [500, 200]


def test_a_slow_server_times_out_after_its_retries():
  server, seen = scripted([(200, scores_body([1.0, 1.0, 1.0]), 1.0)])
  with serving(server) as url:
    with pytest.raises(RemoteRewardError, match="failed 2 times; last: timed out after 0.2 s") as e:
      RemoteReward(url, timeout_s=0.2, retries=1, backoff_s=0.01)(batch())
  assert url in str(e.value) and len(seen) == 2


def test_a_server_that_is_down_is_named():
  with socket.socket() as s:  # a port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/"
  with pytest.raises(RemoteRewardError, match=f"reward server {url} failed 3 times; last: unreachable"):
    RemoteReward(url, retries=2, backoff_s=0.01)(batch())


def test_the_server_reports_bad_requests_and_reward_failures():
  def boom(inputs):
    raise RuntimeError("detector crashed")
  with serving(make_server(boom)) as url:
    with pytest.raises(RemoteRewardError, match="failed 1 times; last: HTTP 500: .*detector crashed"):
      RemoteReward(url, retries=0)(batch())
  server = make_server(rewards.get("jpeg_incompressibility"))
  with serving(server) as url:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, data=b'{"images": ["not a png"]}', method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
      urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400 and b"base64 PNGs" in e.value.read()


def test_run_config_builds_remote_rewards_and_refuses_bad_ones():
  from configs import t2i_jpeg_tiny
  c = t2i_jpeg_tiny.get_config()
  c.reward = "pick:2,jpeg_compressibility"
  c.remote_rewards = {"pick": {"url": "http://h:1/", "retries": 5}}
  run = run_config.load(c)
  assert run.remote_rewards == (("pick", RemoteReward("http://h:1/", retries=5)),)
  assert rewards.check(run.reward, dict(run.remote_rewards))
  c.remote_rewards = {"pick": "h:1"}
  with pytest.raises(run_config.ConfigError, match="remote_rewards.pick: give an http"):
    run_config.load(c)


def test_geneval_served_from_a_named_detector_equals_the_built_in_reward():
  """`serve --reward geneval --detector MODULE:FUNCTION`: GenEval scoring around any detector, here the shapes one."""
  from unirl_jax.data import shapes
  from unirl_jax.rewards.serve import detector_reward
  recs = shapes.prompts(6, seed=1)
  rs = np.random.RandomState(0)
  scenes = [np.asarray(shapes.render(r, 32, rs)) for r in recs]
  scenes[3] = np.roll(scenes[3], 1, axis=2)  # a "colors" prompt with its channels rotated: the wrong colour
  x = RewardInputs(np.stack(scenes), [r["prompt"] for r in recs], metadata=recs)
  for reward, local in (("geneval", "geneval_shapes"), ("geneval_correct", "geneval_shapes_correct")):
    with serving(make_server(detector_reward(reward, "unirl_jax.rewards.shapes:detect"))) as url:
      got = RemoteReward(url)(x)
    np.testing.assert_array_equal(got, rewards.get(local)(x))
  assert len(set(got.tolist())) == 2  # both outcomes occur


@pytest.mark.parametrize("argv,msg", [
    (["--reward", "geneval", "--detector", "unirl_jax.rewards.shapes"], "give MODULE:FUNCTION"),
    (["--reward", "geneval", "--detector", "unirl_jax.rewards.shapes:nope"], "has no attribute 'nope'"),
    (["--reward", "geneval", "--detector", "no_such_module:detect"], "No module named 'no_such_module'"),
    (["--reward", "jpeg_compressibility", "--detector", "unirl_jax.rewards.shapes:detect"], "give --reward geneval"),
    (["--reward", "nope"], "unknown reward 'nope'"),
])
def test_serve_refuses_a_bad_reward_or_detector(argv, msg, capsys):
  from unirl_jax.rewards import serve
  assert serve.main(argv) == 2
  assert msg in capsys.readouterr().err
