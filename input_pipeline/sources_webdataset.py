"""WebDataset tar shards of image + caption (the format BLIP3-o's pretraining data ships in).

A shard is a plain (uncompressed) tar file; the members of one sample share a key, the member path
up to the first "." of its file name (`images/000123.jpg` and `images/000123.txt` form sample
`images/000123`). A sample has one image (`.jpg`, `.jpeg`, `.png` or `.webp`) and one caption
(`.txt`, or `.json` holding a "caption"/"text"/"prompt" field; `.txt` wins when both exist).

Tar files are sequential, so on first use the source scans every shard's headers (data is skipped,
not read) and keeps an index of (shard, offset, size) per sample; reads are then one `os.pread` per
member. With `cache_index=True` the per-shard index is also written next to the shard as
`<shard>.index.json` (when the directory is writable) and reused while the shard's size and mtime are
unchanged.

  >>> from input_pipeline.sources_webdataset import WebDatasetSource
  >>> src = WebDatasetSource("/data/blip3o-pretrain/{00000..00031}.tar", on_error="skip")
  >>> ex = src[12345]   # {"image": uint8 [H, W, 3], "caption": str, "key": str}
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from input_pipeline.sources import CorruptRecord
from input_pipeline.sources import DataError
from input_pipeline.sources import RecordSource
from input_pipeline.sources import decode_image
from input_pipeline.sources import expand_paths
from input_pipeline.sources import one_line

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt", "json")
INDEX_VERSION = 1


def split_member_name(name: str) -> tuple[str, str] | None:
  """WebDataset's (key, extension) of a tar member path; None for names without an extension."""
  head, _, base = name.rpartition("/")
  if not base or base.startswith(".") or "." not in base:
    return None
  stem, ext = base.split(".", 1)
  key = f"{head}/{stem}" if head else stem
  return key, ext.lower()


def _kind(ext: str, exts: Sequence[str]) -> int:
  """Index of `ext` (or of its last dotted part, "image.jpg" -> "jpg") in `exts`; -1 if absent."""
  for candidate in (ext, ext.rsplit(".", 1)[-1]):
    if candidate in exts:
      return exts.index(candidate)
  return -1


def _scan_shard(path: str, strict: bool) -> list[list]:
  """Rows `[key, img_ext, img_off, img_size, cap_ext, cap_off, cap_size]` for one shard's samples."""
  with open(path, "rb") as f:
    if f.read(2) == b"\x1f\x8b":
      raise DataError(f"{path}: gzip-compressed tar; random access needs an uncompressed .tar shard")
  samples: dict[str, list] = {}
  try:
    with tarfile.open(path, "r:") as tf:
      while True:
        try:
          member = tf.next()
        except tarfile.ReadError as e:
          if strict:
            raise DataError(f"{path}: broken tar ({one_line(e)})") from e
          break  # on_error="skip": keep the samples indexed before the damage
        if member is None:
          break
        if not member.isfile():
          continue
        parts = split_member_name(member.name)
        if parts is None:
          continue
        key, ext = parts
        row = samples.setdefault(key, [key, -1, -1, 0, -1, -1, 0])
        img, cap = _kind(ext, IMAGE_EXTS), _kind(ext, CAPTION_EXTS)
        if img >= 0 and (row[1] < 0 or img < row[1]):
          row[1:4] = [img, member.offset_data, member.size]
        elif cap >= 0 and (row[4] < 0 or cap < row[4]):
          row[4:7] = [cap, member.offset_data, member.size]
  except tarfile.ReadError as e:
    raise DataError(f"{path}: not a tar file ({one_line(e)})") from e
  return list(samples.values())


def _index_path(shard: str) -> str:
  return shard + ".index.json"


def _load_cached_index(shard: str) -> list[list] | None:
  try:
    with open(_index_path(shard)) as f:
      cached = json.load(f)
    st = os.stat(shard)
    if (cached.get("version") == INDEX_VERSION and cached.get("size") == st.st_size
        and cached.get("mtime_ns") == st.st_mtime_ns):
      return cached["samples"]
  except (OSError, ValueError, KeyError, AttributeError):
    pass
  return None


def _save_cached_index(shard: str, rows: list[list]) -> None:
  st = os.stat(shard)
  payload = {"version": INDEX_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "samples": rows}
  tmp = f"{_index_path(shard)}.tmp{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(payload, f, separators=(",", ":"))
    os.replace(tmp, _index_path(shard))
  except OSError:  # read-only data directory: keep the index in memory only
    try:
      os.remove(tmp)
    except OSError:
      pass


class WebDatasetSource(RecordSource):
  """Random access over WebDataset tar shards of image + caption.

  Args:
    shards: shard path(s): globs, comma-separated lists or brace ranges `{00000..00099}`.
    caption_keys: fields tried in order for the caption of a `.json`-only sample.
    cache_index: write/reuse `<shard>.index.json` next to each shard.
    on_error: "raise" or "skip". A sample without an image or caption, an undecodable image, or
      (with "skip") a truncated shard's damaged tail are handled by this policy; a file that is not a
      tar at all always raises `DataError`.

  Example:
    >>> src = WebDatasetSource(["/data/a.tar", "/data/b.tar"])
    >>> len(src), src[0]["caption"]
  """

  _TRANSIENT = ("_fds",)

  def __init__(self, shards: str | Sequence[str], *,
               caption_keys: Sequence[str] = ("caption", "text", "prompt"),
               cache_index: bool = True, on_error: str = "raise"):
    super().__init__(on_error)
    self.shards = expand_paths(shards, what="webdataset shards")
    self.caption_keys = tuple(caption_keys)
    self.cache_index = cache_index
    self._index = None
    self._fds = None
    self._lock = threading.Lock()

  def __getstate__(self):
    self._ensure_index()  # workers receive the index instead of rescanning
    state = super().__getstate__()
    state.pop("_lock", None)
    return state

  def _reopen(self) -> None:
    self._lock = threading.Lock()

  def __del__(self):
    for fd in (getattr(self, "_fds", None) or {}).values():
      try:
        os.close(fd)
      except OSError:
        pass

  # -- index --------------------------------------------------------------------------------------
  def _ensure_index(self) -> dict[str, Any]:
    if self._index is None:
      with self._lock:
        if self._index is None:
          self._index = self._build_index()
    return self._index

  def _build_index(self) -> dict[str, Any]:
    keys, shard_ids, rows = [], [], []
    for s, shard in enumerate(self.shards):
      shard_rows = _load_cached_index(shard) if self.cache_index else None
      if shard_rows is None:
        shard_rows = _scan_shard(shard, strict=self.on_error == "raise")
        if self.cache_index:
          _save_cached_index(shard, shard_rows)
      for row in shard_rows:
        keys.append(row[0])
        shard_ids.append(s)
        rows.append(row[1:])
    table = np.asarray(rows, np.int64).reshape(-1, 6)
    return {"keys": keys, "shard": np.asarray(shard_ids, np.int32), "table": table}

  def _num_records(self) -> int:
    return len(self._ensure_index()["keys"])

  # -- reading ------------------------------------------------------------------------------------
  def _fd(self, s: int) -> int:
    if self._fds is None or s not in self._fds:
      with self._lock:
        if self._fds is None:
          self._fds = {}
        if s not in self._fds:
          self._fds[s] = os.open(self.shards[s], os.O_RDONLY)
    return self._fds[s]

  def _member(self, s: int, offset: int, size: int, where: str) -> bytes:
    try:
      data = os.pread(self._fd(s), int(size), int(offset))
    except OSError as e:
      raise CorruptRecord(where, f"unreadable ({one_line(e)})") from e
    if len(data) != size:
      raise CorruptRecord(where, f"truncated member ({len(data)} of {size} bytes)")
    return data

  def _read(self, index: int) -> dict[str, Any]:
    idx = self._ensure_index()
    s = int(idx["shard"][index])
    key = idx["keys"][index]
    img_ext, img_off, img_size, cap_ext, cap_off, cap_size = (int(v) for v in idx["table"][index])
    where = f"{self.shards[s]} sample {key!r}"
    if img_ext < 0:
      raise CorruptRecord(where, f"no image member ({'/'.join(IMAGE_EXTS)})")
    if cap_ext < 0:
      raise CorruptRecord(where, f"no caption member ({'/'.join(CAPTION_EXTS)})")
    image = decode_image(self._member(s, img_off, img_size, where), where)
    raw = self._member(s, cap_off, cap_size, where)
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorruptRecord(where, "caption is not UTF-8") from e
    if CAPTION_EXTS[cap_ext] == "json":
      text = self._json_caption(text, where)
    return {"image": image, "caption": text.strip(), "key": key}

  def _json_caption(self, text: str, where: str) -> str:
    try:
      meta = json.loads(text)
    except ValueError as e:
      raise CorruptRecord(where, f"caption .json does not parse ({one_line(e)})") from e
    if isinstance(meta, dict):
      for name in self.caption_keys:
        if isinstance(meta.get(name), str):
          return meta[name]
    raise CorruptRecord(where, f"caption .json has none of the fields {list(self.caption_keys)}")


def write_webdataset_shard(path: str | os.PathLike, samples: Iterable[Mapping[str, Any]]) -> int:
  """Writes samples to one uncompressed WebDataset tar shard.

  Args:
    path: the output `.tar` file.
    samples: dicts with "__key__" and one entry per member, keyed by extension ("jpg", "txt",
      "json", ...); values are bytes, str (UTF-8 encoded) or, for "json", a JSON-able object.

  Returns:
    The number of samples written.

  Example:
    >>> write_webdataset_shard("/tmp/s.tar", [{"__key__": "000", "png": png_bytes,
    ...                                        "txt": "a red circle"}])
    1
  """
  count = 0
  with tarfile.open(os.fspath(path), "w") as tf:
    for sample in samples:
      key = sample["__key__"]
      for ext, value in sample.items():
        if ext == "__key__":
          continue
        if ext == "json" and not isinstance(value, (bytes, str)):
          value = json.dumps(value)
        data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
      count += 1
  return count
