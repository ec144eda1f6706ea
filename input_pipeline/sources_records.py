"""ArrayRecord sources: our own msgpack-encoded records, and TFDS datasets written as ArrayRecord.

Record encoding for files we write ("jaxmodels msgpack record, v1"): each ArrayRecord record is one
msgpack map with `str` keys. Values may be None, bool, int, float, str, bytes, lists and maps of
these, and numpy arrays or numpy scalars. A numpy value is a msgpack extension of type 1 whose
payload is the msgpack array `[dtype, shape, raw C-order bytes]` (`dtype` is `np.dtype.str`, e.g.
"<f4", or the dtype name for ml_dtypes types such as "bfloat16"); it decodes to a numpy array
(numpy scalars to 0-d arrays). Images are best stored encoded (PNG/JPEG bytes) and decoded on read
by naming the field in `image_fields`. Files are written with `group_size:1`, which Grain needs for
fast random access.

  >>> from input_pipeline.sources_records import write_array_record, ArrayRecordSource
  >>> write_array_record("/tmp/d.array_record", [{"caption": "a red circle", "label": np.int32(3),
  ...                                             "image": png_bytes}])
  1
  >>> src = ArrayRecordSource("/tmp/d.array_record", image_fields=("image",))
  >>> src[0]["image"].shape, src[0]["caption"]
  ((32, 32, 3), 'a red circle')

TFDS datasets prepared with `file_format="array_record"` are read with `tfds.data_source`, which
needs no TensorFlow:

  >>> src = TfdsSource("shapes_world", split="train", data_dir="~/tensorflow_datasets")
"""
from __future__ import annotations

import bisect
import os
import threading
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np

from input_pipeline.sources import CorruptRecord
from input_pipeline.sources import DataError
from input_pipeline.sources import RecordSource
from input_pipeline.sources import decode_image
from input_pipeline.sources import expand_paths
from input_pipeline.sources import one_line

NDARRAY_EXT = 1
RECORD_FORMAT = "jaxmodels-msgpack-v1"


def _pack_default(obj: Any):
  if isinstance(obj, (np.ndarray, np.generic)):
    arr = np.asarray(obj)
    if arr.dtype.kind == "O":
      raise TypeError("numpy arrays of dtype object cannot be encoded")
    dtype = arr.dtype.name if arr.dtype.kind == "V" else arr.dtype.str
    payload = msgpack.packb([dtype, list(arr.shape), arr.tobytes(order="C")], use_bin_type=True)
    return msgpack.ExtType(NDARRAY_EXT, payload)
  raise TypeError(f"cannot encode a value of type {type(obj).__name__}")


def _unpack_ext(code: int, data: bytes):
  if code != NDARRAY_EXT:
    raise ValueError(f"unknown msgpack extension type {code}")
  dtype, shape, raw = msgpack.unpackb(data, raw=False)
  try:
    dt = np.dtype(dtype)
  except TypeError:
    import ml_dtypes  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    dt = np.dtype(dtype)
  return np.frombuffer(raw, dtype=dt).reshape(shape).copy()


def encode_record(record: Mapping[str, Any]) -> bytes:
  """Serializes one record (a dict with str keys) in the v1 msgpack encoding.

  Raises:
    DataError: for a value that cannot be encoded (e.g. an arbitrary Python object).

  Example:
    >>> decode_record(encode_record({"x": np.arange(3, dtype=np.int16)}))["x"]
    array([0, 1, 2], dtype=int16)
  """
  if not isinstance(record, Mapping) or not all(isinstance(k, str) for k in record):
    raise DataError(f"record must be a dict with str keys, got {type(record).__name__}")
  try:
    return msgpack.packb(dict(record), default=_pack_default, use_bin_type=True)
  except (TypeError, ValueError) as e:
    raise DataError(f"cannot encode record with keys {sorted(record)}: {one_line(e)}") from e


def decode_record(data: bytes) -> dict[str, Any]:
  """Parses bytes written by `encode_record` back into a dict (numpy values as numpy arrays)."""
  record = msgpack.unpackb(data, raw=False, ext_hook=_unpack_ext, strict_map_key=False)
  if not isinstance(record, dict):
    raise ValueError(f"expected a msgpack map, got {type(record).__name__}")
  return record


def write_array_record(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
  """Writes records to one ArrayRecord file (group_size 1) in the v1 encoding.

  Args:
    path: the output file (parent directories are created).
    records: dicts of numpy arrays / bytes / str / Python scalars.

  Returns:
    The number of records written.

  Example:
    >>> write_array_record("/tmp/train-00000-of-00001.array_record", [{"text": "hi"}])
    1
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  count = 0
  try:
    for record in records:
      writer.write(encode_record(record))
      count += 1
  finally:
    writer.close()
  return count


class ArrayRecordSource(RecordSource):
  """Random access over ArrayRecord files of v1-encoded records (or raw bytes).

  Args:
    paths: file(s), globs, comma-separated lists or `{000..009}` ranges (see `expand_paths`).
    image_fields: fields holding encoded image bytes, decoded to uint8 `[H, W, 3]` on read.
    required_fields: fields every record must have (a record without one is corrupt).
    raw: return `{"bytes": record_bytes}` without decoding (for other encodings).
    on_error: "raise" or "skip" (see `input_pipeline.sources`).

  Raises:
    DataError: when no file matches or a file is not an ArrayRecord file.

  Example:
    >>> src = ArrayRecordSource("/data/caps-*.array_record", image_fields=("image",),
    ...                         required_fields=("image", "caption"), on_error="skip")
    >>> len(src), src[0]["caption"]
  """

  _TRANSIENT = ("_reader",)

  def __init__(self, paths: str | Sequence[str], *, image_fields: Sequence[str] = (),
               required_fields: Sequence[str] = (), raw: bool = False, on_error: str = "raise"):
    super().__init__(on_error)
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    self.paths = expand_paths(paths, what="array_record files")
    counts = []
    for path in self.paths:
      reader = array_record_module.ArrayRecordReader(path)
      if not reader.ok():
        raise DataError(f"{path}: not a readable ArrayRecord file")
      counts.append(int(reader.num_records()))
      reader.close()
    self.image_fields = tuple(image_fields)
    self.required_fields = tuple(required_fields)
    self.raw = raw
    self._ends = list(np.cumsum(counts)) if counts else []
    self._counts = counts
    self._reader = None
    self._open_lock = threading.Lock()

  def __getstate__(self):
    state = super().__getstate__()
    state.pop("_open_lock", None)
    return state

  def _reopen(self) -> None:
    self._open_lock = threading.Lock()

  def _num_records(self) -> int:
    return int(self._ends[-1]) if self._ends else 0

  def locate(self, index: int) -> tuple[str, int]:
    """The file holding global record `index`, and the record's position in that file."""
    f = bisect.bisect_right(self._ends, index)
    start = int(self._ends[f - 1]) if f else 0
    return self.paths[f], index - start

  def _data(self):
    if self._reader is None:
      with self._open_lock:
        if self._reader is None:
          import grain  # pylint: disable=g-import-not-at-top
          # "path[start:end]" tells the reader the record counts, so files are not opened twice.
          spans = [f"{p}[0:{n}]" for p, n in zip(self.paths, self._counts)]
          self._reader = grain.sources.ArrayRecordDataSource(spans)
    return self._reader

  def _read(self, index: int) -> dict[str, Any]:
    path, pos = self.locate(index)
    where = f"{path} record {pos}"
    try:
      data = self._data()[index]
    except Exception as e:  # noqa: BLE001 - the C++ reader raises generic errors for bad chunks
      raise CorruptRecord(where, f"unreadable ({type(e).__name__}: {one_line(e)})") from e
    if self.raw:
      return {"bytes": data}
    try:
      record = decode_record(data)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad bytes
      raise CorruptRecord(where, f"not a {RECORD_FORMAT} record ({one_line(e)})") from e
    return _finish(record, where, self.image_fields, self.required_fields)


def _finish(record: dict[str, Any], where: str, image_fields: Sequence[str],
            required_fields: Sequence[str]) -> dict[str, Any]:
  """Checks required fields and decodes image fields in place."""
  for name in required_fields:
    if name not in record:
      raise CorruptRecord(where, f"missing field {name!r}")
  for name in image_fields:
    if name not in record:
      raise CorruptRecord(where, f"missing image field {name!r}")
    value = record[name]
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 3:
      continue  # already decoded pixels
    if not isinstance(value, (bytes, np.bytes_)):
      raise CorruptRecord(where, f"field {name!r} is {type(value).__name__}, not image bytes")
    record[name] = decode_image(bytes(value), f"{where} field {name!r}")
  return record


class TfdsSource(RecordSource):
  """A TFDS dataset prepared as ArrayRecord, read with `tfds.data_source` (no TensorFlow needed).

  Text features are returned as `str`, Python scalars as numpy scalars; other features as TFDS
  decodes them. Encoded-bytes image fields listed in `image_fields` are decoded with Pillow.

  Args:
    name: the dataset name, optionally with config and version ("shapes_world/default:1.0.0").
    split: the split ("train", "validation[:10%]", ...).
    data_dir: where the dataset was prepared (TFDS's default when None).
    image_fields: top-level fields of encoded image bytes to decode to uint8 `[H, W, 3]`.
    download: let TFDS download and prepare a registered dataset that is missing.
    on_error: "raise" or "skip".

  Raises:
    DataError: when the dataset or split is not found under `data_dir`.

  Example:
    >>> src = TfdsSource("mnist", split="train", data_dir="/data/tfds")
    >>> src[0]["image"].shape
    (28, 28, 1)
  """

  _TRANSIENT = ("_ds",)  # pickled by name: each worker reopens the dataset from data_dir

  def __init__(self, name: str, *, split: str, data_dir: str | None = None,
               image_fields: Sequence[str] = (), download: bool = False, on_error: str = "raise"):
    super().__init__(on_error)
    self.name, self.split, self.data_dir = name, split, data_dir
    self.image_fields = tuple(image_fields)
    self._ds = None
    self._open(download)
    features = self._ds.dataset_info.features
    self.text_fields = tuple(k for k, f in features.items() if type(f).__name__ == "Text")
    self._len = len(self._ds)

  def _open(self, download: bool = False):
    if self._ds is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      try:
        self._ds = tfds.data_source(self.name, split=self.split, data_dir=self.data_dir,
                                    download=download)
      except Exception as e:  # noqa: BLE001 - TFDS raises many error types for a missing dataset
        raise DataError(f"TFDS dataset {self.name!r} split {self.split!r} "
                        f"(data_dir={self.data_dir}): {type(e).__name__}: {one_line(e)}") from e
    return self._ds

  def _num_records(self) -> int:
    return self._len

  def _read(self, index: int) -> dict[str, Any]:
    where = f"TFDS {self.name}/{self.split} record {index}"
    try:
      record = dict(self._open()[index])
    except DataError:
      raise
    except Exception as e:  # noqa: BLE001 - deserialization errors vary by feature type
      raise CorruptRecord(where, f"undecodable ({type(e).__name__}: {one_line(e)})") from e
    for key, value in record.items():
      if key in self.text_fields and isinstance(value, bytes):
        try:
          record[key] = value.decode("utf-8")
        except UnicodeDecodeError as e:
          raise CorruptRecord(where, f"field {key!r} is not UTF-8 text") from e
      elif isinstance(value, (bool, int, float)):
        record[key] = np.asarray(value)
    return _finish(record, where, self.image_fields, ())
