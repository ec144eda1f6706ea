"""Request validation for the OpenAI-compatible API: bodies -> typed requests, or an `APIError`.

Every error is an OpenAI-style JSON error naming the field (`param`), never a traceback:

    {"error": {"message": "messages[0].content[1].image_url.url: remote URLs are not fetched ...",
               "type": "invalid_request_error", "param": "messages[0].content[1].image_url.url",
               "code": null}}

Fields of OpenAI's schema that this server does not implement are refused by name ("not supported");
fields outside it are "Unrecognized request argument supplied: <name>", as OpenAI answers. Images
(chat `image_url` parts, edit uploads) are decoded here, in the request's thread, to uint8 [H, W, 3]
after a pixel-count check on the header (no decompression bomb is decoded).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
from typing import Any

import numpy as np


class APIError(Exception):
  """An HTTP error answered as OpenAI's {"error": {...}} body."""

  def __init__(self, status: int, message: str, *, param: str | None = None,
               type: str = "invalid_request_error", code: str | None = None):   # noqa: A002
    super().__init__(message)
    self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}


def bad(param: str | None, message: str, code: str | None = None) -> APIError:
  """A 400 naming `param` at the start of its message."""
  return APIError(400, f"{param}: {message}" if param else message, param=param, code=code)


@dataclasses.dataclass(frozen=True)
class Limits:
  """Request size limits (each refused with a 4xx naming the field)."""
  max_body_bytes: int = 20 << 20
  max_image_pixels: int = 4096 * 4096
  max_images: int = 4          # per chat request
  max_tokens: int = 256        # completion tokens per choice
  max_n: int = 4               # choices / images per request
  max_steps: int = 50          # flow sampling steps
  max_prompt_chars: int = 32768


# -------------------------------------------------------------------------------- typed fields

_KINDS = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list,
          "object": dict}


def typed(value: Any, kind: str, param: str):
  """`value` if it has JSON type `kind` (booleans are not numbers), else a 400 naming `param`."""
  ok = isinstance(value, _KINDS[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
  if not ok:
    got = "null" if value is None else type(value).__name__
    raise bad(param, f"expected {'an' if kind[0] in 'aeiou' else 'a'} {kind}, got {got}")
  return float(value) if kind == "number" else value


def _ranged(value, lo, hi, param):
  if not lo <= value <= hi:
    raise bad(param, f"{value} is out of range [{lo}, {hi}]")
  return value


def check_fields(body: dict, known: set, unsupported: dict, where: str = "") -> None:
  """Unknown fields -> OpenAI's "Unrecognized request argument"; known-but-unimplemented ones ->
  "not supported" unless their value is the harmless default (`unsupported` maps name -> allowed)."""
  for name, value in body.items():
    if name in known:
      continue
    if name in unsupported:
      if value is None or value in unsupported[name]:
        continue
      raise bad(f"{where}{name}", "not supported by this server", code="unsupported_parameter")
    raise APIError(400, f"Unrecognized request argument supplied: {where}{name}", param=f"{where}{name}",
                   code="unknown_parameter")


def parse_json(raw: bytes) -> dict:
  """The JSON object of a request body (400 with the position of a syntax error)."""
  try:
    body = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    raise bad(None, "the request body is not UTF-8") from None
  except json.JSONDecodeError as e:
    raise bad(None, f"We could not parse the JSON body of your request: {e.msg} at line {e.lineno} "
                    f"column {e.colno}", code="invalid_json") from None
  if not isinstance(body, dict):
    raise bad(None, "the JSON body must be an object")
  return body


# -------------------------------------------------------------------------------- images

def decode_image(data: bytes, param: str, limits: Limits) -> np.ndarray:
  """Encoded PNG/JPEG/... bytes -> uint8 [H, W, 3]; the pixel count is checked before decoding."""
  from PIL import Image
  try:
    with Image.open(io.BytesIO(data)) as img:
      w, h = img.size
      if w * h > limits.max_image_pixels:
        raise APIError(400, f"{param}: image of {w}x{h} pixels is over the limit of "
                            f"{limits.max_image_pixels}", param=param, code="image_too_large")
      return np.asarray(img.convert("RGB"), np.uint8)
  except APIError:
    raise
  except Exception:   # noqa: BLE001 - PIL raises many types for corrupt data
    raise bad(param, "not a readable image (PNG, JPEG, WebP, GIF, BMP)", code="invalid_image") from None


def image_from_url(url: str, param: str, limits: Limits, image_root: str | None) -> np.ndarray:
  """A chat image: a `data:` base64 URL, or a local path (`file://` or plain) under `image_root`."""
  if url.startswith("data:"):
    head, _, payload = url.partition(",")
    if not head.endswith(";base64") or not payload:
      raise bad(param, "a data URL must be data:<mime>;base64,<data>")
    try:
      data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
      raise bad(param, "invalid base64 in the data URL") from None
    return decode_image(data, param, limits)
  if url.startswith(("http://", "https://", "ftp://")):
    raise bad(param, "remote URLs are not fetched by this server (it has no network access); send a "
                     "data:image/...;base64 URL or a local file path", code="remote_url")
  path = url[len("file://"):] if url.startswith("file://") else url
  if image_root is None:
    raise bad(param, "local file paths are refused unless the server runs with --image_root=DIR "
                     "(files under DIR)", code="local_file")
  real, root = os.path.realpath(path), os.path.realpath(image_root)
  if os.path.commonpath([real, root]) != root:
    raise bad(param, "local files must lie under the server's --image_root", code="local_file")
  if not os.path.isfile(real):
    raise bad(param, "no such local file", code="local_file")
  if os.path.getsize(real) > limits.max_body_bytes:
    raise bad(param, "file over the body size limit", code="image_too_large")
  with open(real, "rb") as f:
    return decode_image(f.read(), param, limits)


# -------------------------------------------------------------------------------- chat

@dataclasses.dataclass
class ChatRequest:
  """A validated chat completion: `messages` as (role, text with one "<image>" per image), images
  uint8 [H, W, 3] in order of appearance."""
  model: str | None
  messages: list[dict]
  images: list[np.ndarray]
  max_tokens: int | None      # None: as many as the context leaves (up to the limit)
  temperature: float
  top_p: float
  seed: int | None
  stop: list[str]
  n: int
  stream: bool
  include_usage: bool


_CHAT_KNOWN = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
               "seed", "stop", "n", "stream", "stream_options", "user"}
_CHAT_UNSUPPORTED = {"logprobs": (False,), "top_logprobs": (0,), "presence_penalty": (0, 0.0),
                     "frequency_penalty": (0, 0.0), "response_format": ({"type": "text"},),
                     "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "functions": ([],),
                     "function_call": ("none",), "parallel_tool_calls": (), "metadata": (),
                     "store": (False,), "service_tier": ("auto", "default"), "modalities": (["text"],),
                     "audio": (), "prediction": (), "reasoning_effort": (), "web_search_options": ()}
_ROLES = ("system", "developer", "user", "assistant")


def _content(content, param: str, limits: Limits, image_root, images: list) -> str:
  """A message's content (string or parts) -> text with "<image>" where each image part stands."""
  if isinstance(content, str):
    if "<image>" in content:
      raise bad(param, "the literal text <image> is reserved; send images as image_url parts")
    return content
  typed(content, "array", param)
  pieces = []
  for j, part in enumerate(content):
    where = f"{param}[{j}]"
    typed(part, "object", where)
    kind = typed(part.get("type"), "string", f"{where}.type")
    if kind == "text":
      check_fields(part, {"type", "text"}, {}, f"{where}.")
      text = typed(part.get("text"), "string", f"{where}.text")
      if "<image>" in text:
        raise bad(f"{where}.text", "the literal text <image> is reserved; send images as image_url parts")
      pieces.append(text)
    elif kind == "image_url":
      check_fields(part, {"type", "image_url"}, {}, f"{where}.")
      spec = part.get("image_url")
      if isinstance(spec, dict):
        check_fields(spec, {"url", "detail"}, {}, f"{where}.image_url.")
        url = typed(spec.get("url"), "string", f"{where}.image_url.url")
      else:
        url = typed(spec, "string", f"{where}.image_url")
      if len(images) >= limits.max_images:
        raise bad(f"{where}.image_url", f"more than {limits.max_images} images in one request",
                  code="too_many_images")
      images.append(image_from_url(url, f"{where}.image_url.url", limits, image_root))
      pieces.append("<image>")
    else:
      raise bad(f"{where}.type", f"{kind!r} parts are not supported (text, image_url)")
  return " ".join(p.strip() for p in pieces if p.strip())


def chat_request(body: dict, limits: Limits, image_root: str | None = None) -> ChatRequest:
  """Validates a /v1/chat/completions body (see the module docstring for the error form)."""
  check_fields(body, _CHAT_KNOWN, _CHAT_UNSUPPORTED)
  model = body.get("model")
  if model is not None:
    typed(model, "string", "model")
  raw = body.get("messages")
  if raw is None:
    raise bad("messages", "required")
  typed(raw, "array", "messages")
  if not raw:
    raise bad("messages", "must hold at least one message")
  messages, images = [], []
  for i, m in enumerate(raw):
    typed(m, "object", f"messages[{i}]")
    check_fields(m, {"role", "content", "name"}, {}, f"messages[{i}].")
    role = typed(m.get("role"), "string", f"messages[{i}].role")
    if role not in _ROLES:
      raise bad(f"messages[{i}].role", f"{role!r} is not supported ({', '.join(_ROLES)})")
    if m.get("content") is None:
      raise bad(f"messages[{i}].content", "required")
    text = _content(m["content"], f"messages[{i}].content", limits, image_root, images)
    if role != "user" and "<image>" in text:
      raise bad(f"messages[{i}].content", "images are only read in user messages")
    messages.append({"role": "system" if role == "developer" else role, "content": text})
  if sum(len(m["content"]) for m in messages) > limits.max_prompt_chars:
    raise bad("messages", f"over {limits.max_prompt_chars} characters of text", code="too_long")
  if "max_tokens" in body and "max_completion_tokens" in body:
    raise bad("max_completion_tokens", "give max_tokens or max_completion_tokens, not both")
  name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
  max_tokens = body.get(name)
  max_tokens = None if max_tokens is None else _ranged(
      typed(max_tokens, "integer", name), 1, limits.max_tokens, name)
  temperature = body.get("temperature")
  temperature = 1.0 if temperature is None else _ranged(typed(temperature, "number", "temperature"),
                                                        0.0, 2.0, "temperature")
  top_p = body.get("top_p")
  top_p = 1.0 if top_p is None else _ranged(typed(top_p, "number", "top_p"), 0.0, 1.0, "top_p")
  if top_p == 0.0:
    raise bad("top_p", "must be > 0")
  seed = body.get("seed")
  seed = None if seed is None else _ranged(typed(seed, "integer", "seed"), -(2 ** 63), 2 ** 63 - 1, "seed")
  stop = body.get("stop")
  if stop is None:
    stop = []
  elif isinstance(stop, str):
    stop = [stop]
  else:
    typed(stop, "array", "stop")
    if len(stop) > 4:
      raise bad("stop", "at most 4 sequences")
    stop = [typed(s, "string", f"stop[{i}]") for i, s in enumerate(stop)]
  stop = [s for s in stop if s]
  n = body.get("n")
  n = 1 if n is None else _ranged(typed(n, "integer", "n"), 1, limits.max_n, "n")
  stream = body.get("stream")
  stream = False if stream is None else typed(stream, "boolean", "stream")
  options = body.get("stream_options") or {}
  typed(options, "object", "stream_options")
  check_fields(options, {"include_usage", "include_obfuscation"}, {}, "stream_options.")
  include_usage = bool(typed(options.get("include_usage", False), "boolean", "stream_options.include_usage"))
  if body.get("user") is not None:
    typed(body["user"], "string", "user")
  return ChatRequest(model, messages, images, max_tokens, temperature, top_p, seed, stop, n, stream,
                     include_usage)


# -------------------------------------------------------------------------------- images

@dataclasses.dataclass
class ImageRequest:
  """A validated image generation or edit (`image` uint8 [H, W, 3] for an edit, else None)."""
  model: str | None
  prompt: str
  n: int
  size: str | None
  steps: int | None
  guidance: float | None
  image_guidance: float | None
  seed: int | None
  image: np.ndarray | None = None


_IMAGE_KNOWN = {"model", "prompt", "n", "size", "response_format", "user", "steps", "guidance", "seed"}
_IMAGE_UNSUPPORTED = {"quality": ("auto", "standard"), "style": (), "background": ("auto", "opaque"),
                      "output_format": ("png",), "output_compression": (100,), "moderation": ("auto",),
                      "partial_images": (0,), "stream": (False,)}
_GUIDANCE_GRID = 0.5   # one compiled sampler per guidance value: the values are kept on a grid


def _guidance(value, param: str):
  value = _ranged(typed(value, "number", param), 0.0, 20.0, param)
  if abs(value / _GUIDANCE_GRID - round(value / _GUIDANCE_GRID)) > 1e-9:
    raise bad(param, f"{value} is not a multiple of {_GUIDANCE_GRID} (each value is one compiled "
                     f"sampler, so the server keeps them on a grid)")
  return value


def image_request(body: dict, limits: Limits, *, edit: bool = False) -> ImageRequest:
  """Validates /v1/images/generations (JSON) or /v1/images/edits (form fields already typed by
  `form_to_body`, the uploaded image decoded under "image")."""
  known = _IMAGE_KNOWN | ({"image", "image_guidance"} if edit else set())
  check_fields(body, known, {**_IMAGE_UNSUPPORTED, **({"mask": (), "input_fidelity": ()} if edit else {})})
  if body.get("model") is not None:
    typed(body["model"], "string", "model")
  if body.get("prompt") is None:
    raise bad("prompt", "required")
  prompt = typed(body["prompt"], "string", "prompt")
  if not prompt.strip():
    raise bad("prompt", "must not be empty")
  if len(prompt) > limits.max_prompt_chars:
    raise bad("prompt", f"over {limits.max_prompt_chars} characters", code="too_long")
  n = body.get("n")
  n = 1 if n is None else _ranged(typed(n, "integer", "n"), 1, limits.max_n, "n")
  size = body.get("size")
  size = None if size in (None, "auto") else typed(size, "string", "size")
  fmt = body.get("response_format")
  if fmt is not None and typed(fmt, "string", "response_format") != "b64_json":
    raise bad("response_format", f"{fmt!r}: this server returns images inline only (b64_json); it "
                                 f"hosts no URLs")
  steps = body.get("steps")
  steps = None if steps is None else _ranged(typed(steps, "integer", "steps"), 1, limits.max_steps, "steps")
  guidance = None if body.get("guidance") is None else _guidance(body["guidance"], "guidance")
  image_guidance = (None if body.get("image_guidance") is None
                    else _guidance(body["image_guidance"], "image_guidance"))
  seed = body.get("seed")
  seed = None if seed is None else typed(seed, "integer", "seed")
  image = body.get("image") if edit else None
  if edit and image is None:
    raise bad("image", "required (the image to edit)")
  return ImageRequest(body.get("model"), prompt, n, size, steps, guidance, image_guidance, seed, image)


_FORM_TYPES = {"n": int, "steps": int, "seed": int, "guidance": float, "image_guidance": float,
               "output_compression": int, "partial_images": int}


def parse_multipart(raw: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
  """multipart/form-data -> [(field name, filename or None, bytes)] (email's MIME parser)."""
  from email import policy
  from email.parser import BytesParser
  message = BytesParser(policy=policy.HTTP).parsebytes(
      b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
  if not message.is_multipart():
    raise bad(None, "malformed multipart/form-data body")
  parts = []
  for part in message.iter_parts():
    name = part.get_param("name", header="content-disposition")
    if not name:
      raise bad(None, "a multipart part has no field name")
    parts.append((str(name), part.get_filename(), part.get_payload(decode=True) or b""))
  return parts


def form_to_body(parts, limits: Limits) -> dict:
  """An edit's form fields as a JSON-like body: numbers parsed (400 naming the field), the upload
  under "image" decoded (exactly one; "image[]" is the list form OpenAI's client sends)."""
  body, images = {}, []
  for name, filename, data in parts:
    if name in ("image", "image[]"):
      images.append(decode_image(data, "image", limits))
      continue
    if filename is not None and name == "mask":
      body["mask"] = "file"
      continue
    text = data.decode("utf-8", errors="replace")
    if name in _FORM_TYPES:
      try:
        body[name] = _FORM_TYPES[name](text)
      except ValueError:
        raise bad(name, f"expected {'an integer' if _FORM_TYPES[name] is int else 'a number'}, "
                        f"got {text!r}") from None
    else:
      body[name] = text
  if len(images) > 1:
    raise bad("image", "one image per edit")
  if images:
    body["image"] = images[0]
  return body


def parse_size(size: str | None, side: int) -> None:
  """Checks an OpenAI `size` ("WxH") against the model's only size `side`x`side`."""
  if size is None:
    return
  if size != f"{side}x{side}":
    raise bad("size", f"{size!r}: this model makes {side}x{side} images only", code="invalid_size")
