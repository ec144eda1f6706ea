"""serve.py end to end: a tiny random ShapesWorld checkpoint behind the HTTP API on a free loopback
port, talked to with the official `openai` client (chat with images, streaming, image generation,
edits and their refusal, batching of 20 concurrent requests, 4xx for malformed / oversize requests,
401, 408, 429, a crashing request, client disconnects), the ROVER judge against the server, and the
serve.py command in a subprocess (the key never in its output)."""
import base64
import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from random_run import random_run

openai = pytest.importorskip("openai")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-serve-test-NEVER-LOGGED-9876"
WORDS = "what color is the red blue green circle square triangle ? a an image of make it"


def png(value=(200, 30, 30), size=32) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def data_url(data: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A random-weight shapes_tiny:runlocal run (edit_fraction > 0, so it serves edits) saved as train.py
  saves one: checkpoints/0/{state,config} and tokenizer.json."""
  from configs import shapes_tiny
  config = shapes_tiny.get_config("runlocal")
  config.data.edit_fraction = 0.25
  return random_run(tmp_path_factory.mktemp("serve") / "shapes_serve", WORDS, config)


class Running:
  """An in-process server on 127.0.0.1:<free port> (stopped by `close`)."""

  def __init__(self, loaded, *, api_key=KEY, edits="auto", image_root=None, **engine_kw):
    from jaxmodels.serving import app
    from jaxmodels.serving.engine import Engine, ServingModel
    from jaxmodels.serving.schema import Limits
    self.limits = Limits(max_body_bytes=1 << 20, max_image_pixels=64 * 64, max_tokens=16, max_n=4,
                         max_steps=4)
    self.engine = Engine(ServingModel(loaded, limits=self.limits, edits=edits),
                         **{"batch_buckets": (1, 8), "max_wait_s": 0.05, "max_queue": 64, **engine_kw})
    self.server = app.make_server(self.engine, app.ServeOptions(port=0, api_key=api_key, limits=self.limits,
                                                                request_timeout_s=60, image_root=image_root))
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
    self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                   daemon=True)
    self.thread.start()

  def client(self, key=KEY, **kw):
    return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120, **kw)

  def metrics(self):
    request = urllib.request.Request(self.url[:-3] + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=10) as r:
      return json.loads(r.read())

  def close(self):
    self.server.shutdown()
    self.server.server_close()
    self.engine.close()


@pytest.fixture(scope="module")
def loaded(checkpoint):
  from jaxmodels.serving.loader import load_checkpoint
  return load_checkpoint(str(checkpoint), one_device=True)


@pytest.fixture(scope="module")
def srv(loaded, checkpoint):
  running = Running(loaded, image_root=str(checkpoint))
  yield running
  running.close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
  monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
  monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def ask(client, text="what color is the circle?", **kw):
  kw.setdefault("max_tokens", 8)
  kw.setdefault("temperature", 0)
  return client.chat.completions.create(model="shapes_serve", messages=[{"role": "user", "content": text}],
                                        **kw)


def test_released_weights_through_config_init(checkpoint, loaded, tmp_path):
  """A folder without checkpoints/: the config's `init` names the weights (here another run's,
  `init.checkpoint`; Hugging Face towers go through `init.hf` the same way)."""
  import jax
  from flax import nnx

  from jaxmodels.serving.loader import load_checkpoint, saved_config
  config = saved_config(str(checkpoint))
  config.init = {"checkpoint": str(checkpoint)}
  (tmp_path / "tokenizer.json").write_bytes((checkpoint / "tokenizer.json").read_bytes())
  released = load_checkpoint(str(tmp_path), config, one_device=True)
  assert released.step == 0 and released.tokenizer.vocab_size == loaded.tokenizer.vocab_size
  for a, b in zip(jax.tree.leaves(nnx.state(released.model, nnx.Param)),
                  jax.tree.leaves(nnx.state(loaded.model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  config.init = {}
  with pytest.raises(Exception, match="config.init names no released weights"):
    load_checkpoint(str(tmp_path), config)


# --------------------------------------------------------------------------- the API

def test_models_and_health(srv):
  models = srv.client().models.list().data
  assert [m.id for m in models] == ["shapes_serve"]
  with urllib.request.urlopen(srv.url[:-3] + "/health", timeout=10) as r:
    assert json.loads(r.read())["status"] == "ok"


def test_chat_with_images(srv, checkpoint):
  (checkpoint / "red.png").write_bytes(png())
  client = srv.client()
  content = [{"type": "text", "text": "what color is the circle?"},
             {"type": "image_url", "image_url": {"url": data_url(png())}}]
  reply = client.chat.completions.create(model="shapes_serve", max_tokens=6, temperature=0,
                                         messages=[{"role": "user", "content": content}])
  assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
  assert isinstance(reply.choices[0].message.content, str)
  assert reply.choices[0].finish_reason in ("stop", "length")
  # <bos> + 6 words + 16 image placeholders (the model's image tokens).
  assert reply.usage.prompt_tokens == 1 + 6 + 16
  assert 1 <= reply.usage.completion_tokens <= 6
  assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
  # The same image as a local file under --image_root: the same greedy answer.
  content[1] = {"type": "image_url", "image_url": {"url": str(checkpoint / "red.png")}}
  again = client.chat.completions.create(model="shapes_serve", max_tokens=6, temperature=0,
                                         messages=[{"role": "user", "content": content}])
  assert again.choices[0].message.content == reply.choices[0].message.content
  # n choices in one request.
  assert len(ask(client, n=2, temperature=0.8, seed=3).choices) == 2


def test_streaming_matches_the_plain_reply(srv):
  client = srv.client()
  plain = ask(client, "is the square blue?", max_tokens=16)
  chunks = list(ask(client, "is the square blue?", max_tokens=16, stream=True,
                    stream_options={"include_usage": True}))
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == plain.choices[0].message.content
  assert chunks[0].choices[0].delta.role == "assistant"
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
  assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
  if plain.usage.completion_tokens > srv.engine.model.chunk:   # one content event per decoded chunk
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) >= 2


def test_chunked_decode_agrees_with_generate(srv):
  import jax
  import jax.numpy as jnp

  from jaxmodels.generate import generate
  sm = srv.engine.model
  ids = jnp.asarray(np.random.default_rng(0).integers(5, 30, (2, 16)), jnp.int32)
  mask = jnp.ones_like(ids).at[1, :5].set(0)
  ref = np.asarray(generate(sm.model.llm, ids, 16, attention_mask=mask, eos_token_id=[],
                            pad_token_id=0))[:, 16:]
  decoder = type(sm.decoder)(sm.model.llm, eos_id=[], pad_id=0, chunk=8)
  keys = jnp.stack([jax.random.key(0)] * 2)
  got = np.concatenate(list(decoder.run(ids, mask, None, new_tokens=16, temperature=[0.0, 0.0],
                                        top_p=[1.0, 1.0], keys=keys)), axis=1)
  np.testing.assert_array_equal(got, ref)


def test_seeded_sampling_does_not_depend_on_the_batch(srv):
  client = srv.client()
  alone = ask(client, "what color?", temperature=1.0, seed=11, max_tokens=8).choices[0].message.content
  srv.engine.set_paused(True)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = [pool.submit(ask, client, "what color?", temperature=t, seed=11 if t == 1.0 else None,
                           max_tokens=8) for t in (0.0, 0.5, 1.0, 1.5)]
    time.sleep(0.5)
    srv.engine.set_paused(False)
    replies = [f.result().choices[0].message.content for f in futures]
  assert replies[2] == alone


def test_image_generation(srv):
  client = srv.client()
  out = client.images.generate(model="shapes_serve", prompt="a red circle", size="32x32",
                               response_format="b64_json",
                               extra_body={"steps": 2, "guidance": 2.0, "seed": 1})
  image = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
  assert image.size == (32, 32) and image.mode == "RGB"
  # Concurrent generations with the same sampler settings run as one batch.
  before = srv.metrics()
  srv.engine.set_paused(True)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    futures = [pool.submit(client.images.generate, prompt=p, extra_body={"steps": 2, "guidance": 2.0})
               for p in ("a red circle", "a blue square", "a green triangle")]
    time.sleep(0.5)
    srv.engine.set_paused(False)
    assert all(len(f.result().data) == 1 for f in futures)
  after = srv.metrics()
  assert (after["batches"] - before["batches"], after["batch_rows"] - before["batch_rows"]) == (1, 3)
  with pytest.raises(openai.BadRequestError, match="32x32 images only") as e:
    client.images.generate(prompt="a red circle", size="1024x1024")
  assert e.value.body["param"] == "size"
  with pytest.raises(openai.BadRequestError, match="b64_json") as e:
    client.images.generate(prompt="a red circle", response_format="url")
  with pytest.raises(openai.BadRequestError, match="multiple of 0.5"):
    client.images.generate(prompt="a red circle", extra_body={"guidance": 3.7})


def test_edits_and_their_refusal(srv, loaded):
  out = srv.client().images.edit(model="shapes_serve", image=("src.png", png(), "image/png"),
                                 prompt="make it blue", extra_body={"steps": 2})
  assert Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json))).size == (32, 32)
  other = Running(loaded, edits="off")
  try:
    with pytest.raises(openai.BadRequestError, match="editing is turned off"):
      other.client().images.edit(image=("src.png", png(), "image/png"), prompt="make it blue")
    assert other.client().models.list().data[0].capabilities["image_edits"] is False
  finally:
    other.close()


def test_hugging_face_tokenizer_chat_format(loaded):
  """A run with a Hugging Face tokenizer: conversations rendered in its chat format (chatml here),
  replies ending at its end-of-turn token; without a chat format the server refuses to start."""
  import dataclasses

  import tokenizers

  from input_pipeline.tokenizers import HFTokenizer
  from jaxmodels.errors import ConfigError
  words = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "user", "assistant"]
  words += WORDS.split()
  vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
  raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  raw.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  raw.add_special_tokens(words[1:5])
  specials = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
  with pytest.raises(ConfigError, match="no chat format"):
    Running(dataclasses.replace(loaded, tokenizer=HFTokenizer(raw, special_tokens=specials)))
  tok = HFTokenizer(raw, special_tokens=specials, chat_format="chatml")
  running = Running(dataclasses.replace(loaded, tokenizer=tok))
  try:
    assert sorted(running.engine.model.eos) == [1, 3]          # <|endoftext|>, <|im_end|>
    reply = ask(running.client(), "what color is the circle?", max_tokens=8)
    rendered = tok.apply_chat_template([{"role": "user", "content": "what color is the circle?"}])
    assert reply.usage.prompt_tokens == len(tok.encode(rendered))
    assert reply.choices[0].finish_reason in ("stop", "length")
  finally:
    running.close()


def test_concurrent_requests_are_batched(srv):
  before = srv.metrics()
  client = srv.client()
  prompts = [" ".join(WORDS.split()[: 2 + i % 9]) for i in range(20)]
  with concurrent.futures.ThreadPoolExecutor(20) as pool:
    replies = list(pool.map(lambda i: ask(client, prompts[i], max_tokens=4 + i % 8), range(20)))
  assert all(r.choices[0].message.content is not None for r in replies)
  assert [r.usage.completion_tokens <= 4 + i % 8 for i, r in enumerate(replies)] == [True] * 20
  after = srv.metrics()
  batches = after["batches"] - before["batches"]
  assert batches < 20 and after["batch_rows"] - before["batch_rows"] == 20
  assert after["programs"] < 20 and after["programs"] - before["programs"] <= 2   # buckets (1, 8)


def test_malformed_and_oversize_requests(srv):
  client = srv.client()

  def status_of(body: bytes):
    request = urllib.request.Request(srv.url + "/chat/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {KEY}",
                                              "Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
      return e.code, json.loads(e.read())

  code, body = status_of(b'{"messages": [')
  assert code == 400 and body["error"]["code"] == "invalid_json" and "Traceback" not in json.dumps(body)
  code, body = status_of(b"x" * (2 << 20))
  assert code == 413 and "over the limit" in body["error"]["message"]
  cases = [
      (dict(extra_body={"frobnicate": 1}), "frobnicate", "Unrecognized request argument"),
      (dict(max_tokens="5"), "max_tokens", "expected an integer"),
      (dict(max_tokens=17), "max_tokens", "out of range"),
      (dict(n=5), "n", "out of range"),
      (dict(temperature=True), "temperature", "expected a number"),
      (dict(logit_bias={"5": 1}), "logit_bias", "not supported"),
  ]
  for kw, param, message in cases:
    with pytest.raises(openai.BadRequestError, match=message) as e:
      ask(client, **kw)
    assert e.value.body["param"] == param
  big = Image.fromarray(np.zeros((65, 65, 3), np.uint8))
  buf = io.BytesIO()
  big.save(buf, format="PNG")
  for url, message in [(data_url(buf.getvalue()), "over the limit"),
                       ("https://example.com/a.png", "remote URLs"),
                       ("data:image/png;base64,@@@", "invalid base64"), ("/etc/passwd", "image_root")]:
    with pytest.raises(openai.BadRequestError, match=message) as e:
      client.chat.completions.create(model="shapes_serve", messages=[{"role": "user", "content": [
          {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]}])
    assert e.value.body["param"] == "messages[0].content[1].image_url.url"
  with pytest.raises(openai.BadRequestError, match="messages") as e:
    client.chat.completions.create(model="shapes_serve", messages=[{"role": "user"}])
  with pytest.raises(openai.NotFoundError, match="does not exist"):
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


def test_wrong_key_is_401(srv):
  with pytest.raises(openai.AuthenticationError) as e:
    ask(srv.client(key="sk-wrong"))
  assert e.value.status_code == 401 and KEY not in json.dumps(e.value.body)


def test_queue_limit_timeout_and_disconnect(srv):
  client, engine = srv.client(), srv.engine
  engine.set_paused(True)
  engine.max_queue = 3
  try:
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
      futures = [pool.submit(ask, client, max_tokens=4) for _ in range(5)]
      time.sleep(1.0)
      engine.set_paused(False)
      outcomes = [f.exception() for f in futures]
    assert sum(isinstance(o, openai.RateLimitError) for o in outcomes) == 2
    assert sum(o is None for o in outcomes) == 3
  finally:
    engine.max_queue = 64
    engine.set_paused(False)
  engine.set_paused(True)
  srv.server.options.request_timeout_s = 0.5
  try:
    with pytest.raises(openai.APIStatusError) as e:
      ask(client)
    assert e.value.status_code == 408
  finally:
    srv.server.options.request_timeout_s = 60
    engine.set_paused(False)
  # A client that leaves while queued: its work is dropped, never run.
  engine.set_paused(True)
  before = srv.metrics()
  body = json.dumps({"messages": [{"role": "user", "content": "what"}], "max_tokens": 4}).encode()
  with socket.create_connection(srv.server.server_address[:2]) as s:
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
              + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    time.sleep(0.3)
  deadline = time.time() + 10
  while srv.metrics().get("client_disconnects", 0) == before.get("client_disconnects", 0):
    assert time.time() < deadline
    time.sleep(0.05)
  engine.set_paused(False)
  time.sleep(0.3)
  assert srv.metrics()["batches"] == before["batches"]


def test_a_crashing_request_fails_alone(srv, monkeypatch):
  model = srv.engine.model
  real = model._chat

  def chat(rows, works):
    if any(r["max_tokens"] == 7 for r in rows):
      raise RuntimeError("boom inside the model")
    return real(rows, works)

  monkeypatch.setattr(model, "_chat", chat)
  client = srv.client()
  srv.engine.set_paused(True)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = [pool.submit(ask, client, max_tokens=7 if i == 0 else 8) for i in range(4)]
    time.sleep(0.5)
    srv.engine.set_paused(False)
    outcomes = [f.exception() for f in futures]
  assert isinstance(outcomes[0], openai.InternalServerError)
  assert "Traceback" not in json.dumps(outcomes[0].body) and "boom" not in json.dumps(outcomes[0].body)
  assert outcomes[1:] == [None, None, None]
  assert ask(client, max_tokens=8).choices[0].message.content is not None


# --------------------------------------------------------------------------- ROVER judge

RUBRICS_PY = '''
prompt_reasoning_process_temporal = "judge {prompt} {think_output}"
prompt_reasoning_visual_temporal = "judge {prompt}"
prompt_reasoning_alignment = "judge {prompt}"
prompt_visual_consistency = "judge {prompt}"
prompt_image_quality = "judge the image"
'''


def test_rover_judge_against_the_server(srv, tmp_path, monkeypatch):
  import pyarrow as pa
  import pyarrow.parquet as pq

  import evaluate
  from jaxmodels.evals import rover
  from jaxmodels.evals.judges import OpenAIJudge
  rows = [dict(id=f"science_temporal_{i}", dimension="science", reasoning_type="temporal",
               prompt="make it blue", target_description="a blue circle", keywords="blue",
               image={"bytes": png(), "path": None}) for i in range(2)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ig.parquet")
  (tmp_path / "prompts.py").write_text(RUBRICS_PY)
  for r in rows:
    rover.write_output(tmp_path / "gen", r["id"], png((20, 20, 200)), "it turns blue")
  monkeypatch.setenv("SERVE_TEST_KEY", KEY)
  judge = OpenAIJudge(srv.url, "shapes_serve", api_key_env="SERVE_TEST_KEY", max_tokens=8,
                      api_attempts=1, parse_attempts=1, timeout=120)
  before = srv.metrics()["requests_chat"]
  scores = evaluate.score_only(None, None, str(tmp_path / "out"),
                               rover_data=str(tmp_path / "ig.parquet"), rover_outputs=str(tmp_path / "gen"),
                               rover_rubrics=str(tmp_path / "prompts.py"), judge=judge)
  assert "rover_ig" in scores
  assert srv.metrics()["requests_chat"] - before == 2 * 5    # every metric of every task was asked
  records = rover.read_records(tmp_path / "out" / "rover_metrics.jsonl")
  assert len(records) == 2
  for record in records:
    for metric in rover.IG_METRICS:
      why = record["result"][f"{metric}_reasoning"] or ""
      # The server answered (a random model's reply holds no 1-5 score, so the score is missing).
      assert "HTTP" not in why and "network" not in why
  # The same through the command line: evaluate.py --base_url.
  env = {**os.environ, "SERVE_TEST_KEY": KEY, "XLA_FLAGS": ""}
  r = subprocess.run([sys.executable, "evaluate.py", "--score_only", f"--out={tmp_path / 'cli'}",
                      f"--rover_data={tmp_path / 'ig.parquet'}", f"--rover_outputs={tmp_path / 'gen'}",
                      f"--rover_rubrics={tmp_path / 'prompts.py'}", f"--base_url={srv.url}",
                      "--judge_model=shapes_serve", "--judge_api_key_env=SERVE_TEST_KEY",
                      "--judge_max_tokens=8"], cwd=ROOT, env=env, text=True, capture_output=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert len(rover.read_records(tmp_path / "cli" / "rover_metrics.jsonl")) == 2
  assert (tmp_path / "cli" / "results.json").is_file() and KEY not in r.stdout + r.stderr


def test_bench_serve_smoke(checkpoint, capsys):
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import bench_serve
  results = bench_serve.main([f"--checkpoint={checkpoint}", "--clients=1,4", "--requests=8",
                              "--batch_buckets=1,8", "--max_tokens=6"])
  for name in ("one_at_a_time", "batched"):
    assert [lvl["clients"] for lvl in results[name]["levels"]] == [1, 4]
    levels = results[name]["levels"]
    assert all(lvl["requests_per_s"] > 0 and lvl["p95_ms"] >= lvl["p50_ms"] for lvl in levels)
  assert results["one_at_a_time"]["levels"][1]["mean_batch"] == 1.0
  assert "speed-up" in capsys.readouterr().out


# --------------------------------------------------------------------------- the command

def test_serve_command(checkpoint):
  env = {**os.environ, "SERVE_CMD_KEY": KEY, "XLA_FLAGS": "", "NO_PROXY": "127.0.0.1"}
  help_text = subprocess.run([sys.executable, "serve.py", "--helpfull"], cwd=ROOT, env=env, text=True,
                             capture_output=True, timeout=120).stdout
  assert "--api_key_env" in help_text and "--max_queue" in help_text
  proc = subprocess.Popen([sys.executable, "serve.py", f"--checkpoint={checkpoint}", "--port=0",
                           "--api_key_env=SERVE_CMD_KEY"], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  try:
    deadline = time.time() + 150
    url = None
    while url is None and time.time() < deadline:
      line = proc.stdout.readline()
      if not line:
        break
      lines.append(line)
      if line.startswith("serving "):
        url = line.split(" at ")[1].split()[0]
    assert url, "".join(lines)
    client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)
    assert client.models.list().data[0].id == "shapes_serve"
    with pytest.raises(openai.AuthenticationError):
      openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      rest, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
      proc.kill()
      rest, _ = proc.communicate()
  output = "".join(lines) + rest
  assert KEY not in output and "Traceback" not in output
  missing = subprocess.run([sys.executable, "serve.py", f"--checkpoint={checkpoint}",
                            "--api_key_env=NOT_SET_X"], cwd=ROOT, env=env, text=True, capture_output=True,
                           timeout=120)
  assert missing.returncode != 0 and "NOT_SET_X" in missing.stderr and "Traceback" not in missing.stderr
