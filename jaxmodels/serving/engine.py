"""Dynamic batching of requests into bucketed, compiled model calls.

One worker thread owns the model. Requests (`Work`) wait in a bounded queue; the worker takes the
oldest, waits up to `max_wait_s` for more with the same batch key (the kind, and for images the
settings a compiled sampler fixes: flow steps and guidance; chat rows carry their own temperature,
top_p and seed), and runs up to `max_batch` rows as one call. It waits only while more may come: a
request is still arriving (the HTTP layer calls `begin_arrival` when one starts, `submit` ends it)
or the last batch held several requests (a burst); a lone request on an idle server runs at once.
Chat decodes in compiled chunks (decode.py): each chunk's tokens go to streaming clients at once,
and the batch stops when every row has finished (eos, its max_tokens or a stop sequence) or every
client has left.

Shapes are bucketed so a stream of varying requests compiles a bounded set of programs: batch rows
to `batch_buckets` (padded by repeating a row), prompt tokens and new tokens to powers of two,
images per chat row to 0/1/2/4... Each new program (kind, shapes, settings) is logged once and
counted (`metrics()["programs"]`); XLA compilations in the worker thread are counted too.

A request is dropped unrun when its client left or its deadline passed while queued; a failing
batch is retried row by row, so one bad request fails alone and the worker carries on.

    engine = Engine(ServingModel(loaded), max_batch=32, max_wait_s=0.01, max_queue=256)
    work = engine.submit(engine.model.chat_work(request, deadline))   # APIError 429 when full
    work.done.wait(); work.result
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from input_pipeline.shapes_tasks import edit_ids, left_pad, to_unit_range
from input_pipeline.tokenizers import IMAGE_SLOT
from jaxmodels.config_schema import data_section
from jaxmodels.serving.decode import ChunkedDecoder
from jaxmodels.serving.schema import APIError, ChatRequest, ImageRequest, bad, parse_size
from jaxmodels.layers import splice_image_tokens
from jaxmodels.unified.sampling import sample_edits, sample_images, to_uint8

log = logging.getLogger("jaxmodels.serving")


# End-of-turn tokens of the chat formats (input_pipeline.tokenizers): a reply ends at any of them.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>", "<|eom_id|>")


def bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n (the caller has checked n against the largest)."""
  for b in buckets:
    if b >= n:
      return b
  raise ValueError(f"{n} is over the largest bucket {buckets[-1]}")


def powers_of_two(lo: int, hi: int) -> tuple[int, ...]:
  """lo, 2·lo, 4·lo, ... with `hi` as the last bucket."""
  out, b = [], lo
  while b < hi:
    out.append(b)
    b *= 2
  return tuple(out) + (hi,)


@nnx.jit
def _chat_embeddings(model, ids, pixels):
  """ids [B, T] with k·n image placeholders at most per row, pixels [B, k, S, S, 3] in [-1, 1] ->
  embeddings [B, T, D]: the i-th placeholder of a row gets token i of its images' n·k tokens."""
  b, k = pixels.shape[:2]
  tokens = model.image_tokens(pixels.reshape((b * k,) + pixels.shape[2:]))
  tokens = tokens.reshape(b, k * tokens.shape[1], tokens.shape[-1])
  return splice_image_tokens(model.llm.embed(ids), ids, tokens, model.config.image_token_id)


@dataclasses.dataclass
class Work:
  """One request in the queue: `rows` (one per choice / image) share its batch `key`."""
  kind: str
  key: tuple
  rows: list
  deadline: float
  seed: int | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  enqueued: float = dataclasses.field(default_factory=time.monotonic)
  done: threading.Event = dataclasses.field(default_factory=threading.Event)
  updates: Any = None        # a queue.Queue for streaming: per chunk, the rows' tokens so far
  result: Any = None
  error: Exception | None = None
  cancelled: bool = False

  def finish(self, result=None, error=None):
    self.result, self.error = result, error
    self.done.set()


class ServingModel:
  """A restored run's model + tokenizer: requests -> `Work` rows, and a batch of rows -> outputs.

  Capabilities: chat always; images in chat when the model has an image input path; generation when
  it generates pixels; edits when it also reads images into generation prompts and (edits="auto")
  its run trained on edits (ShapesWorld `data.edit_fraction` > 0), or edits="on"."""

  def __init__(self, loaded, *, limits, edits: str = "auto", seed: int = 0, chunk: int = 8):
    self.model, self.tok, self.config, self.name = loaded.model, loaded.tokenizer, loaded.config, loaded.name
    c = self.model.config
    self.limits = limits
    self.context = c.llm.max_position_embeddings
    self.reads_images = self.model.und_encoder is not None or self.model.image_tokenizer is not None
    self.image_side = (c.und_encoder.image_size if c.und_encoder is not None
                       else c.image_tokenizer.encoder.image_size if c.image_tokenizer is not None else 0)
    self.n_image = self.model.num_image_tokens if self.reads_images else 0
    self.n_edit_image = getattr(self.model, "num_edit_image_tokens", self.n_image) if self.reads_images else 0
    self.generates = bool(c.generates_pixels)
    self.output_side = c.output_image_size if self.generates else 0
    data = data_section(self.config.get("data"), also="shapes_world")
    trained = data.name == "shapes_world" and data.edit_fraction > 0
    self.edit_why = None
    if not (self.generates and self.reads_images):
      self.edit_why = "this model does not edit (it has no image input path into generation)"
    elif edits == "off" or (edits == "auto" and not trained):
      self.edit_why = ("this model does not edit (its run did not train on edits: "
                       "config.data.edit_fraction=0; start with --edits=on to force)"
                       if edits == "auto" else "editing is turned off on this server (--edits=off)")
    self.default_steps = int(self.config.evals.sample_steps)
    self.default_guidance = float(self.config.evals.guidance)
    self.gen_len = int(data.gen_len)
    self.edit_layout = data.edit_layout
    self.base_key = jax.random.key(seed)
    self.pad = self.tok.pad_id if getattr(self.tok, "pad_id", None) is not None else 0
    self.decoder = ChunkedDecoder(self.model.llm, eos_id=self._stop_ids(), pad_id=self.pad, chunk=chunk)
    self.chunk = chunk
    self.eos = {int(t) for t in np.asarray(self.decoder.eos_ids)}
    self.lengths = powers_of_two(16, self.context)
    # New-token buckets: powers of two, whole chunks (the decode stops early anyway).
    self.new_tokens = tuple(-(-b // chunk) * chunk for b in powers_of_two(16, max(16, limits.max_tokens)))
    self._works = itertools.count(1)
    self.image_counts = (0,) + powers_of_two(1, max(1, limits.max_images))

  def _stop_ids(self) -> list[int] | None:
    """The ids that end a reply: eos and the chat format's end-of-turn tokens the vocabulary has
    (None: the LLM config's eos). A Hugging Face tokenizer needs a chat format to serve chat."""
    from jaxmodels.errors import ConfigError
    if hasattr(self.tok, "tokenizer") and not getattr(self.tok, "can_chat", False):
      raise ConfigError(f"{getattr(self.tok, 'path', 'tokenizer')}: no chat template and no chat format "
                        f"detected; set config.data.chat_format (serving renders conversations in it)")
    ids = {self.tok.eos_id} if self.tok.eos_id is not None else set()
    for token in END_OF_TURN:
      tid = self.tok.token_to_id(token)
      if tid is not None:
        ids.add(int(tid))
    return sorted(ids) or None

  # -------------------------------------------------------------- requests -> work
  def _bos(self, ids: list[int]) -> list[int]:
    bos = getattr(self.tok, "bos_id", None)
    return ([bos] if bos is not None and (not ids or ids[0] != bos) else []) + ids

  def chat_work(self, req: ChatRequest, deadline: float) -> Work:
    """Tokenises the conversation (the run's chat layout; each image = n placeholders) -> n rows."""
    if req.images and not self.reads_images:
      raise bad("messages", "this model reads no images")
    ids, _ = self.tok.encode_chat_with_images(req.messages, add_generation_prompt=True)
    ids = self._bos(ids) if not getattr(self.tok, "can_chat", False) else ids
    image_id = self.model.config.image_token_id
    prompt = [t for i in ids for t in ([image_id] * self.n_image if i == IMAGE_SLOT else [i])]
    room = self.context - len(prompt)
    max_tokens = min(self.limits.max_tokens, room) if req.max_tokens is None else req.max_tokens
    if max_tokens > room or room <= 0:
      raise bad("messages", f"this model's context is {self.context} tokens; the prompt has "
                            f"{len(prompt)} and max_tokens asks {max_tokens}",
                code="context_length_exceeded")
    pixels = [to_unit_range(img, self.image_side) for img in req.images]
    base = (jax.random.key(req.seed % (2 ** 32)) if req.seed is not None
            else jax.random.fold_in(self.base_key, next(self._works)))
    rows = [dict(ids=prompt, pixels=pixels, max_tokens=max_tokens, temperature=req.temperature,
                 top_p=req.top_p, key=jax.random.fold_in(base, j), stop=req.stop) for j in range(req.n)]
    return Work("chat", ("chat",), rows, deadline, req.seed,
                meta=dict(stop=req.stop, prompt_tokens=len(prompt)))

  def image_work(self, req: ImageRequest, deadline: float, *, edit: bool) -> Work:
    if not self.generates:
      raise bad(None, "this model does not generate images", code="unsupported")
    if edit and self.edit_why:
      raise bad(None, self.edit_why, code="unsupported")
    parse_size(req.size, self.output_side)
    steps = req.steps or self.default_steps
    guidance = self.default_guidance if req.guidance is None else req.guidance
    text = self.tok.encode(req.prompt)
    if edit:
      image_guidance = 1.5 if req.image_guidance is None else req.image_guidance
      ids = self._bos(edit_ids([], [self.model.config.image_token_id] * self.n_edit_image, text,
                               self.edit_layout))
      row = dict(ids=ids, pixels=to_unit_range(req.image, self.image_side))
      key = ("edit", steps, guidance, image_guidance)
    else:
      ids, key = self._bos(text), ("image", steps, guidance)
      row = dict(ids=ids)
    if len(ids) > self.lengths[-1]:
      raise bad("prompt", f"{len(ids)} tokens; this model reads at most {self.lengths[-1]}",
                code="context_length_exceeded")
    return Work("edit" if edit else "image", key, [row] * req.n, deadline, req.seed)

  # -------------------------------------------------------------- batches -> outputs
  def rng_for(self, works: Sequence[Work], counter: int) -> jax.Array:
    """The images' noise key: a request's own seed when it runs alone (reproducible), else a fresh
    key per batch (chat rows carry their own keys: `chat_work`)."""
    if len(works) == 1 and works[0].seed is not None:
      return jax.random.key(works[0].seed % (2 ** 32))
    return jax.random.fold_in(self.base_key, counter)

  def run(self, works: Sequence[Work], batch: int, rng: jax.Array) -> tuple[str, list]:
    """Runs the works' rows padded to `batch` rows -> (the program's shapes and settings as text,
    one result per work: chat [{"tokens", "eos"}] per choice, images uint8 [S, S, 3] per image)."""
    rows = [r for w in works for r in w.rows]
    rows = rows + [rows[-1]] * (batch - len(rows))
    kind = works[0].kind
    if kind == "chat":
      program, out = self._chat(rows, works)
    else:
      program, out = self._images(rows, works[0], rng, edit=kind == "edit")
    results, i = [], 0
    for w in works:
      results.append(out[i:i + len(w.rows)])
      i += len(w.rows)
    return program, results

  def _chat(self, rows, works: Sequence[Work]):
    """Prefill + chunked decode of `rows` (the works' rows, then padding copies of the last)."""
    length = bucket(max(len(r["ids"]) for r in rows), self.lengths)
    new = bucket(max(r["max_tokens"] for r in rows), self.new_tokens)
    k = bucket(max(len(r["pixels"]) for r in rows), self.image_counts)
    prompts = [left_pad(r["ids"], length, self.pad) for r in rows]
    ids = jnp.asarray(np.stack([p[0] for p in prompts]))
    mask = jnp.asarray(np.stack([p[1] for p in prompts]))
    embeds = None
    if k:
      s = self.image_side
      pixels = np.zeros((len(rows), k, s, s, 3), np.float32)
      for i, r in enumerate(rows):
        for j, p in enumerate(r["pixels"]):
          pixels[i, j] = p
      embeds = _chat_embeddings(self.model, ids, jnp.asarray(pixels))
    positions = self.model.answer_positions(ids, mask) if k else None   # M-RoPE on Qwen2.5-VL towers
    live = sum(len(w.rows) for w in works)
    out = [[] for _ in rows]
    finished = [i >= live for i in range(len(rows))]    # padding rows never count
    eos = [False] * len(rows)
    for chunk in self.decoder.run(ids, mask, embeds, new_tokens=new,
                                  temperature=[r["temperature"] for r in rows],
                                  top_p=[r["top_p"] for r in rows],
                                  keys=jnp.stack([r["key"] for r in rows]), positions=positions):
      for i, r in enumerate(rows):
        if finished[i]:
          continue
        for t in chunk[i]:
          out[i].append(int(t))
          if int(t) in self.eos:
            eos[i] = finished[i] = True
            break
          if len(out[i]) >= r["max_tokens"]:
            finished[i] = True
            break
        if not finished[i] and r["stop"] and any(st in self.decode(out[i]) for st in r["stop"]):
          finished[i] = True
      self._publish(works, out)
      if all(finished) or all(w.cancelled for w in works):
        break
    program = f"chat batch={len(rows)} prompt={length} new={new} images={k}"
    return program, [dict(tokens=t, eos=e) for t, e in zip(out, eos)]

  @staticmethod
  def _publish(works: Sequence[Work], out: list) -> None:
    """Each streaming work gets a copy of its rows' tokens so far."""
    i = 0
    for w in works:
      if w.updates is not None and not w.cancelled:
        w.updates.put([list(t) for t in out[i:i + len(w.rows)]])
      i += len(w.rows)

  def _images(self, rows, head: Work, rng, *, edit: bool):
    length = bucket(max(len(r["ids"]) for r in rows), [b for b in self.lengths if b >= self.gen_len]
                    or self.lengths[-1:])
    prompts = [left_pad(r["ids"], length, self.pad) for r in rows]
    ids = jnp.asarray(np.stack([p[0] for p in prompts]))
    mask = jnp.asarray(np.stack([p[1] for p in prompts]))
    if edit:
      _, steps, guidance, image_guidance = head.key
      cond = jnp.asarray(np.stack([r["pixels"] for r in rows]))
      x = sample_edits(self.model, ids, mask, rng, cond, steps, guidance, image_guidance)
    else:
      _, steps, guidance = head.key
      x = sample_images(self.model, ids, mask, rng, steps, guidance)
    settings = " ".join(f"{n}={v}" for n, v in zip(("steps", "guidance", "image_guidance"), head.key[1:]))
    return f"{head.key[0]} batch={len(rows)} prompt={length} {settings}", list(to_uint8(x))

  def decode(self, tokens: Sequence[int]) -> str:
    specials = self.eos | {t for t in (getattr(self.tok, "pad_id", None), getattr(self.tok, "bos_id", None))
                           if t is not None}
    return self.tok.decode([t for t in tokens if t not in specials]).strip()


class Engine:
  """The queue and the worker thread around a `ServingModel` (see the module docstring)."""

  def __init__(self, model: ServingModel, *, max_batch: int = 32, max_wait_s: float = 0.01,
               max_queue: int = 256, batch_buckets: Sequence[int] | None = None):
    self.model = model
    self.batch_buckets = tuple(sorted(batch_buckets or powers_of_two(1, max_batch)))
    self.max_batch = self.batch_buckets[-1]
    self.max_wait_s, self.max_queue = max_wait_s, max_queue
    self._queue: collections.deque[Work] = collections.deque()
    self._cond = threading.Condition()
    self._running = 0
    self._arriving = 0        # requests being read / validated by the HTTP layer, not yet queued
    self._last_batch = 0      # requests in the last batch
    self._paused = False
    self._stop = False
    self._programs: dict[str, int] = {}   # program (shapes + settings) -> batches run
    self._counts = collections.Counter({k: 0 for k in (
        "requests_chat", "requests_image", "requests_edit", "batches", "batch_rows", "errors", "timeouts",
        "timeouts_queued", "client_disconnects", "rejected_queue_full")})
    self._compiles = 0
    self._thread = threading.Thread(target=self._loop, name="jaxmodels-serve-engine", daemon=True)
    jax.monitoring.register_event_duration_secs_listener(self._on_compile)
    self._thread.start()

  def _on_compile(self, event: str, duration: float, **kwargs) -> None:
    if event == "/jax/core/compile/backend_compile_duration" and threading.current_thread() is self._thread:
      self._compiles += 1

  # -------------------------------------------------------------- client side
  def begin_arrival(self) -> None:
    """A request has started arriving; `submit(..., arrived=True)` or `end_arrival` ends it."""
    with self._cond:
      self._arriving += 1

  def end_arrival(self) -> None:
    with self._cond:
      self._arriving -= 1
      self._cond.notify_all()

  def submit(self, work: Work, *, arrived: bool = False) -> Work:
    """Queues `work`; APIError 429 when the queue (waiting + running) is full. `arrived`: ends the
    `begin_arrival` of this request (whatever the outcome)."""
    if arrived:
      self.end_arrival()
    if len(work.rows) > self.max_batch:
      raise bad("n", f"{len(work.rows)} rows are over this server's batch of {self.max_batch}")
    with self._cond:
      if self._stop:
        raise APIError(503, "the server is shutting down", type="server_error")
      if len(self._queue) + self._running >= self.max_queue:
        self._counts["rejected_queue_full"] += 1
        raise APIError(429, f"the request queue is full ({self.max_queue}); retry later",
                       type="rate_limit_error", code="queue_full")
      self._queue.append(work)
      self._counts[f"requests_{work.kind}"] += 1
      self._cond.notify_all()
    return work

  def cancel(self, work: Work, reason: str) -> None:
    """The client is gone or its deadline passed: the work is dropped if still queued."""
    work.cancelled = True
    with self._cond:
      self._counts[reason] += 1
      self._cond.notify_all()

  def set_paused(self, paused: bool) -> None:
    """Holds (or releases) the worker between batches: requests queue up (maintenance, tests)."""
    with self._cond:
      self._paused = paused
      self._cond.notify_all()

  def close(self) -> None:
    with self._cond:
      self._stop = True
      for w in self._queue:
        w.finish(error=APIError(503, "the server is shutting down", type="server_error"))
      self._queue.clear()
      self._cond.notify_all()
    self._thread.join(timeout=30)
    jax.monitoring.unregister_event_duration_listener(self._on_compile)

  def metrics(self) -> dict:
    with self._cond:
      return {"queue": len(self._queue), "running": self._running, "max_queue": self.max_queue,
              "max_batch": self.max_batch, "batch_buckets": list(self.batch_buckets),
              "programs": len(self._programs), "xla_compiles": self._compiles,
              "program_runs": dict(self._programs), **dict(self._counts)}

  # -------------------------------------------------------------- worker
  def _take(self) -> list[Work] | None:
    """Blocks until a batch is ready: the oldest live work plus same-key works, up to max_batch rows,
    once the batch is full or the oldest has waited max_wait_s."""
    with self._cond:
      while True:
        now = time.monotonic()
        for w in list(self._queue):
          if w.cancelled or now > w.deadline:
            self._queue.remove(w)
            if not w.cancelled:
              self._counts["timeouts_queued"] += 1
            w.finish(error=APIError(408, "request timed out in the queue", type="timeout_error",
                                    code="timeout"))
        if self._stop:
          return None
        if self._queue and not self._paused:
          head = self._queue[0]
          same = [w for w in self._queue if w.key == head.key]
          rows = sum(len(w.rows) for w in same)
          wait = head.enqueued + self.max_wait_s - now
          more = self._arriving > 0 or self._last_batch > 1
          if rows >= self.max_batch or wait <= 0 or not more:
            batch, total = [], 0
            for w in same:
              if total + len(w.rows) > self.max_batch:
                break
              batch.append(w)
              total += len(w.rows)
            for w in batch:
              self._queue.remove(w)
            self._running = self._last_batch = len(batch)
            return batch
          self._cond.wait(timeout=wait)
        else:
          self._cond.wait(timeout=0.5)

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def _loop(self) -> None:
    counter = 0
    while True:
      try:
        batch = self._take()
      except Exception:   # noqa: BLE001 - a bug here must not leave the queue without a worker
        log.exception("the batcher failed to take a batch; carrying on")
        time.sleep(0.1)
        continue
      if batch is None:
        return
      counter += 1
      try:
        self._run(batch, counter)
      except Exception:   # noqa: BLE001
        log.exception("a batch failed outside the model call")
        for w in batch:
          if not w.done.is_set():
            w.finish(error=APIError(500, "internal server error", type="server_error"))
      finally:
        with self._cond:
          self._running = 0

  def _run(self, works: list[Work], counter: int) -> None:
    rows = sum(len(w.rows) for w in works)
    size = bucket(rows, self.batch_buckets)
    try:
      t0 = time.perf_counter()
      program, results = self.model.run(works, size, self.model.rng_for(works, counter))
      with self._cond:
        self._note(program, time.perf_counter() - t0)
        self._counts["batches"] += 1
        self._counts["batch_rows"] += rows
      for w, r in zip(works, results):
        w.finish(result=r)
    except Exception as e:   # noqa: BLE001 - one request's failure must not stop the worker
      if len(works) > 1:     # find the failing request: each alone
        for w in works:
          self._run([w], counter)
        return
      log.error("request failed (%s: %s)", type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "",
                exc_info=log.isEnabledFor(logging.DEBUG))
      with self._cond:
        self._counts["errors"] += 1
      works[0].finish(error=APIError(500, f"the model call failed ({type(e).__name__}); the server "
                                          f"log has the details", type="server_error"))

  def _note(self, program: str, seconds: float) -> None:
    if program not in self._programs:
      self._programs[program] = 0
      log.info("program %d: %s (first run %.2fs; XLA compiles so far: %d)", len(self._programs), program,
               seconds, self._compiles)
    self._programs[program] += 1
