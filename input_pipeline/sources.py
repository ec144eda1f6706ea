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


# Transparent pixels are composited over this colour (RGB, uint8). UNCONFIRMED choice: white is what
# a browser shows behind a transparent image on a default page, and the background that vLLM's image
# loading (`rgba_to_rgb`) and the IDEFICS image processor in transformers (`convert_to_rgb`)
# composite onto, so a model sees the same pixels here as when it is served from there.
ALPHA_BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PILLOW_TO_RGB_MODES = ("CMYK", "YCbCr", "HSV", "RGBX")


def decode_image(data: bytes, where: str) -> np.ndarray:
  """Decodes encoded image bytes (JPEG/PNG/WebP/GIF/TIFF/...) to uint8 `[H, W, 3]` RGB with Pillow.

  Every mode Pillow opens is mapped to 8-bit RGB by `image_to_rgb` (16-bit and float images are
  rescaled, alpha is composited over `ALPHA_BACKGROUND`; see there for the rules). An animated
  GIF/WebP/APNG gives its first frame. EXIF orientation is not applied: pixels come back in the
  order they are stored, as before (boxes or points that a record carries refer to that grid).

  Args:
    data: the encoded image.
    where: names the file and record for the error message.

  Returns:
    The image as a C-contiguous uint8 array `[H, W, 3]`.

  Raises:
    CorruptRecord: when Pillow cannot decode the bytes, or the image's mode or values have no RGB
      reading (one line naming `where`).

  Example:
    >>> img = decode_image(open("cat.jpg", "rb").read(), where="cat.jpg")
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # the first frame of a multi-frame file
      return image_to_rgb(img, where)
  except CorruptRecord:
    raise
  except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad input
    raise CorruptRecord(where, f"undecodable image ({type(e).__name__}: {one_line(e)})") from e


def image_to_rgb(img, where: str) -> np.ndarray:
  """A decoded Pillow image of any mode as uint8 `[H, W, 3]` RGB.

  Rules, by mode:
    * "RGB", "L", "1": as stored ("1" -> 0 or 255, gray copied to the three channels).
    * "I;16", "I;16L", "I;16B", "I;16N": `value >> 8`, so 0 -> 0 and 65535 -> 255. A 16-bit file
      uses the full 0..65535 range, so the high byte is its 8-bit reading (the same rule Pillow
      applies itself when it opens a 16-bit RGB/RGBA PNG as "RGB"/"RGBA").
    * "I" (32-bit signed): read as 16-bit (`value >> 8`) when every value is in 0..65535 (what a
      16-bit gray file opened as "I" holds); any value outside that is a CorruptRecord, since there
      is no agreed scale for it (clipping would turn e.g. a depth map white).
    * "F" (32-bit float): values are normalized intensities in [0, 1]: `round(value * 255)`, values
      outside [0, 1] clipped; NaN or infinite values are a CorruptRecord.
    * "LA", "RGBA", "PA" (straight alpha), "La", "RGBa" (premultiplied alpha), "P" (palette, with
      or without a transparent entry) and "1"/"L"/"RGB"/16-bit gray with a PNG transparent colour
      key: composited over `ALPHA_BACKGROUND` in sRGB values, `out = (c * a + bg * (255 - a)) / 255`
      (premultiplied: `out = c + bg * (255 - a) / 255`), rounded to nearest.
    * "CMYK", "YCbCr", "HSV", "RGBX": Pillow's own conversion to RGB.
    * "LAB" (Pillow's: L* scaled to 0..255, a* and b* signed bytes): ICC L*a*b* (D50) to sRGB with
      LittleCMS (`PIL.ImageCms`); a CorruptRecord "unsupported image mode LAB" when this Pillow was
      built without it.
    * anything else: CorruptRecord "unsupported image mode X".

  Args:
    img: a loaded `PIL.Image.Image` (anything with Pillow's `mode`, `info` and conversions).
    where: names the file and record for the error message.

  Returns:
    A C-contiguous uint8 array `[H, W, 3]`.

  Raises:
    CorruptRecord: for an unsupported mode or values the rules above reject.

  Example:
    >>> image_to_rgb(Image.new("LA", (2, 1), (0, 0)), "x").tolist()   # transparent black
    [[[255, 255, 255], [255, 255, 255]]]
  """
  color, alpha, premultiplied = _color_and_alpha(img, where)
  if alpha is not None:
    color = _composite(color, alpha, premultiplied)
  return np.ascontiguousarray(color, dtype=np.uint8)


def _color_and_alpha(img, where: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
  """(uint8 `[H, W, 3]` colour, uint8 `[H, W]` alpha or None, whether the colour is premultiplied)."""
  mode = img.mode
  if mode in _SIXTEEN_BIT_MODES or mode == "I":
    return _sixteen_bit_gray(img, where)
  if mode == "F":
    return _gray3(_float_to_uint8(np.asarray(img, np.float64), where)), None, False
  if mode == "P" or mode == "PA" or (mode in ("1", "L", "RGB") and "transparency" in img.info):
    # Palette entries may carry alpha (PNG tRNS, GIF's transparent index) and PNG may name one
    # colour transparent: Pillow turns each into an alpha band.
    img, mode = img.convert("RGBA"), "RGBA"
  if mode in ("1", "L"):
    return _gray3(np.asarray(img.convert("L"))), None, False
  if mode == "RGB":
    return np.asarray(img), None, False
  if mode in ("LA", "La", "RGBA", "RGBa"):
    pixels = np.asarray(img)
    color = _gray3(pixels[..., 0]) if pixels.shape[-1] == 2 else pixels[..., :3]
    return color, pixels[..., -1], mode in ("La", "RGBa")
  if mode in _PILLOW_TO_RGB_MODES:
    return np.asarray(img.convert("RGB")), None, False
  if mode == "LAB":
    return _lab_to_rgb(img, where), None, False
  raise CorruptRecord(where, f"unsupported image mode {mode}")


def _gray3(gray: np.ndarray) -> np.ndarray:
  """uint8 `[H, W]` -> `[H, W, 3]`."""
  return np.repeat(gray[..., None], 3, axis=-1)


def _sixteen_bit_gray(img, where: str) -> tuple[np.ndarray, np.ndarray | None, bool]:
  """16-bit (or 16-bit-valued "I") gray -> high byte, with a PNG transparent gray key as alpha."""
  values = np.asarray(img).astype(np.int64)
  if img.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
    raise CorruptRecord(where, f"mode I values {values.min()}..{values.max()} are outside the "
                               "16-bit range 0..65535")
  gray = _gray3((values >> 8).astype(np.uint8))
  key = img.info.get("transparency")
  if isinstance(key, int) and not isinstance(key, bool):
    return gray, np.where(values == key, 0, 255).astype(np.uint8), False
  return gray, None, False


def _float_to_uint8(values: np.ndarray, where: str) -> np.ndarray:
  """Float intensities in [0, 1] -> uint8 (x 255, rounded, clipped)."""
  if not np.isfinite(values).all():
    raise CorruptRecord(where, "mode F image has NaN or infinite values")
  return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _composite(color: np.ndarray, alpha: np.ndarray, premultiplied: bool) -> np.ndarray:
  """Alpha-blends uint8 `[H, W, 3]` colour over `ALPHA_BACKGROUND` (integer maths, rounded)."""
  c = color.astype(np.int64)
  a = alpha.astype(np.int64)[..., None]
  bg = np.asarray(ALPHA_BACKGROUND, np.int64)
  numerator = (c * 255 if premultiplied else c * a) + bg * (255 - a)
  return np.minimum((numerator + 127) // 255, 255).astype(np.uint8)


def _lab_to_rgb(img, where: str) -> np.ndarray:
  try:
    transform = _lab_transform()
  except ImportError:  # a Pillow built without LittleCMS fails on first use of ImageCms
    raise CorruptRecord(where, "unsupported image mode LAB (this Pillow has no LittleCMS)") from None
  from PIL import ImageCms  # pylint: disable=g-import-not-at-top
  return np.asarray(ImageCms.applyTransform(img, transform))


_LAB_TRANSFORM = []


def _lab_transform():
  """The LittleCMS L*a*b* (D50) -> sRGB transform, built once per process. NOOPTIMIZE: the default
  precomputed 8-bit table is off by up to ~10 levels for some colours (Pillow's own LAB -> RGB
  `convert` shares that error); evaluated exactly it stays within 1 of the CIE formulas."""
  if not _LAB_TRANSFORM:
    from PIL import ImageCms  # pylint: disable=g-import-not-at-top
    _LAB_TRANSFORM.append(ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB",
        flags=ImageCms.Flags.NOOPTIMIZE))
  return _LAB_TRANSFORM[0]


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
