r"""Serving throughput and latency: requests/s and p50/p95 at 1, 8 and 32 concurrent clients, the
batching server against one-request-at-a-time serving (the same server with batch buckets (1,)), both
in this process, over HTTP on loopback.

    python tools/bench_serve.py                                   # a random shapes_tiny checkpoint
    python tools/bench_serve.py --checkpoint=runs/shapes_tiny --kind=image --json=serve.json

Each request is a chat completion with one 32-px image (greedy, `--max_tokens` tokens, no early stop:
the random model rarely emits eos, a trained one may stop earlier) or, with --kind=image, one image
generation (`--steps` flow steps). Every program both servers will need is compiled first (one request
per batch bucket), so the numbers are steady-state serving; the first-use compile times are printed.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _random_checkpoint(workdir: str) -> str:
  """A random-weight shapes_tiny run (as train.py saves one) in `workdir`."""
  from flax import nnx

  from configs import shapes_tiny
  from input_pipeline.tokenizers import WordTokenizer
  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.trainer.setup import train_state_factory
  config = shapes_tiny.get_config()
  make_state, _ = train_state_factory(config)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(0, nnx.state(make_state()), config=json.loads(config.to_json_best_effort()))
  ckpt.close()
  WordTokenizer.from_texts(["what color is the red blue circle square ? a"]).save(
      os.path.join(workdir, "tokenizer.json"))
  return workdir


def _body(kind: str, max_tokens: int, steps: int, image_url: str, i: int) -> tuple[str, bytes]:
  if kind == "image":
    return "/images/generations", json.dumps({"prompt": "a red circle", "steps": steps}).encode()
  words = "what color is the red circle ? a blue square".split()
  text = " ".join(words[: 3 + i % 6])
  content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": image_url}}]
  return "/chat/completions", json.dumps({"messages": [{"role": "user", "content": content}],
                                          "max_tokens": max_tokens, "temperature": 0}).encode()


def _post(url: str, path: str, body: bytes) -> float:
  t0 = time.perf_counter()
  request = urllib.request.Request(url + path, data=body, method="POST",
                                   headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=600) as r:
    r.read()
  return time.perf_counter() - t0


def _level(url: str, clients: int, requests: int, make_body) -> dict:
  """`requests` requests from `clients` threads, each sending its next one when the last returns."""
  latencies, lock, counter = [], threading.Lock(), iter(range(requests))

  def client():
    while True:
      with lock:
        i = next(counter, None)
      if i is None:
        return
      latency = _post(url, *make_body(i))
      with lock:
        latencies.append(latency)

  t0 = time.perf_counter()
  threads = [threading.Thread(target=client) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  wall = time.perf_counter() - t0
  lat = np.asarray(latencies) * 1000
  return {"clients": clients, "requests": requests, "requests_per_s": requests / wall,
          "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95))}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", help="a training workdir (default: a random shapes_tiny one)")
  parser.add_argument("--kind", choices=["chat", "image"], default="chat")
  parser.add_argument("--clients", default="1,8,32", help="concurrency levels")
  parser.add_argument("--requests", type=int, default=64, help="requests per level (>= 2x clients)")
  parser.add_argument("--max_tokens", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10, help="flow steps (--kind=image)")
  parser.add_argument("--max_batch", type=int, default=32, help="batch buckets 1, 2, 4, ... max_batch")
  parser.add_argument("--batch_buckets", help="explicit batch buckets, e.g. 1,8 (instead of --max_batch)")
  parser.add_argument("--max_wait_ms", type=float, default=10.0)
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args(argv)

  import logging
  logging.getLogger("jaxmodels.serving").setLevel(logging.WARNING)
  import jax
  from PIL import Image

  from jaxmodels.serving import app
  from jaxmodels.serving.engine import Engine, ServingModel, powers_of_two
  from jaxmodels.serving.loader import load_checkpoint
  from jaxmodels.serving.schema import Limits
  tmp = None
  if not args.checkpoint:
    tmp = tempfile.TemporaryDirectory()
    args.checkpoint = _random_checkpoint(os.path.join(tmp.name, "shapes_tiny"))
  loaded = load_checkpoint(args.checkpoint, one_device=True)
  limits = Limits(max_tokens=max(16, args.max_tokens), max_steps=max(50, args.steps))
  buf = io.BytesIO()
  Image.fromarray(np.full((32, 32, 3), (200, 40, 40), np.uint8)).save(buf, format="PNG")
  image_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
  make_body = lambda i: _body(args.kind, args.max_tokens, args.steps, image_url, i)  # noqa: E731
  levels = [int(c) for c in args.clients.split(",")]
  results = {"device": jax.devices()[0].device_kind, "kind": args.kind, "max_tokens": args.max_tokens,
             "steps": args.steps, "checkpoint": os.path.basename(os.path.normpath(args.checkpoint)),
             "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count()}
  batched = (tuple(int(b) for b in args.batch_buckets.split(",")) if args.batch_buckets
             else powers_of_two(1, args.max_batch))
  for name, buckets in (("one_at_a_time", (1,)), ("batched", batched)):
    engine = Engine(ServingModel(loaded, limits=limits), batch_buckets=buckets,
                    max_wait_s=args.max_wait_ms / 1000, max_queue=4096)
    server = app.make_server(engine, app.ServeOptions(port=0, limits=limits, request_timeout_s=600))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    t0 = time.perf_counter()
    for b in buckets:   # compile every batch bucket the levels can use (b concurrent requests)
      engine.set_paused(True)
      with concurrent.futures.ThreadPoolExecutor(b) as pool:
        futures = [pool.submit(_post, url, *make_body(0)) for _ in range(b)]
        time.sleep(0.2)
        engine.set_paused(False)
        [f.result() for f in futures]
    warm = time.perf_counter() - t0
    rows = []
    for c in levels:
      before = engine.metrics()
      rows.append(_level(url, c, max(args.requests, 2 * c), make_body))
      after = engine.metrics()
      rows[-1]["mean_batch"] = ((after["batch_rows"] - before["batch_rows"])
                                / max(1, after["batches"] - before["batches"]))
    results[name] = {"levels": rows, "warmup_s": warm, "programs": engine.metrics()["programs"]}
    server.shutdown()
    server.server_close()
    engine.close()
  print(f"{args.kind} on {results['device']} ({os.cpu_count()} cores), {args.max_tokens} new tokens"
        if args.kind == "chat" else f"image on {results['device']}, {args.steps} steps")
  print(f"{'clients':>7} | {'one-at-a-time req/s':>19} {'p50 ms':>8} {'p95 ms':>8} | "
        f"{'batched req/s':>13} {'p50 ms':>8} {'p95 ms':>8} {'batch':>6} | speed-up")
  for a, b in zip(results["one_at_a_time"]["levels"], results["batched"]["levels"]):
    print(f"{a['clients']:>7} | {a['requests_per_s']:>19.2f} {a['p50_ms']:>8.0f} {a['p95_ms']:>8.0f} | "
          f"{b['requests_per_s']:>13.2f} {b['p50_ms']:>8.0f} {b['p95_ms']:>8.0f} {b['mean_batch']:>6.1f} | "
          f"{b['requests_per_s'] / a['requests_per_s']:.2f}x")
  for name in ("one_at_a_time", "batched"):
    r = results[name]
    print(f"{name}: {r['programs']} compiled programs, warm-up (compiles) {r['warmup_s']:.1f}s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if tmp is not None:
    tmp.cleanup()
  return results


if __name__ == "__main__":
  main()
