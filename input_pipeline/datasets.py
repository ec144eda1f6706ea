"""Training data by name (`config.data.name`), as Grain iterators of per-process batches.

    io = model_io(config.model)            # the model's input contract (jaxmodels/unified/model_io.py)
    data = make_train_data(config, workdir, io=io)
    batch = next(data.iterator)            # dict of numpy arrays [B_process, ...]

Names: "shapes_world" (the embedded dataset, `shapes_tasks.py`) and the real-world readers of
`sources.py`, whose arguments are `config.data.source` (a dict of the reader's keyword arguments):
  "llava_json"    LLaVA-style conversation JSON + image folder -> understanding rows
  "webdataset"    image + caption tar shards                  -> caption rows (see `data.tasks`)
  "array_record"  ArrayRecord files (`data.image_field`, `data.caption_field`) -> caption rows
  "tfds"          a TFDS dataset in ArrayRecord format         -> caption rows
  "mctune"        instruction JSON/JSONL (Alpaca, LLaVA, chat, GenQA rows) -> text-only SFT rows,
                  optionally MCTune control-tagged (`input_pipeline/mctune/source.py`; model.type="lm")
Real-world rows (fixed shapes, `RealDataPreprocess`):
  und_image [S, S, 3] float32 in [-1, 1]   (S: the understanding encoder's / Florence-VL's image size;
                                            pad to square with the encoder's mean colour, LLaVA's
                                            `image_aspect_ratio=pad`, or squash: `data.image_aspect`;
                                            bicubic resize; the model normalises for its tower)
  und_ids [T] int32     the chat-formatted conversation with `io.num_image_tokens` copies of
                        `io.image_token_id` where "<image>" was (T = `data.max_length`)
  und_mask [T] int32    1 on tokens (right-padded)
  und_loss_mask [T] int32   1 on assistant tokens (their content and end-of-turn token)
  gen_image [G, G, 3], gen_ids [T_g], gen_mask [T_g]  caption sources with "gen" in `data.tasks`
A caption becomes the conversation [user: `data.caption_prompt`, assistant: caption]. Text-only
LLaVA records get a blank image and no placeholders. Tokenizer: `data.tokenizer`, a local HF
tokenizer.json (folder or file; conversations rendered by its Jinja chat template, or in the built-in
`data.chat_format` when set; train.py copies it into `<workdir>/tokenizer/`), or None for the
built-in WordTokenizer over the data's words (saved to `<workdir>/tokenizer.json`, reused on resume).
Corrupt records follow the pipeline's `on_error` policy (train.py: `config.data.on_error`) and the
source's own (`data.source.on_error`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from jaxmodels.config_schema import DATA_SOURCES, data_section
from jaxmodels.errors import ConfigError
from jaxmodels.unified.model_io import ModelIO

REAL_SOURCES = ("llava_json", "webdataset", "array_record", "tfds")
DEFAULT_CAPTION_PROMPT = DATA_SOURCES["tfds"]["caption_prompt"].default


@dataclasses.dataclass
class TrainData:
  iterator: Iterator[dict[str, Any]]   # checkpointable Grain iterator
  tokenizer: Any
  data_dir: str


def default_data_dir() -> str:
  """Where ShapesWorld and other TFDS datasets are built (see shapes_world.builder.default_data_dir)."""
  from jaxmodels.shapes_world.builder import default_data_dir as builder_default
  return builder_default()


def shapes_world_tokenizer(data_dir: str, config_name: str, workdir: str | None):
  """The run's tokenizer: reused from `<workdir>/tokenizer.json`, else built from the train split."""
  from jaxmodels import shapes_world as sw
  from input_pipeline.shapes_tasks import shapes_tokenizer
  return run_word_tokenizer(workdir, lambda: shapes_tokenizer(
      list(sw.load_split(data_dir, "train", config_name)) + list(sw.load_split(data_dir, "validation",
                                                                                config_name))))


def run_word_tokenizer(workdir: str | None, build):
  """The run's WordTokenizer: `<workdir>/tokenizer.json` when it exists (resume, evaluation), else
  `build()`, saved there by process 0 atomically (a temp file renamed), so no reader sees half a file."""
  from input_pipeline.tokenizers import WordTokenizer
  path = os.path.join(workdir, "tokenizer.json") if workdir else None
  if path and os.path.exists(path):
    return WordTokenizer.load(path)
  tok = build()
  if path and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tok.save(path + ".tmp")
    os.replace(path + ".tmp", path)
  return tok


def make_train_data(config, workdir: str | None, *, io: ModelIO) -> TrainData:
  """`config.data` -> TrainData for a model that reads `io` (`model_io(config.model)`)."""
  from input_pipeline import pipeline
  data = data_section(config.data)
  name = data.name
  makes_gen = name == "shapes_world" or "gen" in tuple(data.get("tasks") or ())
  if makes_gen and io.gen_latents_only:
    raise ConfigError("config.model.vae=None: the generation target is then precomputed latents "
                      "(batch['gen_latents']), which these data sources do not produce; set config.model.vae "
                      "(e.g. dict(preset='dc-ae-f32c32')) to encode the batch's images in the model")
  if name in REAL_SOURCES:
    return make_real_data(config, workdir, io=io)
  if name == "mctune":      # text-only SFT rows (input_pipeline/mctune/source.py)
    from input_pipeline.mctune.source import make_mctune_data
    return make_mctune_data(config, workdir)
  if name != "shapes_world":
    raise ConfigError(f"config.data.name={name!r}: expected 'shapes_world', 'mctune' or one of {REAL_SOURCES}")
  if not io.reads_images:
    raise ConfigError(f"config.data.name='shapes_world' needs a model that reads images "
                      f"(config.model.type={io.kind!r} reads none)")
  from jaxmodels import shapes_world as sw
  from input_pipeline.shapes_tasks import ShapesTaskSource
  data_dir = data.data_dir or default_data_dir()
  cfg_name = data.config
  tok = shapes_world_tokenizer(data_dir, cfg_name, workdir)
  source = ShapesTaskSource(
      sw.load_split(data_dir, "train", cfg_name, decode="lazy"), tok, num_image_tokens=io.num_image_tokens,
      und_len=data.und_len, gen_len=data.gen_len,
      und_image_size=io.und_image_size, gen_image_size=io.gen_image_size,
      questions_per_scene=data.questions_per_scene, edit_fraction=data.edit_fraction,
      turns=data.qa_turns, leak_free=data.qa_leak_free,
      qa_kinds=tuple(k.strip() for k in str(data.qa_kinds).split(",") if k.strip()),
      layout=data.und_layout, und_background=data.und_background,
      long_edits=data.long_edits, colorbench_images=data.und_colorbench, edit_layout=data.edit_layout,
      dense_grid=io.dense_grid if data.dense_labels else 0, edit_image_tokens=io.edit_tokens)
  ds = pipeline.make_dataset(source, seed=config.seed, batch_size=data.batch_size // jax.process_count(),
                             worker_count=data.worker_count)
  return TrainData(iter(ds), tok, data_dir)


# ------------------------------------------------------------------------------------------------
# Real-world sources
# ------------------------------------------------------------------------------------------------
def prepare_image(image: np.ndarray, size: int, *, aspect: str = "pad",
                  fill: Sequence[int] = (127, 127, 127)) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [size, size, 3] in [-1, 1]: padded to a centred square with `fill`
  ("pad") or squashed ("resize"), then bicubic-resized. An empty image ([0, 0, 3]) gives zeros."""
  from PIL import Image
  if image.size == 0:
    return np.zeros((size, size, 3), np.float32)
  if aspect not in ("pad", "resize"):
    raise ConfigError(f"config.data.image_aspect={aspect!r}: expected 'pad' or 'resize'")
  img = Image.fromarray(np.asarray(image, np.uint8))
  w, h = img.size
  if aspect == "pad" and w != h:
    side = max(w, h)
    square = Image.new("RGB", (side, side), tuple(int(c) for c in fill))
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    img = square
  if img.size != (size, size):
    img = img.resize((size, size), Image.BICUBIC)
  return np.asarray(img, np.float32) / 127.5 - 1.0


def place_image(messages: list[dict], has_image: bool, image_token: str = "<image>") -> list[dict]:
  """LLaVA's convention: exactly one `image_token` when there is an image (prepended to the first
  user turn as "<image>\\n" if the text has none; later ones removed), none without an image."""
  out, seen = [], False
  for m in messages:
    content = m["content"]
    if image_token in content:
      head, _, tail = content.partition(image_token)
      strip = lambda t: t.replace(image_token + "\n", "").replace(image_token, "")  # noqa: E731
      if has_image and not seen:
        content = strip(head) + image_token + strip(tail)
      else:
        content = strip(head) + strip(tail.removeprefix("\n"))
      seen = seen or has_image
    out.append({**m, "content": content})
  if has_image and not seen:
    first = next((i for i, m in enumerate(out) if m["role"] == "user"), None)
    if first is None:
      raise ValueError("an image record without a user turn")
    out[first] = {**out[first], "content": image_token + "\n" + out[first]["content"]}
  return out


class RealDataPreprocess:
  """A source record -> one fixed-shape training row (see the module docstring). Picklable."""

  def __init__(self, tokenizer, io: ModelIO, *, kind: str, max_length: int, image_aspect: str = "pad",
               chat_format: str | None = None, caption_prompt: str = DEFAULT_CAPTION_PROMPT,
               image_field: str = "image", caption_field: str = "caption",
               tasks: Sequence[str] = ("und",), gen_len: int = 64):
    self.tok, self.io, self.kind = tokenizer, io, kind
    self.max_length, self.aspect, self.chat_format = int(max_length), image_aspect, chat_format
    self.caption_prompt, self.image_field, self.caption_field = caption_prompt, image_field, caption_field
    self.tasks, self.gen_len = tuple(tasks), int(gen_len)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    self.pad_id = int(pad) if pad is not None else 0

  def _image(self, value) -> np.ndarray:
    if isinstance(value, (bytes, bytearray)):
      from input_pipeline.sources import decode_image
      return decode_image(bytes(value), f"field {self.image_field!r}")
    arr = np.asarray(value)
    if arr.ndim != 3 or arr.shape[-1] != 3:
      raise ValueError(f"field {self.image_field!r}: expected an image [H, W, 3], got shape {arr.shape}")
    return arr

  def __call__(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
    if self.kind == "llava_json":
      messages, has_image = json.loads(ex["conversations"]), bool(ex["has_image"])
      image = ex["image"]
    else:
      if self.caption_field not in ex or self.image_field not in ex:
        raise KeyError(f"record lacks field {self.caption_field!r} or {self.image_field!r}")
      caption = ex[self.caption_field]
      caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
      image, has_image = self._image(ex[self.image_field]), True
      messages = [{"role": "user", "content": self.caption_prompt},
                  {"role": "assistant", "content": caption.strip()}]
    out = self.understanding_row(place_image(messages, has_image), image if has_image else None)
    if "gen" in self.tasks and self.kind != "llava_json":
      out.update(self.generation_row(caption, image))
    return out

  def understanding_row(self, messages: list[dict], image: np.ndarray | None) -> dict[str, np.ndarray]:
    from input_pipeline.tokenizers import IMAGE_SLOT
    ids, target = self.tok.encode_chat_with_images(messages, chat_format=self.chat_format)
    io, row, loss = self.io, [], []
    for i, t in zip(ids, target):
      if i == IMAGE_SLOT:
        row += [io.image_token_id] * io.num_image_tokens
        loss += [0] * io.num_image_tokens
      else:
        row.append(int(i))
        loss.append(int(t))
    n = min(len(row), self.max_length)
    und_ids = np.full((self.max_length,), self.pad_id, np.int32)
    und_ids[:n] = row[:n]
    und_mask = (np.arange(self.max_length) < n).astype(np.int32)
    und_loss = np.zeros((self.max_length,), np.int32)
    und_loss[:n] = loss[:n]
    empty = np.zeros((0, 0, 3), np.uint8)
    und_image = prepare_image(empty if image is None else image, io.und_image_size, aspect=self.aspect,
                              fill=io.pad_fill)
    return dict(und_image=und_image, und_ids=und_ids, und_mask=und_mask, und_loss_mask=und_loss)

  def generation_row(self, caption: str, image: np.ndarray) -> dict[str, np.ndarray]:
    from input_pipeline.shapes_tasks import left_pad
    if self.io.gen_image_size is None:
      raise ValueError("data.tasks has 'gen' but the model has no generation image size")
    ids = self.tok.encode(caption.strip(), add_bos=self.tok.bos_id is not None)
    gen_ids, gen_mask = left_pad(ids, self.gen_len, self.pad_id)
    gen_image = prepare_image(image, self.io.gen_image_size, aspect="resize")
    return dict(gen_image=gen_image, gen_ids=gen_ids, gen_mask=gen_mask)


def make_real_source(config):
  """The reader of `config.data.name` built from `config.data.source` (required keys checked)."""
  import inspect
  from input_pipeline import sources
  data = data_section(config.data)
  src = data.source or {}
  spec = src.to_dict() if hasattr(src, "to_dict") else dict(src)
  spec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items() if v is not None}
  cls = sources.reader_class(data.name)
  for pname, p in inspect.signature(cls.__init__).parameters.items():
    if pname != "self" and p.default is inspect.Parameter.empty and pname not in spec:
      raise ConfigError(f"config.data.source.{pname} is not set (needed by data.name={data.name!r})")
  spec.setdefault("on_error", "raise")     # by default the pipeline's policy (config.data.on_error) decides
  return sources.make_source({"type": data.name, **spec})


def _corpus(source, kind: str, caption_field: str, limit: int):
  if kind == "llava_json":
    yield from source.texts(limit)
    return
  for i in range(min(len(source), limit)):
    try:
      value = source[i].get(caption_field)
    except Exception:  # noqa: BLE001 - a corrupt record only costs its words
      continue
    if value is not None:
      yield value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def real_data_tokenizer(config, source, io: ModelIO, workdir: str | None):
  """`config.data.tokenizer` (a local HF tokenizer), else the run's WordTokenizer: reused from
  `<workdir>/tokenizer.json`, else built from the data's words (ids kept below image_token_id)."""
  from input_pipeline.tokenizers import WordTokenizer, load_tokenizer
  data = data_section(config.data)
  if data.tokenizer:
    if not os.path.exists(data.tokenizer):
      raise ConfigError(f"config.data.tokenizer={data.tokenizer!r}: no such file or folder")
    tok = load_tokenizer(data.tokenizer, chat_format=data.chat_format or None)
    if not isinstance(tok, WordTokenizer) and not tok.can_chat:
      raise ConfigError(f"config.data.chat_format is not set and {data.tokenizer} has no chat template "
                        "(set one of llama3, llama3.1, qwen2, qwen2.5, qwen3, chatml, phi3)")
    return tok
  def build():
    texts = [data.caption_prompt, *_corpus(source, data.name, data.caption_field, int(data.vocab_records))]
    # Word ids stay below the model's placeholder id, unless that id is the tokenizer's own <image>.
    own_image_id = len(WordTokenizer.SPECIALS) - 1
    cap = io.image_token_id if io.image_token_id > own_image_id else None
    return WordTokenizer.from_texts(texts, max_size=cap)
  return run_word_tokenizer(workdir, build)


def make_real_data(config, workdir: str | None, *, io: ModelIO) -> TrainData:
  """Real-world sources (see the module docstring) -> TrainData."""
  from input_pipeline import pipeline
  data = data_section(config.data)
  if not io.reads_images:
    raise ConfigError(f"config.model.und_encoder and config.model.image_token_id are needed to train on "
                      f"config.data.name={data.name!r} (understanding rows with images)")
  max_length = int(data.max_length or 0)
  if max_length <= io.num_image_tokens:
    raise ConfigError(f"config.data.max_length={max_length} must exceed the {io.num_image_tokens} image tokens")
  if data.image_aspect not in ("pad", "resize"):
    raise ConfigError(f"config.data.image_aspect={data.image_aspect!r}: expected 'pad' or 'resize'")
  tasks = tuple(data.tasks or ("und",))
  if set(tasks) - {"und", "gen"}:
    raise ConfigError(f"config.data.tasks={tasks}: expected a subset of ('und', 'gen')")
  if "gen" in tasks and (data.name == "llava_json" or io.gen_image_size is None):
    raise ConfigError(f"config.data.tasks has 'gen': needs a caption source and a generation model "
                      f"(data.name={data.name!r}, model.type={config.model.get('type', 'unified')!r})")
  source = make_real_source(config)
  tok = real_data_tokenizer(config, source, io, workdir)
  prep = RealDataPreprocess(
      tok, io, kind=data.name, max_length=max_length, image_aspect=data.image_aspect,
      chat_format=data.chat_format or None, caption_prompt=data.caption_prompt,
      image_field=data.image_field, caption_field=data.caption_field, tasks=tasks, gen_len=data.gen_len)
  ds = pipeline.make_dataset(source, seed=config.seed, batch_size=data.batch_size // jax.process_count(),
                             preprocess=prep, worker_count=data.worker_count)
  return TrainData(iter(ds), tok, data.data_dir or default_data_dir())
