"""LLaVA-style conversation JSON + image folder (the format of LLaVA / Florence-VL instruction data).

The JSON file (or JSON Lines, one record per line) holds records like

  {"id": "000000033471",
   "image": "coco/train2017/000000033471.jpg",          # relative to image_dir; optional
   "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the bus?"},
                     {"from": "gpt", "value": "The bus is white and red."}]}

Each example comes back as

  {"id": str,
   "image": uint8 [H, W, 3]  (shape [0, 0, 3] for a text-only record),
   "has_image": np.bool_,
   "image_path": str  ("" for a text-only record),
   "conversations": str}   # JSON list of {"role": "system"|"user"|"assistant", "content": str}

The conversation is a JSON string so that every value is a numpy array, bytes or str; a preprocess
function turns it into tokens with `json.loads` and `Tokenizer.apply_chat_template` /
`encode_chat`. Roles are mapped human -> user, gpt -> assistant (user/assistant/system kept).

  >>> from input_pipeline.sources_llava import LlavaJsonSource
  >>> src = LlavaJsonSource("llava_v1_5_mix665k.json", image_dir="/data/llava", on_error="skip")
  >>> messages = json.loads(src[0]["conversations"])
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from input_pipeline.sources import CorruptRecord
from input_pipeline.sources import DataError
from input_pipeline.sources import RecordSource
from input_pipeline.sources import decode_image
from input_pipeline.sources import empty_image
from input_pipeline.sources import json_lines
from input_pipeline.sources import one_line

ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
            "system": "system"}


def _load_records(path: str) -> list[bytes]:
  """The file's records, each re-serialized compactly (cheap to keep and to pickle to workers)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: LLaVA conversation file not found")
  with open(path, "rb") as f:
    text = f.read().decode("utf-8", errors="strict")
  stripped = text.lstrip()
  if stripped.startswith("["):
    try:
      records = json.loads(text)
    except ValueError as e:
      raise DataError(f"{path}: not valid JSON ({one_line(e)})") from e
  else:  # JSON Lines
    records = json_lines(text, path)
  if not isinstance(records, list):
    raise DataError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
  return [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]


class LlavaJsonSource(RecordSource):
  """Random access over a LLaVA-style conversation file, with images read from `image_dir`.

  Args:
    json_path: the `.json` (a list of records) or `.jsonl` file.
    image_dir: the folder the records' "image" paths are relative to (default: the JSON's folder).
    require_image: treat a record without "image" as corrupt (default: return an empty image).
    on_error: "raise" or "skip". Missing "conversations", an unknown role, a non-string turn, a
      missing or undecodable image file make a record corrupt.

  Raises:
    DataError: when the file is missing or does not parse as JSON / JSON Lines.

  Example:
    >>> src = LlavaJsonSource("data/florence_vl_ft.json", image_dir="data/images")
    >>> ex = src[0]
    >>> ex["image"].shape, json.loads(ex["conversations"])[0]["role"]
    ((480, 640, 3), 'user')
  """

  def __init__(self, json_path: str, *, image_dir: str | None = None, require_image: bool = False,
               on_error: str = "raise"):
    super().__init__(on_error)
    self.json_path = os.path.abspath(os.fspath(json_path))
    self.image_dir = os.path.abspath(image_dir) if image_dir else os.path.dirname(self.json_path)
    self.require_image = require_image
    self._records = _load_records(self.json_path)

  def _num_records(self) -> int:
    return len(self._records)

  def texts(self, limit: int | None = None):
    """The conversation texts of the first `limit` records (no image is read), e.g. to build a
    vocabulary; records that do not parse are passed over."""
    for raw in self._records[:limit]:
      rec = json.loads(raw)
      turns = rec.get("conversations") if isinstance(rec, dict) else None
      for turn in turns if isinstance(turns, list) else ():
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
          yield turn["value"]

  def _read(self, index: int) -> dict[str, Any]:
    rec = json.loads(self._records[index])
    rid = rec.get("id", index) if isinstance(rec, dict) else index
    where = f"{self.json_path} record {index} (id {rid!r})"
    if not isinstance(rec, dict):
      raise CorruptRecord(where, f"record is {type(rec).__name__}, not an object")
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
      raise CorruptRecord(where, "missing or empty field 'conversations'")
    messages = []
    for t, turn in enumerate(turns):
      if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise CorruptRecord(where, f"conversations[{t}] lacks 'from'/'value'")
      role = ROLE_MAP.get(turn["from"]) if isinstance(turn["from"], str) else None
      if role is None:
        raise CorruptRecord(where, f"conversations[{t}] has unknown role {turn['from']!r}")
      if not isinstance(turn["value"], str):
        raise CorruptRecord(where, f"conversations[{t}].value is not a string")
      messages.append({"role": role, "content": turn["value"]})
    image_rel = rec.get("image")
    if isinstance(image_rel, list):
      if len(image_rel) != 1:
        raise CorruptRecord(where, f"{len(image_rel)} images; only single-image records are read")
      image_rel = image_rel[0]
    if image_rel is None:
      if self.require_image:
        raise CorruptRecord(where, "missing field 'image'")
      image, image_path = empty_image(), ""
    else:
      if not isinstance(image_rel, str):
        raise CorruptRecord(where, "field 'image' is not a path string")
      image_path = os.path.join(self.image_dir, image_rel)
      try:
        with open(image_path, "rb") as f:
          data = f.read()
      except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
        reason = getattr(e, "strerror", None) or one_line(e)
        raise CorruptRecord(where, f"image {image_path!r}: {reason}") from e
      image = decode_image(data, f"{where} image {image_path!r}")
    return {"id": str(rid), "image": image, "has_image": np.bool_(image_rel is not None),
            "image_path": image_path, "conversations": json.dumps(messages, ensure_ascii=False)}
