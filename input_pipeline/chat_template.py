"""Hugging Face chat templates rendered with Jinja, the way `transformers` renders them.

A model's `chat_template` (from `tokenizer_config.json` or `chat_template.jinja`) is a Jinja program;
`ChatTemplate` compiles it once in a sandboxed environment set up as transformers sets up its own
(`transformers.utils.chat_template_utils`): `trim_blocks` and `lstrip_blocks` on, the loop-controls
extension (`{% break %}`, `{% continue %}`), a `tojson` filter that writes plain `json.dumps` output
(no HTML escaping; `indent`, `separators`, `sort_keys`, `ensure_ascii` accepted), and the globals
`raise_exception(message)` and `strftime_now(format)`. `{% generation %}...{% endgeneration %}`
blocks are understood and mark assistant output (`render_with_spans`).

  >>> tpl = ChatTemplate(open("chat_template.jinja").read(), origin="chat_template.jinja")
  >>> tpl.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
  ...            special_tokens={"bos_token": "<s>", "eos_token": "</s>"})

What the template sees: `messages` (plain dicts; keys whose value is None dropped; a message's
reasoning under any of `reasoning_content` / `thinking` / `reasoning` is given under all three, as
transformers does), `add_generation_prompt`, `tools=None`, `documents=None`, the special tokens
(`bos_token`, `eos_token`, ...), and any extra keyword (`enable_thinking=False`, `date_string=...`).
Out of scope: `tools` / `documents` contents, `continue_final_message`, batched conversations.

Errors (a template that does not compile, `raise_exception` inside it, a render that fails) raise
`ChatTemplateError` with one line naming the template's origin.
"""
from __future__ import annotations

import contextvars
import datetime
import functools
import json
import re
from typing import Any, Mapping, Sequence

from jaxmodels.errors import JaxModelsError

REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
# Markers around {% generation %} output while spans are being tracked (Unicode private use).
_OPEN, _CLOSE = "\ue000", "\ue001"
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(JaxModelsError):
  """A chat template does not compile, or a conversation cannot be rendered with it."""


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


_tracking: contextvars.ContextVar[bool] = contextvars.ContextVar("chat_template_tracking",
                                                                  default=False)


@functools.lru_cache(maxsize=1)
def _environment():
  """The sandboxed Jinja environment every template is compiled in (built once)."""
  import jinja2  # pylint: disable=g-import-not-at-top
  import jinja2.ext  # pylint: disable=g-import-not-at-top
  import jinja2.nodes  # pylint: disable=g-import-not-at-top
  import jinja2.utils  # pylint: disable=g-import-not-at-top
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top

  class Generation(jinja2.ext.Extension):
    """`{% generation %}body{% endgeneration %}`: renders body; marks it while spans are tracked."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

    def _mark(self, caller):
      text = caller()
      return f"{_OPEN}{text}{_CLOSE}" if _tracking.get() else text

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  class Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses attribute names starting with "_" (no reach into internals)."""

    def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
      self, rest = args[0], args[1:]
      attrs = dict(*rest, **kwargs)
      for key in attrs:
        Namespace._check(key)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, key, value):
      Namespace._check(key)
      jinja2.utils.Namespace.__setitem__(self, key, value)

    @staticmethod
    def _check(key):
      if isinstance(key, str) and key.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"namespace attribute {key!r} starts with '_'")

  class Dict:
    """`dict(...)` / `dict.fromkeys(...)` without exposing the `dict` type itself."""

    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals.update(raise_exception=raise_exception, strftime_now=_strftime_now,
                     namespace=Namespace, dict=Dict())
  return env


@functools.lru_cache(maxsize=32)
def _compile(source: str):
  return _environment().from_string(source)


def _plain(value: Any) -> Any:
  """JSON-like data only (str/int/float/bool/None, dicts, lists, tuples): what a template may see."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  item = getattr(value, "item", None)          # numpy scalars
  if callable(item) and getattr(value, "shape", None) == ():
    return _plain(item())
  return f"<{type(value).__name__}>"


def prepare_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
  """The messages as transformers hands them to a template: plain dicts, None-valued keys dropped,
  reasoning given under every name templates read it by."""
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise ChatTemplateError(f"messages[{i}]: expected a dict, got {type(message).__name__}")
    m = {k: v for k, v in _plain(message).items() if v is not None}
    reasoning = next((m[k] for k in REASONING_KEYS if m.get(k) is not None), None)
    if reasoning is not None:
      m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
    out.append(m)
  return out


def template_source(value: Any, *, origin: str, name: str | None = None) -> str | None:
  """The template text from a `chat_template` value: a string, or a list of {"name", "template"}
  (or a dict name -> template) from which `name` (default "default") is taken."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Sequence):
    named = {}
    for entry in value:
      if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
              and isinstance(entry.get("template"), str)):
        raise ChatTemplateError(f"{origin}: chat_template list entries must be "
                                "{\"name\": str, \"template\": str}")
      named[entry["name"]] = entry["template"]
    value = named
  if isinstance(value, Mapping):
    want = name or "default"
    if want not in value:
      raise ChatTemplateError(f"{origin}: no chat template named {want!r} "
                              f"(named: {sorted(value)})")
    return value[want]
  raise ChatTemplateError(f"{origin}: chat_template must be a string or a list of named templates, "
                          f"got {type(value).__name__}")


class ChatTemplate:
  """A compiled chat template.

  Args:
    source: the Jinja text.
    origin: where it came from (a file name), used in every error message.

  Raises:
    ChatTemplateError: the template does not compile.
  """

  def __init__(self, source: str, *, origin: str = "<chat template>"):
    import jinja2  # pylint: disable=g-import-not-at-top
    if not isinstance(source, str):
      raise ChatTemplateError(f"{origin}: chat template must be a string, got {type(source).__name__}")
    self.source, self.origin = source, origin
    try:
      self._template = _compile(source)
    except jinja2.TemplateSyntaxError as e:
      raise ChatTemplateError(f"{origin}: malformed chat template (line {e.lineno}: {e.message})") from e
    except jinja2.TemplateError as e:
      raise ChatTemplateError(f"{origin}: malformed chat template ({e})") from e
    self.has_generation_blocks = bool(_GENERATION_TAG.search(source))

  def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
             special_tokens: Mapping[str, str | None] | None = None, **kwargs) -> str:
    """The conversation as text, exactly as transformers' `apply_chat_template(..., tokenize=False)`.

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: end with the template's assistant header.
      special_tokens: bos_token / eos_token / ... strings (None values are left out).
      **kwargs: extra template variables (they override special tokens of the same name).
    """
    return self._render(messages, add_generation_prompt, special_tokens, kwargs, track=False)

  def _render(self, messages, add_generation_prompt, special_tokens, kwargs, *, track: bool) -> str:
    import jinja2  # pylint: disable=g-import-not-at-top
    context = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    context.update(_plain(dict(kwargs)))
    context.update(messages=prepare_messages(messages), tools=None, documents=None,
                   add_generation_prompt=bool(add_generation_prompt))
    reset = _tracking.set(track)
    try:
      return self._template.render(**context)
    except jinja2.TemplateError as e:
      raise ChatTemplateError(f"{self.origin}: {type(e).__name__}: {e}") from e
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:
      raise ChatTemplateError(f"{self.origin}: rendering failed ({type(e).__name__}: {e})") from e
    finally:
      _tracking.reset(reset)

  def render_with_spans(self, messages: Sequence[Mapping[str, Any]], *,
                        add_generation_prompt: bool = False,
                        special_tokens: Mapping[str, str | None] | None = None,
                        end_tokens: Sequence[str] = (), **kwargs) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character spans of assistant output (the loss targets).

    A template with `{% generation %}` blocks marks them itself. Otherwise each assistant message's
    span starts where the rendering of the messages before it, with the generation prompt, ends (that
    rendering must be a prefix of the whole text) and runs through the first of `end_tokens` after
    the message's content (the end-of-turn token is a target too), or to the end of the text.
    """
    if self.has_generation_blocks:
      marked = self._render(messages, add_generation_prompt, special_tokens, kwargs, track=True)
      return _strip_marks(marked, self.origin)
    text = self.render(messages, add_generation_prompt=add_generation_prompt,
                       special_tokens=special_tokens, **kwargs)
    spans = []
    for i, message in enumerate(messages):
      if message.get("role") != "assistant":
        continue
      prefix = self.render(messages[:i], add_generation_prompt=True, special_tokens=special_tokens,
                           **kwargs) if i else ""
      if not text.startswith(prefix):
        raise ChatTemplateError(
            f"{self.origin}: messages[{i}]: the conversation before this assistant turn renders "
            "differently on its own, so its target span is unknown (give the template "
            "{% generation %} blocks, or set a built-in chat_format)")
      start = len(prefix)
      content = message.get("content")
      after = start
      if isinstance(content, str) and content.strip():
        found = text.find(content.strip(), start)
        after = found + len(content.strip()) if found >= 0 else start
      ends = [(text.find(t, after), t) for t in end_tokens if t]
      ends = [(pos, t) for pos, t in ends if pos >= 0]
      end = min(pos + len(t) for pos, t in ends) if ends else len(text)
      if end > start:
        spans.append((start, end))
    return text, spans


def _strip_marks(marked: str, origin: str) -> tuple[str, list[tuple[int, int]]]:
  text, spans, start = [], [], None
  pos = 0
  for ch in marked:
    if ch == _OPEN:
      if start is not None:
        raise ChatTemplateError(f"{origin}: nested {{% generation %}} blocks")
      start = pos
    elif ch == _CLOSE:
      if start is not None and pos > start:
        spans.append((start, pos))
      start = None
    else:
      text.append(ch)
      pos += 1
  return "".join(text), spans
