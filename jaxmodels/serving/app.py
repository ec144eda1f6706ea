"""The OpenAI-compatible HTTP front end (standard library `http.server`, one thread per connection).

    POST /v1/chat/completions    messages with text and images -> text (SSE with "stream": true)
    POST /v1/images/generations  prompt -> b64_json PNGs (extra fields: steps, guidance, seed)
    POST /v1/images/edits        multipart image + prompt (or JSON with a data URL) -> b64_json PNGs
    GET  /v1/models, /v1/models/{id}, /health, /metrics (batches, programs, queue, rejections)

Each request is validated in its connection's thread (schema.py), queued on the `Engine` and waited
for up to the request timeout (408 after it); a client that disconnects while it waits is noticed
(its socket reads EOF) and its queued work dropped. With an API key every /v1 and /metrics call needs
`Authorization: Bearer <key>` (401 otherwise); the key is compared in constant time and never logged
(request lines are logged at debug level only, headers never). Any unexpected exception becomes a
500 OpenAI-style error without a traceback; the server keeps serving.

    server = make_server(engine, ServeOptions(port=0, api_key="..."))
    threading.Thread(target=server.serve_forever, daemon=True).start(); server.server_address
"""
from __future__ import annotations

import base64
import dataclasses
import hmac
import io
import json
import logging
import queue
import select
import socket
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from jaxmodels.serving import schema
from jaxmodels.serving.engine import Engine, Work
from jaxmodels.serving.schema import APIError, bad

log = logging.getLogger("jaxmodels.serving")


@dataclasses.dataclass
class ServeOptions:
  host: str = "127.0.0.1"
  port: int = 8000
  api_key: str | None = None
  limits: schema.Limits = dataclasses.field(default_factory=schema.Limits)
  request_timeout_s: float = 120.0
  image_root: str | None = None


def _png_b64(image) -> str:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return base64.b64encode(buf.getvalue()).decode("ascii")


def _finish(sm, result: dict, stop) -> tuple[str, str]:
  """(text, finish_reason) of one choice: cut at the first stop sequence ("stop"), "stop" at eos,
  else "length"."""
  text = sm.decode(result["tokens"])
  cut = [text.index(s) for s in stop if s in text]
  if cut:
    return text[:min(cut)], "stop"
  return text, "stop" if result["eos"] else "length"


def _usage(work: Work, results) -> dict:
  prompt = work.meta["prompt_tokens"]
  completion = sum(len(r["tokens"]) for r in results)
  return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Server(ThreadingHTTPServer):
  daemon_threads = True
  allow_reuse_address = True
  request_queue_size = 128

  def __init__(self, address, engine: Engine, options: ServeOptions):
    self.engine, self.options, self.started = engine, options, time.time()
    super().__init__(address, Handler)

  def handle_error(self, request, client_address):   # a broken connection: one quiet line
    log.debug("connection from %s ended with an error", client_address[0], exc_info=True)


def make_server(engine: Engine, options: ServeOptions) -> _Server:
  """A bound (not yet serving) HTTP server; port 0 picks a free port (see `server_address`)."""
  from jaxmodels.errors import ConfigError
  try:
    return _Server((options.host, options.port), engine, options)
  except OSError as e:
    raise ConfigError(f"cannot listen on {options.host}:{options.port}: {e.strerror}") from None


class Handler(BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"
  server_version = "jaxmodels-serve"
  sys_version = ""
  server: _Server

  # -------------------------------------------------------------- plumbing
  def log_message(self, format, *args):   # noqa: A002 - request lines only, at debug level
    log.debug("%s %s", self.address_string(), format % args)

  def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
    data = json.dumps(payload).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
      self.send_header(k, v)
    self.end_headers()
    self.wfile.write(data)

  def _error(self, e: APIError) -> None:
    headers = {"Retry-After": "1"} if e.status == 429 else {}
    if not self._body_read and int(self.headers.get("Content-Length") or 0):
      self.close_connection = True    # the unread body would be parsed as the next request
      headers["Connection"] = "close"
    self._send_json(e.status, e.body(), headers)

  def do_GET(self):   # noqa: N802
    self._dispatch("GET")

  def do_POST(self):  # noqa: N802
    self._dispatch("POST")

  def _dispatch(self, method: str) -> None:
    path = self.path.split("?", 1)[0].rstrip("/") or "/"
    self._body_read = False
    self._arriving = method == "POST"
    if self._arriving:
      self.server.engine.begin_arrival()   # the batcher waits for requests still arriving
    try:
      routes = {("GET", "/health"): self._health, ("GET", "/healthz"): self._health,
                ("GET", "/v1/models"): self._models, ("GET", "/metrics"): self._metrics,
                ("POST", "/v1/chat/completions"): self._chat,
                ("POST", "/v1/images/generations"): self._generate,
                ("POST", "/v1/images/edits"): self._edit}
      handler = routes.get((method, path))
      if handler is None and method == "GET" and path.startswith("/v1/models/"):
        handler = self._models
      if handler is None:
        known = {p for _, p in routes}
        raise APIError(405 if path in known else 404,
                       f"{method} {path}: {'method not allowed' if path in known else 'no such endpoint'}",
                       code="not_found")
      if path.startswith("/v1/") or path == "/metrics":
        self._authorize()
      handler(path)
    except APIError as e:
      self._error(e)
    except (BrokenPipeError, ConnectionResetError):
      self.close_connection = True
    except Exception as e:   # noqa: BLE001 - never a traceback to the client, never a dead server
      log.error("%s %s: internal error (%s)", method, path, type(e).__name__, exc_info=True)
      try:
        self._error(APIError(500, f"internal server error ({type(e).__name__})", type="server_error"))
      except OSError:
        self.close_connection = True
    finally:
      if self._arriving:
        self.server.engine.end_arrival()

  def _authorize(self) -> None:
    key = self.server.options.api_key
    if not key:
      return
    given = self.headers.get("Authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(token.encode("utf-8", "replace"), key.encode("utf-8")):
      raise APIError(401, "Incorrect API key provided (send Authorization: Bearer <key>).",
                     code="invalid_api_key")

  def _body(self) -> bytes:
    length = self.headers.get("Content-Length")
    if length is None:
      raise APIError(411, "a Content-Length header is required", code="length_required")
    try:
      length = int(length)
    except ValueError:
      raise bad(None, "invalid Content-Length") from None
    limit = self.server.options.limits.max_body_bytes
    if length > limit:
      if length <= 4 * limit:   # read it, so the client gets the answer rather than a reset
        left = length
        while left > 0:
          left -= len(self.rfile.read(min(1 << 20, left)) or b"x" * left)
        self._body_read = True
      raise APIError(413, f"request body of {length} bytes is over the limit of {limit}",
                     code="body_too_large")
    self._body_read = True
    return self.rfile.read(length)

  def _json_body(self) -> dict:
    return schema.parse_json(self._body())   # whatever the Content-Type says (curl sends a form type)

  def _client_gone(self) -> bool:
    """Whether the client closed its side (readable socket with nothing to read)."""
    try:
      readable, _, _ = select.select([self.connection], [], [], 0)
      return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
      return True

  def _wait(self, work: Work):
    """Submits `work` and waits for it: 408 at the deadline, cancelled when the client leaves."""
    engine = self.server.engine
    self._arriving = False
    engine.submit(work, arrived=True)
    while not work.done.wait(0.05):
      if time.monotonic() > work.deadline:
        engine.cancel(work, "timeouts")
        raise APIError(408, "request timed out", type="timeout_error", code="timeout")
      if self._client_gone():
        engine.cancel(work, "client_disconnects")
        self.close_connection = True
        raise ConnectionResetError("client disconnected")
    if work.error is not None:
      raise work.error
    return work.result

  def _deadline(self) -> float:
    return time.monotonic() + self.server.options.request_timeout_s

  def _check_model(self, name: str | None) -> None:
    served = self.server.engine.model.name
    if name is not None and name != served:
      raise APIError(404, f"The model {name!r} does not exist (this server serves {served!r})",
                     param="model", code="model_not_found")

  # -------------------------------------------------------------- endpoints
  def _health(self, path: str) -> None:
    engine = self.server.engine
    ok = engine.alive
    self._send_json(200 if ok else 503, {"status": "ok" if ok else "worker stopped",
                                         "model": engine.model.name, "queue": engine.metrics()["queue"]})

  def _model_card(self) -> dict:
    sm = self.server.engine.model
    return {"id": sm.name, "object": "model", "created": int(self.server.started), "owned_by": "jaxmodels",
            "capabilities": {"chat": True, "vision": sm.reads_images, "image_generation": sm.generates,
                             "image_edits": sm.edit_why is None,
                             "image_size": f"{sm.output_side}x{sm.output_side}" if sm.generates else None,
                             "context_length": sm.context}}

  def _models(self, path: str) -> None:
    if path == "/v1/models":
      self._send_json(200, {"object": "list", "data": [self._model_card()]})
      return
    self._check_model(path[len("/v1/models/"):])
    self._send_json(200, self._model_card())

  def _metrics(self, path: str) -> None:
    self._send_json(200, self.server.engine.metrics())

  def _chat(self, path: str) -> None:
    opts = self.server.options
    req = schema.chat_request(self._json_body(), opts.limits, opts.image_root)
    self._check_model(req.model)
    sm = self.server.engine.model
    work = sm.chat_work(req, self._deadline())
    ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if req.stream:
      self._stream(work, req, ident, created)
      return
    results = self._wait(work)
    choices = [_finish(sm, r, req.stop) for r in results]
    self._send_json(200, {
        "id": ident, "object": "chat.completion", "created": created, "model": sm.name,
        "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                     "finish_reason": reason, "logprobs": None} for i, (text, reason) in enumerate(choices)],
        "usage": _usage(work, results)})

  def _stream(self, work: Work, req, ident: str, created: int) -> None:
    """Server-sent events as the decode goes: a role delta per choice, content deltas after every
    decoded chunk (text that could start a stop sequence is held back), each choice's finish reason,
    the usage chunk (stream_options.include_usage), then [DONE]. Errors after the headers are an
    `{"error": ...}` event; a client that stops reading cancels the work."""
    engine, sm = self.server.engine, self.server.engine.model
    work.updates = queue.Queue()
    self._arriving = False
    engine.submit(work, arrived=True)    # a 429 is still a plain JSON error here
    self.send_response(200)
    self.send_header("Content-Type", "text/event-stream")
    self.send_header("Cache-Control", "no-cache")
    self.send_header("Connection", "close")
    self.end_headers()
    self.close_connection = True
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": sm.name}
    hold = max((len(s) for s in req.stop), default=1) - 1

    def send(payload: dict) -> None:
      try:
        self.wfile.write(b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n")
        self.wfile.flush()
      except OSError:
        engine.cancel(work, "client_disconnects")
        raise ConnectionResetError("client disconnected") from None

    def delta(i: int, text: str) -> None:
      if text.startswith(sent[i]) and len(text) > len(sent[i]):
        send({**base, "choices": [{"index": i, "delta": {"content": text[len(sent[i]):]},
                                   "finish_reason": None}]})
        sent[i] = text

    sent = [""] * len(work.rows)
    for i in range(len(work.rows)):
      send({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]})
    while not (work.done.is_set() and work.updates.empty()):
      try:
        snapshot = work.updates.get(timeout=0.05)
      except queue.Empty:
        if time.monotonic() > work.deadline:
          engine.cancel(work, "timeouts")
          send(APIError(408, "request timed out", type="timeout_error", code="timeout").body())
          return
        continue
      for i, tokens in enumerate(snapshot):
        text = sm.decode(tokens)
        cut = [text.index(s) for s in req.stop if s in text]
        delta(i, text[:min(cut)] if cut else text[:max(0, len(text) - hold)].rstrip("\ufffd"))
    if work.error is not None:
      err = work.error if isinstance(work.error, APIError) else APIError(500, "internal error")
      send(err.body())
      return
    results = work.result
    for i, r in enumerate(results):
      text, reason = _finish(sm, r, req.stop)
      delta(i, text)
      send({**base, "choices": [{"index": i, "delta": {}, "finish_reason": reason}]})
    if req.include_usage:
      send({**base, "choices": [], "usage": _usage(work, results)})
    try:
      self.wfile.write(b"data: [DONE]\n\n")
      self.wfile.flush()
    except OSError:
      pass

  def _images_reply(self, work: Work) -> None:
    images = self._wait(work)
    self._send_json(200, {"created": int(time.time()),
                          "data": [{"b64_json": _png_b64(img), "revised_prompt": None} for img in images]})

  def _generate(self, path: str) -> None:
    req = schema.image_request(self._json_body(), self.server.options.limits)
    self._check_model(req.model)
    self._images_reply(self.server.engine.model.image_work(req, self._deadline(), edit=False))

  def _edit(self, path: str) -> None:
    limits, sm = self.server.options.limits, self.server.engine.model
    raw = self._body()
    if sm.edit_why or not sm.generates:   # refused before any image is decoded
      raise bad(None, sm.edit_why or "this model does not generate images", code="unsupported")
    ctype = self.headers.get("Content-Type", "")
    if ctype.lower().startswith("multipart/form-data"):
      body = schema.form_to_body(schema.parse_multipart(raw, ctype), limits)
    else:
      body = schema.parse_json(raw)
      if isinstance(body.get("image"), str):
        body["image"] = schema.image_from_url(body["image"], "image", limits, self.server.options.image_root)
      elif body.get("image") is not None:
        raise bad("image", "expected a data: URL string (or send multipart/form-data)")
    req = schema.image_request(body, limits, edit=True)
    self._check_model(req.model)
    self._images_reply(self.server.engine.model.image_work(req, self._deadline(), edit=True))
