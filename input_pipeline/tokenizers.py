"""Tokenisers: any Hugging Face `tokenizer.json` (via the `tokenizers` library) with the model's own
Jinja chat template (or, without one, the chat formats of our LLM families), and `WordTokenizer`, a
small word-level tokenizer for ShapesWorld.

  >>> from input_pipeline.tokenizers import load_tokenizer
  >>> tok = load_tokenizer("/models/Qwen2.5-VL-3B-Instruct")       # a folder with tokenizer.json
  >>> tok.chat_format, tok.eos_id
  ('qwen2', 151645)
  >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}])
  '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
  >>> ids, target = tok.encode_chat(messages)   # target[i]: token i is assistant output (loss mask)

Chat templates: when the folder has one (`chat_template.jinja`, else tokenizer_config.json's
`chat_template`, a string or a list of named templates of which "default" is used, else
`chat_template.json`), conversations are rendered by it with Jinja exactly as transformers'
`apply_chat_template` renders them (`input_pipeline.chat_template`); extra keywords
(`enable_thinking=False`, `date_string=...`) are template variables. A template that does not
compile is a one-line `TokenizerError` naming its file. The hand-coded formats below are the
fallback for a folder without a template, or what an explicit `chat_format=` (load_tokenizer's or a
call's) selects. `save_with_run` copies a tokenizer's files into a run directory
(`<workdir>/tokenizer/`), where serving and evaluation load it from.

Chat formats (`CHAT_FORMATS`; each reproduces the model's Hugging Face Jinja template for messages
of plain string content, no tools; tests/test_tokenizers.py checks every one against transformers'
rendering of the real template):
  * "llama3"  Meta-Llama-3-Instruct: <|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\n
              content.strip()<|eot_id|> ...
  * "llama3.1" (= "llama3.2", "llama3.3") Llama-3.1/3.2/3.3-Instruct: as llama3, but always opens
              with a system block "Cutting Knowledge Date: December 2023\\nToday Date: {date_string}
              \\n\\n{system}" (option `date_string`, default "26 Jul 2024", the template's own default).
  * "chatml"  <|im_start|>role\\ncontent<|im_end|>\\n ..., no default system message.
  * "qwen2" (= "qwen", "qwen2-vl", "qwen2.5-vl") Qwen2-Instruct, Qwen2-VL, Qwen2.5-VL (BLIP3-o,
              MetaQuery): ChatML with the default system message "You are a helpful assistant.".
  * "qwen2.5" Qwen2.5-Instruct: ChatML with "You are Qwen, created by Alibaba Cloud. You are a
              helpful assistant." as the default system message.
  * "qwen3"   Qwen3: ChatML without a default system; assistant turns after the last user turn carry a
              "<think>\\n...\\n</think>\\n\\n" block (empty when no reasoning is given); option
              `enable_thinking=False` appends the empty think block to the generation prompt.
  * "phi3" (= "phi3.5") Phi-3.5-mini-instruct (Florence-VL 3B): <|user|>\\ncontent<|end|>\\n ...
              <|assistant|>\\n; an empty system message is dropped; without a generation prompt the
              text ends with the eos token.
Messages are dicts {"role": "system" | "user" | "assistant", "content": str}.
`encode_chat_with_images` (both tokenizers) turns each "<image>" of the text into one `IMAGE_SLOT`
id (LLaVA's IMAGE_TOKEN_INDEX, -200) that the data pipeline expands into the model's image tokens.

User errors (a missing file, a malformed tokenizer file, an unknown chat format, bad messages)
raise `TokenizerError`.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from input_pipeline.chat_template import ChatTemplate, ChatTemplateError, template_source
from jaxmodels.errors import JaxModelsError

Messages = Sequence[Mapping[str, str]]
Segments = list[tuple[str, bool]]  # (text, is_assistant_target)


IMAGE_SLOT = -200   # one image's place in encode_chat_with_images output (LLaVA's IMAGE_TOKEN_INDEX)


class TokenizerError(JaxModelsError):
  """A tokenizer file is missing or malformed, or a chat request cannot be rendered."""


# ------------------------------------------------------------------------------------------------
# Chat formats
# ------------------------------------------------------------------------------------------------
QWEN2_SYSTEM = "You are a helpful assistant."
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ROLES = ("system", "user", "assistant")


def _check_messages(messages: Messages) -> list[tuple[str, str, Mapping[str, Any]]]:
  out = []
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
    raise TokenizerError(f"messages must be a list of dicts, got {type(messages).__name__}")
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping) or m.get("role") not in ROLES:
      role = m.get("role") if isinstance(m, Mapping) else None
      raise TokenizerError(f"messages[{i}]: role {role!r} is not one of {ROLES}")
    if not isinstance(m.get("content"), str):
      raise TokenizerError(f"messages[{i}]: content must be a string")
    out.append((m["role"], m["content"], m))
  return out


def _llama3(msgs, gen, bos, eos, *, system_block: bool, date_string: str = "26 Jul 2024"):
  del eos
  segs: Segments = []
  if system_block:
    system = ""
    if msgs and msgs[0][0] == "system":
      system, msgs = msgs[0][1].strip(), msgs[1:]
    segs.append((f"{bos}<|start_header_id|>system<|end_header_id|>\n\n"
                 f"Cutting Knowledge Date: December 2023\nToday Date: {date_string}\n\n"
                 f"{system}<|eot_id|>", False))
  for i, (role, content, _) in enumerate(msgs):
    first = bos if (i == 0 and not system_block) else ""
    segs.append((f"{first}<|start_header_id|>{role}<|end_header_id|>\n\n", False))
    segs.append((content.strip() + "<|eot_id|>", role == "assistant"))
  if gen:
    segs.append(("<|start_header_id|>assistant<|end_header_id|>\n\n", False))
  return segs


def _chatml(msgs, gen, bos, eos, *, default_system: str | None = None):
  del bos, eos
  segs: Segments = []
  if default_system is not None and msgs and msgs[0][0] != "system":
    segs.append((f"<|im_start|>system\n{default_system}<|im_end|>\n", False))
  for role, content, _ in msgs:
    segs.append((f"<|im_start|>{role}\n", False))
    segs.append((content + "<|im_end|>", role == "assistant"))
    segs.append(("\n", False))
  if gen:
    segs.append(("<|im_start|>assistant\n", False))
  return segs


def _qwen3(msgs, gen, bos, eos, *, enable_thinking: bool = True):
  del bos, eos
  last_query = len(msgs) - 1
  for i in range(len(msgs) - 1, -1, -1):
    content = msgs[i][1]
    if msgs[i][0] == "user" and not (content.startswith("<tool_response>")
                                     and content.endswith("</tool_response>")):
      last_query = i
      break
  segs: Segments = []
  for i, (role, content, m) in enumerate(msgs):
    if role != "assistant":
      segs.append((f"<|im_start|>{role}\n{content}<|im_end|>\n", False))
      continue
    reasoning = m.get("reasoning_content")
    if not isinstance(reasoning, str):
      reasoning = ""
      if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    if i > last_query and (i == len(msgs) - 1 or reasoning):
      body = f"<think>\n{reasoning.strip(chr(10))}\n</think>\n\n{content.lstrip(chr(10))}"
    else:
      body = content
    segs.append(("<|im_start|>assistant\n", False))
    segs.append((body + "<|im_end|>", True))
    segs.append(("\n", False))
  if gen:
    segs.append(("<|im_start|>assistant\n" + ("" if enable_thinking else "<think>\n\n</think>\n\n"),
                 False))
  return segs


def _phi3(msgs, gen, bos, eos):
  del bos
  segs: Segments = []
  for role, content, _ in msgs:
    if role == "system" and not content:
      continue
    segs.append((f"<|{role}|>\n", False))
    segs.append((content + "<|end|>", role == "assistant"))
    segs.append(("\n", False))
  segs.append(("<|assistant|>\n" if gen else eos, False))
  return segs


CHAT_FORMATS = {
    "llama3": functools.partial(_llama3, system_block=False),
    "llama3.1": functools.partial(_llama3, system_block=True),
    "chatml": _chatml,
    "qwen2": functools.partial(_chatml, default_system=QWEN2_SYSTEM),
    "qwen2.5": functools.partial(_chatml, default_system=QWEN25_SYSTEM),
    "qwen3": _qwen3,
    "phi3": _phi3,
}
CHAT_OPTIONS = {"llama3.1": ("date_string",), "qwen3": ("enable_thinking",)}
CHAT_ALIASES = {"llama3.2": "llama3.1", "llama3.3": "llama3.1", "qwen": "qwen2",
                "qwen2-vl": "qwen2", "qwen2.5-vl": "qwen2", "phi3.5": "phi3"}
_DEFAULT_SPECIALS = {"llama3": ("<|begin_of_text|>", "<|eot_id|>"),
                     "llama3.1": ("<|begin_of_text|>", "<|eot_id|>"),
                     "phi3": ("<s>", "<|endoftext|>")}


def canonical_chat_format(name: str) -> str:
  """The canonical name of a chat format or alias; raises `TokenizerError` for an unknown one."""
  name = CHAT_ALIASES.get(name, name)
  if name not in CHAT_FORMATS:
    raise TokenizerError(f"chat_format={name!r}: expected one of "
                         f"{sorted(CHAT_FORMATS) + sorted(CHAT_ALIASES)}")
  return name


def chat_segments(messages: Messages, chat_format: str, *, add_generation_prompt: bool = True,
                  bos_token: str | None = None, eos_token: str | None = None,
                  **options) -> Segments:
  """The rendered conversation as `(text, is_assistant_target)` pieces (see `render_chat`)."""
  name = canonical_chat_format(chat_format)
  unknown = sorted(set(options) - set(CHAT_OPTIONS.get(name, ())))
  if unknown:
    raise TokenizerError(f"chat_format {name!r}: unsupported option(s) {unknown} "
                         f"(supported: {list(CHAT_OPTIONS.get(name, ()))})")
  bos_default, eos_default = _DEFAULT_SPECIALS.get(name, ("", ""))
  return CHAT_FORMATS[name](_check_messages(messages), add_generation_prompt,
                            bos_default if bos_token is None else bos_token,
                            eos_default if eos_token is None else eos_token, **options)


def render_chat(messages: Messages, chat_format: str, *, add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None, **options) -> str:
  """Renders messages in a named chat format (no tokenizer needed).

  Args:
    messages: [{"role": "system"|"user"|"assistant", "content": str}, ...].
    chat_format: a name or alias from `CHAT_FORMATS` / `CHAT_ALIASES`.
    add_generation_prompt: end with the assistant header, ready for generation.
    bos_token: the BOS string (llama formats; default "<|begin_of_text|>").
    eos_token: the EOS string (phi3 without generation prompt; default "<|endoftext|>").
    **options: format options (`date_string` for llama3.1, `enable_thinking` for qwen3).

  Example:
    >>> render_chat([{"role": "user", "content": "Hi"}], "phi3")
    '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
  """
  segs = chat_segments(messages, chat_format, add_generation_prompt=add_generation_prompt,
                       bos_token=bos_token, eos_token=eos_token, **options)
  return "".join(text for text, _ in segs)


def detect_chat_format(template: str | None) -> str | None:
  """Guesses our chat format from a Hugging Face Jinja chat template (None if not recognised)."""
  if not template:
    return None
  if "<|start_header_id|>" in template:
    return "llama3.1" if "Cutting Knowledge Date" in template else "llama3"
  if "<|im_start|>" in template:
    if "<think>" in template:
      return "qwen3"
    if "You are Qwen, created by Alibaba Cloud" in template:
      return "qwen2.5"
    if "You are a helpful assistant." in template:
      return "qwen2"
    return "chatml"
  if "<|user|>" in template and "<|end|>" in template:
    return "phi3"
  return None


# ------------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json
# ------------------------------------------------------------------------------------------------
def _read_json(path: str) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except ValueError as e:
    raise TokenizerError(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from e


def _token_text(value: Any) -> str | None:
  if isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _chat_template_text(folder: str, config: Mapping[str, Any],
                        config_path: str) -> tuple[str | None, str]:
  """(template text, the file it came from), in transformers' order: `chat_template.jinja` over
  tokenizer_config.json's `chat_template`; then a processor's `chat_template.json`."""
  jinja = os.path.join(folder, "chat_template.jinja")
  if os.path.isfile(jinja):
    with open(jinja, encoding="utf-8") as f:
      return f.read(), jinja
  try:
    if config.get("chat_template") is not None:
      return template_source(config["chat_template"], origin=config_path), config_path
    as_json = os.path.join(folder, "chat_template.json")
    if os.path.isfile(as_json):
      value = _read_json(as_json)
      if isinstance(value, Mapping) and value.get("chat_template") is not None:
        return template_source(value["chat_template"], origin=as_json), as_json
  except ChatTemplateError as e:
    raise TokenizerError(str(e)) from e
  return None, config_path


SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                       "mask_token")   # the ones transformers hands a chat template


class HFTokenizer:
  """A Hugging Face fast tokenizer (`tokenizers.Tokenizer`) with special ids and chat rendering.

  Build it with `load_tokenizer(path)`. Attributes: `vocab_size`, `bos_token`/`bos_id`,
  `eos_token`/`eos_id`, `pad_token`/`pad_id`, `unk_token`/`unk_id` (None when the files name no such
  token), `image_id` (the id of "<image>" if the vocabulary has it), `chat_template` (the folder's
  compiled `ChatTemplate`, or None), `chat_format` (the built-in format the template resembles, or
  the one chosen; None if unknown). Conversations are rendered with `chat_template` unless a
  `chat_format` is chosen explicitly (`load_tokenizer(..., chat_format=)` or per call) or there is no
  template; `can_chat` says whether either is available.

  Example:
    >>> tok = load_tokenizer("/models/Llama-3.1-8B-Instruct")
    >>> tok.decode(tok.encode("Hello world"))
    'Hello world'
  """

  def __init__(self, tokenizer, *, special_tokens: Mapping[str, str | None] | None = None,
               chat_format: str | None = None, path: str = "<memory>",
               chat_template: ChatTemplate | None = None, prefer_chat_format: bool = False):
    self.tokenizer = tokenizer
    self.path = path
    self.chat_format = canonical_chat_format(chat_format) if chat_format else None
    self.chat_template = chat_template
    self.prefer_chat_format = bool(prefer_chat_format and self.chat_format)
    special = dict(special_tokens or {})
    self.template_specials = {k: special.get(k) for k in SPECIAL_TOKEN_NAMES
                              if special.get(k) is not None}
    for name in ("bos", "eos", "pad", "unk"):
      token = special.get(f"{name}_token")
      tid = tokenizer.token_to_id(token) if token is not None else None
      setattr(self, f"{name}_token", token if tid is not None else None)
      setattr(self, f"{name}_id", tid)
    self.image_id = tokenizer.token_to_id("<image>")

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def can_chat(self) -> bool:
    """Whether conversations can be rendered (a chat template or a built-in chat format)."""
    return self.chat_template is not None or self.chat_format is not None

  def _uses_template(self, chat_format: str | None) -> bool:
    return chat_format is None and self.chat_template is not None and not self.prefer_chat_format

  @functools.cached_property
  def _end_tokens(self) -> tuple[str, ...]:
    """Special tokens of the vocabulary (and eos): where an assistant target ends."""
    ends = {t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special}
    if self.eos_token:
      ends.add(self.eos_token)
    return tuple(sorted(ends))

  def _template_call(self, fn, messages, add_generation_prompt, options, **extra):
    _check_messages(messages)
    try:
      return fn(messages, add_generation_prompt=add_generation_prompt,
                special_tokens=self.template_specials, **extra, **options)
    except ChatTemplateError as e:
      raise TokenizerError(str(e)) from e

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.tokenizer.id_to_token(int(token_id))

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False,
             add_special_tokens: bool = False) -> list[int]:
    """Token ids of `text`. Special tokens written in the text (e.g. "<|im_start|>") become their
    ids; `add_special_tokens=True` also runs the tokenizer's post-processor (HF's default BOS
    handling); `add_bos` / `add_eos` add this tokenizer's bos / eos ids explicitly."""
    ids = list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)
    return _wrap(ids, self, add_bos, add_eos)

  def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def _format(self, chat_format: str | None) -> str:
    name = chat_format or self.chat_format
    if name is None:
      raise TokenizerError(f"{self.path}: no chat format detected; pass chat_format= one of "
                           f"{sorted(CHAT_FORMATS)}")
    return canonical_chat_format(name)

  def apply_chat_template(self, messages: Messages, add_generation_prompt: bool = True, *,
                          chat_format: str | None = None, tokenize: bool = False,
                          **options) -> str | list[int]:
    """Renders messages with this tokenizer's chat template (else its chat format), or in the
    built-in `chat_format` when one is given; ids if `tokenize`. `options` are template variables
    (or the format's options).

    Example:
      >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}], chat_format="llama3")
      '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n'
    """
    if self._uses_template(chat_format):
      text = self._template_call(self.chat_template.render, messages, add_generation_prompt, options)
    else:
      text = render_chat(messages, self._format(chat_format),
                         add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
                         eos_token=self.eos_token, **options)
    return self.encode(text) if tokenize else text

  def encode_chat(self, messages: Messages, *, add_generation_prompt: bool = False,
                  chat_format: str | None = None, **options) -> tuple[list[int], list[bool]]:
    """Ids of the rendered conversation and a per-token mask of assistant output (content and its
    end-of-turn token), for the understanding loss. The ids equal
    `encode(apply_chat_template(...))`: the text is tokenized once and masked by character offsets.
    """
    text, spans = self._render_spans(messages, chat_format, add_generation_prompt, options)
    enc = self.tokenizer.encode(text, add_special_tokens=False)
    # A token is a target when its first character lies in an assistant span.
    mask = [any(a <= start < b for a, b in spans) for start, _ in enc.offsets]
    return list(enc.ids), mask

  def encode_chat_with_images(self, messages: Messages, *, image_token: str = "<image>",
                              add_generation_prompt: bool = False, chat_format: str | None = None,
                              **options) -> tuple[list[int], list[bool]]:
    """As `encode_chat`, but each `image_token` in the rendered text becomes one `IMAGE_SLOT` id
    (mask False) and the text between them is tokenised piece by piece (LLaVA's
    `tokenizer_image_token`), so the result does not depend on whether the vocabulary knows
    `image_token`."""
    text, spans = self._render_spans(messages, chat_format, add_generation_prompt, options)
    ids: list[int] = []
    mask: list[bool] = []
    pos = 0
    for k, chunk in enumerate(text.split(image_token)):
      if k:
        ids.append(IMAGE_SLOT)
        mask.append(False)
        pos += len(image_token)
      if chunk:
        enc = self.tokenizer.encode(chunk, add_special_tokens=False)
        ids += enc.ids
        mask += [any(a <= pos + start < b for a, b in spans) for start, _ in enc.offsets]
      pos += len(chunk)
    return ids, mask

  def _render_spans(self, messages, chat_format, add_generation_prompt, options):
    """The rendered text and the [start, end) character spans of assistant targets."""
    if self._uses_template(chat_format):
      return self._template_call(self.chat_template.render_with_spans, messages,
                                 add_generation_prompt, options, end_tokens=self._end_tokens)
    segs = chat_segments(messages, self._format(chat_format),
                         add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
                         eos_token=self.eos_token, **options)
    text, spans, pos = "", [], 0
    for piece, target in segs:
      if target and piece:
        spans.append((pos, pos + len(piece)))
      text += piece
      pos += len(piece)
    return text, spans


def _wrap(ids: list[int], tok, add_bos: bool, add_eos: bool) -> list[int]:
  if add_bos:
    if tok.bos_id is None:
      raise TokenizerError(f"{getattr(tok, 'path', 'tokenizer')}: add_bos=True but no bos token")
    ids = [tok.bos_id] + ids
  if add_eos:
    if tok.eos_id is None:
      raise TokenizerError(f"{getattr(tok, 'path', 'tokenizer')}: add_eos=True but no eos token")
    ids = ids + [tok.eos_id]
  return ids


def load_tokenizer(path: str | os.PathLike, *, chat_format: str | None = None):
  """Loads a tokenizer from a local path; never touches the network.

  Args:
    path: a folder holding a Hugging Face `tokenizer.json` (plus optional `tokenizer_config.json`,
      `special_tokens_map.json`, `chat_template.jinja`), a `tokenizer.json` file, or a
      `WordTokenizer` JSON file written by `WordTokenizer.save`.
    chat_format: a built-in chat format to render conversations in, instead of the folder's chat
      template (without it: the template, else the format detected from it).

  Returns:
    An `HFTokenizer` (or a `WordTokenizer` for a word-tokenizer file).

  Raises:
    TokenizerError: when the path holds no tokenizer or a file is malformed.

  Example:
    >>> tok = load_tokenizer("/models/Phi-3.5-mini-instruct")
    >>> tok.chat_format
    'phi3'
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    folder, file = path, os.path.join(path, "tokenizer.json")
  else:
    folder, file = os.path.dirname(path) or ".", path
  if not os.path.isfile(file):
    raise TokenizerError(f"{file}: tokenizer file not found")
  head = _read_json(file)
  if isinstance(head, Mapping) and head.get("format") == WordTokenizer.FORMAT:
    return WordTokenizer.load(file)

  import tokenizers  # pylint: disable=g-import-not-at-top

  try:
    tokenizer = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # noqa: BLE001 - the Rust side raises a generic Exception
    raise TokenizerError(f"{file}: not a Hugging Face tokenizer.json ({str(e)[:200]})") from e
  special: dict[str, str | None] = {}
  config: Mapping[str, Any] = {}
  cfg_path = os.path.join(folder, "tokenizer_config.json")
  template, origin = None, cfg_path
  if file == os.path.join(folder, "tokenizer.json"):
    if os.path.isfile(cfg_path):
      config = _read_json(cfg_path)
      if not isinstance(config, Mapping):
        raise TokenizerError(f"{cfg_path}: expected a JSON object")
    map_path = os.path.join(folder, "special_tokens_map.json")
    stm = _read_json(map_path) if os.path.isfile(map_path) else {}
    for name in SPECIAL_TOKEN_NAMES:
      # Like transformers: special_tokens_map.json overrides tokenizer_config.json.
      value = _token_text(stm.get(name)) if isinstance(stm, Mapping) else None
      special[name] = value if value is not None else _token_text(config.get(name))
    template, origin = _chat_template_text(folder, config, cfg_path)
  compiled = None
  if template is not None:
    try:
      compiled = ChatTemplate(template, origin=origin)
    except ChatTemplateError as e:
      raise TokenizerError(str(e)) from e
  return HFTokenizer(tokenizer, special_tokens=special,
                     chat_format=chat_format or detect_chat_format(template), path=file,
                     chat_template=compiled, prefer_chat_format=chat_format is not None)


# ------------------------------------------------------------------------------------------------
# A run's copy of its tokenizer
# ------------------------------------------------------------------------------------------------
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "chat_template.jinja", "chat_template.json")
RUN_TOKENIZER_DIR = "tokenizer"


def save_with_run(tokenizer, workdir: str | os.PathLike) -> str | None:
  """Copies a Hugging Face tokenizer's files (`HF_TOKENIZER_FILES` that exist beside its
  tokenizer.json) into `<workdir>/tokenizer/`, so the run carries the tokenizer and chat template it
  trained with (`load_tokenizer` reads the copy back). A copy already there (a resumed run) is kept.
  The folder appears whole: the files are written to a temporary folder that is then renamed.
  A `WordTokenizer` (saved by the data pipeline as `<workdir>/tokenizer.json`) is left alone.

  Returns:
    The run's tokenizer folder, or None for a tokenizer without files to copy.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  path = getattr(tokenizer, "path", None)
  if not isinstance(tokenizer, HFTokenizer) or not path or not os.path.isfile(path):
    return None
  workdir = os.fspath(workdir)
  target = os.path.join(workdir, RUN_TOKENIZER_DIR)
  if os.path.isdir(target):
    return target
  folder = os.path.dirname(path)
  names = [n for n in HF_TOKENIZER_FILES[1:] if os.path.isfile(os.path.join(folder, n))]
  if os.path.basename(path) != "tokenizer.json":   # a bare file: only it belongs to the tokenizer
    names = []
  tmp = f"{target}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  shutil.copyfile(path, os.path.join(tmp, "tokenizer.json"))
  for name in names:
    shutil.copyfile(os.path.join(folder, name), os.path.join(tmp, name))
  try:
    os.rename(tmp, target)
  except OSError:           # another process made it first
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.isdir(target):
      raise
  return target


# ------------------------------------------------------------------------------------------------
# WordTokenizer
# ------------------------------------------------------------------------------------------------
class WordTokenizer:
  """A word-level tokenizer with a fixed vocabulary (the built-in tokenizer for ShapesWorld).

  Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, <image>=4, then the `extra_tokens` (kept verbatim,
  matched case-sensitively in text), then the vocabulary words. Text is split into lower-cased words
  (letters/digits, with an optional "'s"-style suffix) and single punctuation marks; special and
  extra tokens written in the text are recognised. Words outside the vocabulary map to <unk>.

  Example:
    >>> tok = WordTokenizer(["a", "red", "circle", "?", "is", "there"], extra_tokens=["<sep>"])
    >>> ids = tok.encode("Is there a red circle?", add_bos=True)
    >>> tok.decode(ids, skip_special_tokens=True)
    'is there a red circle?'
    >>> tok.save("/tmp/vocab.json"); WordTokenizer.load("/tmp/vocab.json").vocab_size
    12
  """

  FORMAT = "jaxmodels-word-tokenizer"
  SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>", "<image>")
  _WORD = r"[^\W_]+(?:'[^\W_]+)?"
  _PUNCT = r"[^\w\s]|_"

  def __init__(self, vocab: Iterable[str], *, extra_tokens: Sequence[str] = ()):
    tokens = list(self.SPECIALS)
    for t in extra_tokens:
      if not isinstance(t, str) or not t or any(c.isspace() for c in t):
        raise TokenizerError(f"extra token {t!r}: must be a non-empty string without spaces")
      if t not in tokens:
        tokens.append(t)
    self.num_special = len(tokens)
    for word in vocab:
      pieces = self._split_words(str(word))
      if len(pieces) != 1:
        raise TokenizerError(f"vocabulary entry {word!r} is not a single word or punctuation mark")
      if pieces[0] not in tokens:
        tokens.append(pieces[0])
    self.tokens = tokens
    self._ids = {t: i for i, t in enumerate(tokens)}
    specials = sorted(tokens[: self.num_special], key=len, reverse=True)
    self._pattern = re.compile("|".join([re.escape(s) for s in specials]
                                        + [self._WORD, self._PUNCT]))
    self._special_set = set(tokens[: self.num_special])
    self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.image_id = range(5)
    self.pad_token, self.bos_token, self.eos_token, self.unk_token = self.SPECIALS[:4]
    self.chat_format = None

  @classmethod
  def from_texts(cls, texts: Iterable[str], *, extra_tokens: Sequence[str] = (),
                 min_count: int = 1, max_size: int | None = None) -> "WordTokenizer":
    """Builds the vocabulary from a corpus: words seen >= `min_count` times, most frequent first.

    Example:
      >>> tok = WordTokenizer.from_texts(["a red circle", "a blue square"])
    """
    counts = collections.Counter()
    probe = cls([])
    for text in texts:
      counts.update(w for w in probe.split(text) if w not in probe._special_set)
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    if max_size is not None:
      words = words[: max(0, max_size - len(cls.SPECIALS) - len(extra_tokens))]
    return cls(words, extra_tokens=extra_tokens)

  @classmethod
  def _split_words(cls, text: str) -> list[str]:
    return [w.lower() for w in re.findall(f"{cls._WORD}|{cls._PUNCT}", text)]

  def split(self, text: str) -> list[str]:
    """Text -> tokens (special/extra tokens kept verbatim, words lower-cased)."""
    return [m if m in self._special_set else m.lower() for m in self._pattern.findall(text)]

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._ids.get(token)

  def id_to_token(self, token_id: int) -> str | None:
    i = int(token_id)
    return self.tokens[i] if 0 <= i < len(self.tokens) else None

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    ids = [self._ids.get(t, self.unk_id) for t in self.split(text)]
    return _wrap(ids, self, add_bos, add_eos)

  def encode_chat_with_images(self, messages: Messages, *, image_token: str = "<image>",
                              add_generation_prompt: bool = False, chat_format: str | None = None,
                              **options) -> tuple[list[int], list[bool]]:
    """A plain conversation layout (no chat format): <bos>, then each message's words; assistant
    messages end with <eos> and are the targets. "<image>" becomes `IMAGE_SLOT`.

    Example:
      >>> tok = WordTokenizer(["what", "colour", "?", "red"])
      >>> tok.encode_chat_with_images([{"role": "user", "content": "<image> what colour?"},
      ...                              {"role": "assistant", "content": "red"}])
      ([1, -200, 5, 6, 7, 8, 2], [False, False, False, False, False, True, True])
    """
    del chat_format, options
    if image_token != "<image>":
      raise TokenizerError(f"WordTokenizer: image_token must be '<image>', got {image_token!r}")
    ids, mask = [self.bos_id], [False]
    for role, content, _ in _check_messages(messages):
      piece = self.encode(content) + ([self.eos_id] if role == "assistant" else [])
      ids += [IMAGE_SLOT if i == self.image_id else i for i in piece]
      mask += [role == "assistant"] * len(piece)
    return ids, mask

  def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
    """Ids -> text: tokens joined by spaces, no space before punctuation. With
    `skip_special_tokens`, <pad>/<bos>/<eos> are dropped (<unk>, <image> and extras are kept)."""
    out = []
    for i in ids:
      i = int(i)
      if skip_special_tokens and i in (self.pad_id, self.bos_id, self.eos_id):
        continue
      token = self.id_to_token(i)
      out.append(token if token is not None else self.unk_token)
    text = " ".join(out)
    return re.sub(r" ([.,!?;:])(?= |$)", r"\1", text)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary as JSON (`load` / `load_tokenizer` read it back)."""
    payload = {"format": self.FORMAT, "version": 1, "num_special": self.num_special,
               "tokens": self.tokens}
    with open(os.fspath(path), "w", encoding="utf-8") as f:
      json.dump(payload, f, ensure_ascii=False, indent=0)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "WordTokenizer":
    """Reads a file written by `save`; raises `TokenizerError` naming the file if malformed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise TokenizerError(f"{path}: word tokenizer file not found")
    data = _read_json(path)
    if not isinstance(data, Mapping) or data.get("format") != cls.FORMAT:
      raise TokenizerError(f"{path}: not a {cls.FORMAT} file (field 'format')")
    tokens, n = data.get("tokens"), data.get("num_special")
    if (not isinstance(tokens, list) or not isinstance(n, int) or n < len(cls.SPECIALS)
        or tuple(tokens[: len(cls.SPECIALS)]) != cls.SPECIALS):
      raise TokenizerError(f"{path}: field 'tokens' must start with {list(cls.SPECIALS)}")
    tok = cls(tokens[n:], extra_tokens=tokens[len(cls.SPECIALS): n])
    if tok.tokens != tokens:
      raise TokenizerError(f"{path}: field 'tokens' has duplicates or non-normalised words")
    return tok
