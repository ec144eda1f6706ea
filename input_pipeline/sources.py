"""Random-access data sources for Grain: TFDS, ArrayRecord, WebDataset tar shards, LLaVA JSON.

Every source is an object with `__len__` and `__getitem__(index) -> dict` whose values are numpy
arrays, `bytes` or `str` (images decoded with Pillow to uint8 `[H, W, 3]`), so it plugs straight into
`grain.MapDataset.source(...)` (see `input_pipeline.pipeline.make_dataset`). Sources open their files
lazily in each process and drop open handles when pickled, so they travel to Grain's worker processes.

A corrupt record (an image Pillow cannot decode, a missing field, a record that does not parse)
follows the source's `on_error` policy:
  * `"raise"` (default): `DataError` with a one-line message naming the file and the key/index.
  * `"skip"`: the record is replaced by the next good record (index + 1, + 2, ... wrapping around),
    and `source.num_skipped` counts the corrupt records met so far in this process (with Grain worker
    processes each worker keeps its own count); `source.skipped_indices` holds their indices.

The concrete readers live in `sources_records.py` (ArrayRecord + TFDS), `sources_webdataset.py` and
`sources_llava.py`; they are importable from here. Pick one from a config with `make_source`:

  >>> from input_pipeline import sources
  >>> src = sources.make_source({"type": "webdataset", "shards": "/data/blip3o/{00000..00009}.tar",
  ...                            "on_error": "skip"})
  >>> example = src[0]        # {"image": uint8 [H, W, 3], "caption": str, "key": str}

Spec types and their keys (the rest of a reader's keyword arguments may be given too):
  * `{"type": "tfds", "name": ..., "split": ..., "data_dir": ...}` -> `TfdsSource`
  * `{"type": "array_record", "paths": ...}` -> `ArrayRecordSource`
  * `{"type": "webdataset", "shards": ...}` -> `WebDatasetSource`
  * `{"type": "llava_json", "json_path": ..., "image_dir": ...}` -> `LlavaJsonSource`
"""
from __future__ import annotations

import glob
import importlib
import inspect
import io
import json
import logging
import os
import re
import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxmodels.errors import ConfigError
from jaxmodels.errors import JaxModelsError

_log = logging.getLogger(__name__)

ON_ERROR_POLICIES = ("raise", "skip")

# Public reader classes and helpers defined in the sources_* modules, loaded on first use.
_LAZY = {
    "ArrayRecordSource": "input_pipeline.sources_records",
    "TfdsSource": "input_pipeline.sources_records",
    "encode_record": "input_pipeline.sources_records",
    "decode_record": "input_pipeline.sources_records",
    "write_array_record": "input_pipeline.sources_records",
    "WebDatasetSource": "input_pipeline.sources_webdataset",
    "write_webdataset_shard": "input_pipeline.sources_webdataset",
    "LlavaJsonSource": "input_pipeline.sources_llava",
}

_SOURCE_TYPES = {
    "tfds": "TfdsSource",
    "array_record": "ArrayRecordSource",
    "webdataset": "WebDatasetSource",
    "llava_json": "LlavaJsonSource",
}


class DataError(JaxModelsError):
  """A data file, shard or record is missing, unreadable or malformed."""


class CorruptRecord(Exception):
  """Raised inside a reader for one bad record; `RecordSource` turns it into its `on_error` policy."""

  def __init__(self, where: str, problem: str):
    super().__init__(f"{where}: {one_line(problem)}")
    self.where = where
    self.problem = problem


def one_line(text: Any, limit: int = 300) -> str:
  """First line of `str(text)`, cut to `limit` characters (error messages stay one line)."""
  lines = str(text).strip().splitlines()
  line = lines[0] if lines else ""
  return line if len(line) <= limit else line[: limit - 3] + "..."


def json_lines(text: str, path: str) -> list[Any]:
  """The records of a JSON Lines text (blank lines skipped); a bad line is a DataError naming it."""
  records = []
  for n, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        records.append(json.loads(line))
      except ValueError as e:
        raise DataError(f"{path} line {n}: not valid JSON ({one_line(e)})") from None
  return records


def decode_image(data: bytes, where: str) -> np.ndarray:
  """Decodes encoded image bytes (JPEG/PNG/WebP/...) to uint8 `[H, W, 3]` RGB with Pillow.

  Args:
    data: the encoded image.
    where: names the file and record for the error message.

  Returns:
    The image as a C-contiguous uint8 array.

  Raises:
    CorruptRecord: when Pillow cannot decode the bytes.

  Example:
    >>> img = decode_image(open("cat.jpg", "rb").read(), where="cat.jpg")
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data)) as img:
      rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)
  except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad input
    raise CorruptRecord(where, f"undecodable image ({type(e).__name__}: {one_line(e)})") from e


def empty_image() -> np.ndarray:
  """The placeholder for a record without an image: uint8 of shape `[0, 0, 3]`."""
  return np.zeros((0, 0, 3), np.uint8)


def expand_paths(paths: str | os.PathLike | Iterable[str | os.PathLike], *, what: str) -> list[str]:
  """Expands file patterns into a sorted-per-pattern list of existing files.

  Accepts one path or a list; each entry may be a glob (`/data/*.tar`), a comma-separated list, or a
  WebDataset brace range (`/data/shard-{00000..00099}.tar`, zero padding kept).

  Args:
    paths: the pattern(s).
    what: what the files are, for the error message (e.g. "webdataset shards").

  Returns:
    Absolute paths, in the order given (each glob's matches sorted).

  Raises:
    DataError: when a pattern matches no file.

  Example:
    >>> expand_paths("/data/{000..002}.tar", what="shards")
    ['/data/000.tar', '/data/001.tar', '/data/002.tar']
  """
  if isinstance(paths, (str, os.PathLike)):
    entries = [p for p in os.fspath(paths).split(",") if p]
  else:
    entries = [os.fspath(p) for p in paths]
  if not entries:
    raise DataError(f"no {what} given")
  out = []
  for entry in entries:
    for pattern in _expand_braces(entry):
      if glob.has_magic(pattern):
        matches = sorted(glob.glob(pattern))
      else:
        matches = [pattern] if os.path.exists(pattern) else []
      if not matches:
        raise DataError(f"{what}: no file matches {pattern!r}")
      out.extend(os.path.abspath(m) for m in matches)
  return out


def _expand_braces(pattern: str) -> list[str]:
  """Expands the first `{a..b}` range of `pattern` (recursively), keeping zero padding."""
  m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
  if m is None:
    return [pattern]
  lo, hi = m.group(1), m.group(2)
  width = len(lo) if lo.startswith("0") else 0
  head, tail = pattern[: m.start()], pattern[m.end():]
  out = []
  for i in range(int(lo), int(hi) + 1):
    out.extend(_expand_braces(f"{head}{i:0{width}d}{tail}"))
  return out


class RecordSource:
  """Base class of the readers: bounds checks, the corrupt-record policy and its counters.

  Subclasses implement `_num_records()` and `_read(index) -> dict`, raising `CorruptRecord` for a
  bad record. Open handles live in the attributes named in `_TRANSIENT`: they are pickled as None
  and re-created lazily by the subclass.

  Example:
    >>> class Squares(RecordSource):
    ...   def _num_records(self): return 4
    ...   def _read(self, i): return {"x": i * i}
    >>> Squares()[3]
    {'x': 9}
  """

  _TRANSIENT: tuple[str, ...] = ()

  def __init__(self, on_error: str = "raise"):
    if on_error not in ON_ERROR_POLICIES:
      raise ConfigError(f"on_error={on_error!r}: expected one of {ON_ERROR_POLICIES}")
    self.on_error = on_error
    self.num_skipped = 0
    self.skipped_indices: set[int] = set()
    self._stats_lock = threading.Lock()

  # -- to implement -------------------------------------------------------------------------------
  def _num_records(self) -> int:
    raise NotImplementedError

  def _read(self, index: int) -> dict[str, Any]:
    raise NotImplementedError

  # -- public -------------------------------------------------------------------------------------
  def __len__(self) -> int:
    return self._num_records()

  def __getitem__(self, index) -> dict[str, Any]:
    n = len(self)
    i = int(index)
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"{type(self).__name__}: index {int(index)} out of range for {n} records")
    try:
      return self._read(i)
    except CorruptRecord as e:
      if self.on_error == "raise":
        raise DataError(str(e)) from e
      self._note_skip(i, e)
    for step in range(1, n):
      j = (i + step) % n
      try:
        return self._read(j)
      except CorruptRecord as e:
        self._note_skip(j, e)
    raise DataError(f"{type(self).__name__}: all {n} records are corrupt (on_error='skip')")

  def __iter__(self):
    for i in range(len(self)):
      yield self[i]

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_stats_lock", None)
    for name in self._TRANSIENT:
      state[name] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._stats_lock = threading.Lock()
    self._reopen()

  def _reopen(self) -> None:
    """Re-creates transient state after unpickling (the transient attributes arrive as None)."""

  def _note_skip(self, index: int, err: CorruptRecord) -> None:
    with self._stats_lock:
      self.num_skipped += 1
      first = index not in self.skipped_indices
      self.skipped_indices.add(index)
    if first:
      _log.warning("skipping corrupt record %d: %s", index, err)


def _source_class(type_name: str):
  return getattr(importlib.import_module(_LAZY[type_name]), type_name)


def make_source(spec: Mapping[str, Any]) -> RecordSource:
  """Builds a source from a config dict; `spec["type"]` picks the reader, other keys are its kwargs.

  Args:
    spec: a dict (or `ml_collections.ConfigDict`) with `type` in
      {"tfds", "array_record", "webdataset", "llava_json"} and the reader's keyword arguments.

  Returns:
    The source (a `RecordSource`).

  Raises:
    ConfigError: for an unknown type, an unknown key, or a missing required key.

  Example:
    >>> src = make_source({"type": "llava_json", "json_path": "llava_665k.json",
    ...                    "image_dir": "/data/llava/images", "on_error": "skip"})
  """
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  spec = dict(spec)
  kind = spec.pop("type", None)
  if kind not in _SOURCE_TYPES:
    raise ConfigError(f"data source type={kind!r}: expected one of {sorted(_SOURCE_TYPES)}")
  cls = _source_class(_SOURCE_TYPES[kind])
  params = inspect.signature(cls.__init__).parameters
  allowed = [p for p in params if p != "self"]
  for key in spec:
    if key not in allowed:
      raise ConfigError(f"data source {kind!r}: unknown key {key!r} (allowed: {', '.join(allowed)})")
  for name, p in params.items():
    if name != "self" and p.default is inspect.Parameter.empty and name not in spec:
      raise ConfigError(f"data source {kind!r}: missing required key {name!r}")
  return cls(**spec)


def reader_class(kind: str):
  """The reader class of a source `type` ("tfds", "array_record", "webdataset", "llava_json")."""
  if kind not in _SOURCE_TYPES:
    raise ConfigError(f"data source type={kind!r}: expected one of {sorted(_SOURCE_TYPES)}")
  return _source_class(_SOURCE_TYPES[kind])


def source_types() -> Sequence[str]:
  """The `type` names `make_source` accepts."""
  return tuple(_SOURCE_TYPES)


def __getattr__(name: str):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
