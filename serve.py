r"""Serves a trained run (or a released copy of its workdir) behind an OpenAI-compatible HTTP API.

    python serve.py --checkpoint=runs/shapes_tiny                      # http://127.0.0.1:8000/v1
    MY_KEY=secret python serve.py --checkpoint=runs/shapes_tiny --port=8001 --api_key_env=MY_KEY
    # released weights: a folder without checkpoints/ (holding the tokenizer, or config.data.tokenizer
    # names it) and a config whose init names them, e.g. --config.init.hf.llm=<HF folder>
    python serve.py --checkpoint=DIR --config=configs/<exp>.py --config.init.hf.llm=/models/...

Endpoints: POST /v1/chat/completions (text + image_url parts, stream, usage), /v1/images/generations
(b64_json; extra fields steps, guidance, seed), /v1/images/edits (models that edit); GET /v1/models,
/health, /metrics. Concurrent requests are batched into one compiled call (jaxmodels/serving/engine.py);
the log names each new compiled program. Any OpenAI client works:

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
    client.chat.completions.create(model="shapes_tiny", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what color is the circle?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}], max_tokens=8)
"""
from __future__ import annotations

import os
import signal
import sys

from absl import app, flags, logging


def _define_flags():
  """CLI flags, defined only when run as a script."""
  f = flags
  f.DEFINE_string("checkpoint", None, "A training workdir (checkpoints/, tokenizer.json).", required=True)
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "A config file[:arg] (default: the config saved with "
                                  "the checkpoint); --config.x=y overrides.")
  f.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  f.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback by default).")
  f.DEFINE_integer("port", 8000, "Port (0: a free one, printed at start).")
  f.DEFINE_string("model_name", None, "Model id in the API (default: the checkpoint folder's name).")
  f.DEFINE_string("api_key_env", None, "Environment variable holding the bearer key clients must send.")
  f.DEFINE_string("image_root", None, "Chat image_url may name local files under this folder.")
  f.DEFINE_enum("edits", "auto", ["auto", "on", "off"],
                "Serve /v1/images/edits: auto = if the run trained on edits.")
  f.DEFINE_integer("max_batch", 32, "Rows per compiled call (batch buckets: powers of two up to it).")
  f.DEFINE_list("batch_buckets", None, "Batch sizes to compile (default: 1, 2, 4, ... max_batch).")
  f.DEFINE_float("max_wait_ms", 10.0, "How long the oldest request waits for others to batch with.")
  f.DEFINE_integer("max_queue", 256, "Requests waiting or running before 429.")
  f.DEFINE_float("request_timeout", 120.0, "Seconds a request may wait + run before 408.")
  f.DEFINE_integer("max_body_bytes", 20 << 20, "Largest request body (413 beyond).")
  f.DEFINE_integer("max_image_pixels", 4096 * 4096, "Largest input image (width x height).")
  f.DEFINE_integer("max_images", 4, "Images per chat request.")
  f.DEFINE_integer("max_tokens", 256, "Largest max_tokens (and its default).")
  f.DEFINE_integer("max_n", 4, "Largest n (choices or images per request).")
  f.DEFINE_integer("max_steps", 50, "Largest flow sampling `steps`.")
  f.DEFINE_integer("seed", 0, "Base seed of the sampling keys.")
  f.DEFINE_integer("stream_chunk", 8, "Tokens per compiled decode chunk (streaming granularity).")
  f.DEFINE_bool("one_device", False, "Copy the weights whole onto the first device instead of the "
                "run's mesh (a model that fits one device, on a host with several).")


def main(argv):
  del argv
  from jaxmodels.errors import run_cli
  from jaxmodels.log_filters import quiet_library_logs
  quiet_library_logs()
  run_cli(_serve)


def _serve():
  import threading

  from jaxmodels import host_devices
  host_devices.ensure_collective_threads()   # before the first computation (virtual CPU devices)
  from jaxmodels.errors import ConfigError
  from jaxmodels.serving import app as http_app
  from jaxmodels.serving.engine import Engine, ServingModel
  from jaxmodels.serving.loader import load_checkpoint
  from jaxmodels.serving.schema import Limits
  F = flags.FLAGS
  key = None
  if F.api_key_env:
    key = os.environ.get(F.api_key_env)
    if not key:
      raise ConfigError(f"--api_key_env={F.api_key_env}: that environment variable is not set or empty")
  config = F.config   # None: the one saved with the checkpoint
  loaded = load_checkpoint(F.checkpoint, config, F.step, F.model_name, one_device=F.one_device)
  limits = Limits(max_body_bytes=F.max_body_bytes, max_image_pixels=F.max_image_pixels,
                  max_images=F.max_images, max_tokens=F.max_tokens, max_n=F.max_n, max_steps=F.max_steps)
  model = ServingModel(loaded, limits=limits, edits=F.edits, seed=F.seed, chunk=F.stream_chunk)
  buckets = [int(b) for b in F.batch_buckets] if F.batch_buckets else None
  engine = Engine(model, max_batch=F.max_batch, max_wait_s=F.max_wait_ms / 1000, max_queue=F.max_queue,
                  batch_buckets=buckets)
  server = http_app.make_server(engine, http_app.ServeOptions(
      host=F.host, port=F.port, api_key=key, limits=limits, request_timeout_s=F.request_timeout,
      image_root=F.image_root))
  host, port = server.server_address[:2]
  if not key and host not in ("127.0.0.1", "localhost", "::1"):
    logging.warning("listening on %s without --api_key_env: anyone who reaches this port can use the model",
                    host)
  print(f"serving {loaded.name} (step {loaded.step}) at http://{host}:{port}/v1"
        f"{' (bearer key required)' if key else ''}", flush=True)
  signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
  try:
    server.serve_forever(poll_interval=0.2)
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    engine.close()
    print("stopped", flush=True)


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  _define_flags()
  logging.set_verbosity(logging.WARNING)   # quiet: Orbax and JAX log every restore step at INFO
  import logging as std_logging
  std_logging.getLogger("jaxmodels.serving").setLevel(std_logging.INFO)   # new programs, errors
  from jaxmodels.config_utils import flags_parser
  sys.exit(app.run(main, flags_parser=flags_parser))   # config mistakes: one line, no traceback
