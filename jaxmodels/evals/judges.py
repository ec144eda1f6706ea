"""Judges for ROVER-style scoring: the `Judge` interface, the score parser, and an
OpenAI-compatible HTTP judge built on the standard library only (shared/spec/evals.md §3.3).

A judge gets one rubric text, the images in rubric order, and the JSON key the rubric asks for
(e.g. "reasoning_visual_score"); it returns a `JudgeReply` whose `score` is an int 1–5, or None
when no valid score could be obtained. None is *missing*: it is left out of that metric's mean,
never counted as 0.

Example:
  judge = OpenAIJudge("https://api.openai.com/v1", "gpt-4.1")   # key from $OPENAI_API_KEY
  reply = judge.judge(rubric_text, [original_png, generated_png], "reasoning_visual_score")
  reply.score, reply.reasoning
"""
from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Callable, Protocol, Sequence

from jaxmodels.evals import EvalInputError


@dataclasses.dataclass
class JudgeReply:
  """One judge verdict: `score` 1–5 or None (missing), the judge's `reasoning`, the `raw` reply
  text and, on failure, an `error` description (never containing credentials)."""
  score: int | None
  reasoning: str | None = None
  raw: str | None = None
  error: str | None = None


class Judge(Protocol):
  """Anything that scores a rubric: an HTTP client (`OpenAIJudge`) or a local model.

  `judge` must not raise for judge-side failures (network, unparsable replies); it returns a
  reply with `score=None` and an `error` instead. `describe()` returns JSON-able settings for the
  run record (model, endpoint; never secrets).
  """

  def judge(self, prompt: str, images: Sequence[bytes], score_key: str) -> JudgeReply:
    ...

  def describe(self) -> dict:
    ...


# --------------------------------------------------------------------------- parsing

def _valid(value) -> int | None:
  """An integer 1–5 from a JSON value or string ("4", 4, 4.0); anything else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, str):
    value = value.strip()
    if not re.fullmatch(r"[1-5](?:\.0+)?", value):
      return None
    value = float(value)
  if isinstance(value, (int, float)) and float(value).is_integer() and 1 <= value <= 5:
    return int(value)
  return None


def _from_object(data, score_key: str) -> tuple[int | None, str | None]:
  if not isinstance(data, dict):
    return None, None
  reasoning = data.get("reasoning")
  return _valid(data.get(score_key)), reasoning if isinstance(reasoning, str) else None


def parse_score(text: str | None, score_key: str) -> tuple[int | None, str | None]:
  """(score, reasoning) from a judge reply, trying in order (evals.md §3.3):

  1. the whole reply as JSON (also inside a ```json fence);
  2. the reply with one layer of doubled braces removed ("{{ ... }}", from rubric templates);
  3. the first flat JSON object in the text that contains `score_key`;
  4. regex fallbacks, first match wins: "<score_key>: N" (also "is N", "= N", and with the
     underscores read as spaces), "N/5", "N out of 5", "score: N", "rating: N".
  Only integers 1–5 are accepted at every step (a 0, 7 or 3.5 is no score); reasoning comes from
  the JSON "reasoning" field, or the text after "reasoning:" in the fallback.

  Example:
    parse_score('{"image_quality_score": 4, "reasoning": "sharp"}', "image_quality_score")
    # -> (4, "sharp")
  """
  if not text or not text.strip():
    return None, None
  text = text.strip()
  fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
  candidates = [text] + ([fenced.group(1)] if fenced else [])
  for candidate in candidates:
    try:
      score, reasoning = _from_object(json.loads(candidate), score_key)
      if score is not None:
        return score, reasoning
    except json.JSONDecodeError:
      pass
  for candidate in candidates:
    if candidate.startswith("{{") and candidate.endswith("}}"):
      try:
        score, reasoning = _from_object(json.loads(candidate[1:-1]), score_key)
        if score is not None:
          return score, reasoning
      except json.JSONDecodeError:
        pass
  for m in re.finditer(r"\{[^{}]*\"" + re.escape(score_key) + r"\"[^{}]*\}", text, re.IGNORECASE):
    try:
      score, reasoning = _from_object(json.loads(m.group(0)), score_key)
    except json.JSONDecodeError:
      continue
    if score is not None:
      return score, reasoning
  spaced = re.escape(score_key.replace("_", " "))
  key = re.escape(score_key)
  n = r"(?<![\d.])([1-5])(?![\d]|[.,]\d)"  # a lone digit 1-5, not part of 3.5 or 15
  patterns = [rf"\"?{key}\"?\s*[:：=]\s*\"?{n}", rf"{key}\s+is\s+{n}",
              rf"{spaced}\s*(?:[:：=]|is)?\s*{n}", rf"{n}\s*/\s*5\b", rf"{n}\s+out\s+of\s+5\b",
              rf"\bscore\s*[:：=]?\s*{n}", rf"\brating\s*[:：=]?\s*{n}"]
  for pattern in patterns:
    m = re.search(pattern, text, re.IGNORECASE)
    if m:
      why = re.search(r"reasoning\"?\s*[:：]\s*(.+)", text, re.IGNORECASE | re.DOTALL)
      return int(m.group(1)), why.group(1).strip().strip('"') if why else None
  return None, None


# --------------------------------------------------------------------------- HTTP judge

def _mime(data: bytes) -> str:
  if data.startswith(b"\x89PNG"):
    return "image/png"
  if data.startswith(b"\xff\xd8"):
    return "image/jpeg"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "image/webp"
  if data[:3] == b"GIF":
    return "image/gif"
  return "image/png"


class _HttpFailure(Exception):
  def __init__(self, message: str, retry: bool):
    super().__init__(message)
    self.retry = retry


class OpenAIJudge:
  """An OpenAI-compatible chat-completions judge (OpenAI, Azure-compatible gateways, vLLM, ...).

  One user message: the rubric text first, then each image as a base64 data URL, temperature 0,
  `max_tokens` 3000 (evals.md §3.3). Each request is tried up to `api_attempts` times with backoff
  `backoff_scale * 2 ** min(attempt, 3)` seconds (as the official evaluator: 1, 2, 4, 8, 8 s) on
  network errors, timeouts, HTTP 408/409/429/5xx and empty replies; 400/401/403/404 fail at once.
  When a reply has no valid score, the judge is asked again, up to `parse_attempts` replies. All
  failures give `JudgeReply(score=None, error=...)`.

  The API key is read from the environment variable `api_key_env` at each request and only put
  in the Authorization header (api_key_env=None: no key, e.g. a local `serve.py` without one):
  it is not stored on the object, not returned by `describe()`, and
  scrubbed from any error text.

  Example:
    judge = OpenAIJudge("http://127.0.0.1:8000/v1", "Qwen2.5-VL-72B", api_key_env="LOCAL_KEY")
    judge = OpenAIJudge("http://127.0.0.1:8000/v1", "shapes_tiny", api_key_env=None, max_tokens=64)
  """

  def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
               temperature: float = 0.0, max_tokens: int = 3000, api_attempts: int = 5,
               parse_attempts: int = 3, backoff_scale: float = 1.0, timeout: float = 120.0,
               sleep: Callable[[float], None] = time.sleep):
    if not base_url or not model:
      raise EvalInputError("OpenAIJudge: base_url and model are required")
    if api_key_env and not os.environ.get(api_key_env):
      raise EvalInputError(f"OpenAIJudge: environment variable {api_key_env} (the API key) is "
                           f"not set")
    self.url = base_url.rstrip("/") + "/chat/completions"
    self.base_url, self.model, self.api_key_env = base_url, model, api_key_env
    self.temperature, self.max_tokens = temperature, max_tokens
    self.api_attempts, self.parse_attempts = max(1, api_attempts), max(1, parse_attempts)
    self.backoff_scale, self.timeout, self._sleep = backoff_scale, timeout, sleep

  def __repr__(self) -> str:
    return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r})"

  def describe(self) -> dict:
    return {"type": "openai_compatible", "base_url": self.base_url, "model": self.model,
            "temperature": self.temperature, "max_tokens": self.max_tokens,
            "api_key_env": self.api_key_env}

  def _scrub(self, text: str) -> str:
    key = os.environ.get(self.api_key_env) if self.api_key_env else None
    return text.replace(key, "***") if key and text else text

  def _post(self, body: bytes) -> str:
    headers = {"Content-Type": "application/json"}
    if self.api_key_env:   # None: a local endpoint without a key (serve.py without --api_key_env)
      headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
    request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
      raise _HttpFailure(f"HTTP {e.code} {e.reason}",
                         retry=e.code not in (400, 401, 403, 404)) from None
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError,
            ConnectionError) as e:
      raise _HttpFailure(f"network error: {getattr(e, 'reason', e)}", retry=True) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
      raise _HttpFailure("reply is not JSON", retry=True) from None
    try:
      content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
      raise _HttpFailure("reply has no choices[0].message.content", retry=True) from None
    if isinstance(content, list):  # some servers return content parts
      content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
      raise _HttpFailure("empty reply", retry=True)
    return content.strip()

  def complete(self, prompt: str, images: Sequence[bytes]) -> str:
    """One reply text for the rubric and images, with retries.

    Raises:
      RuntimeError: when every attempt failed (message scrubbed of the key).
    """
    content = [{"type": "text", "text": prompt}]
    for data in images:
      url = f"data:{_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"
      content.append({"type": "image_url", "image_url": {"url": url}})
    body = json.dumps({"model": self.model, "temperature": self.temperature,
                       "max_tokens": self.max_tokens,
                       "messages": [{"role": "user", "content": content}]}).encode("utf-8")
    last = "no attempt made"
    for attempt in range(self.api_attempts):
      try:
        return self._post(body)
      except _HttpFailure as e:
        last = self._scrub(str(e))
        if not e.retry:
          break
        if attempt + 1 < self.api_attempts:
          self._sleep(self.backoff_scale * 2 ** min(attempt, 3))
    raise RuntimeError(f"judge request failed after {attempt + 1} attempt(s): {last}")

  def judge(self, prompt: str, images: Sequence[bytes], score_key: str) -> JudgeReply:
    raw, error = None, None
    for _ in range(self.parse_attempts):
      try:
        raw = self.complete(prompt, images)
      except RuntimeError as e:
        return JudgeReply(None, None, raw, str(e))
      score, reasoning = parse_score(raw, score_key)
      if score is not None:
        return JudgeReply(score, self._scrub(reasoning) if reasoning else reasoning,
                          self._scrub(raw))
      error = f"no valid {score_key} (1-5) in reply"
    return JudgeReply(None, None, self._scrub(raw) if raw else raw, error)
