"""Reading and writing Hugging Face checkpoint directories (config.json + safetensors).

The safetensors format is a little-endian u64 header length, a JSON header mapping each tensor name to
its dtype, shape and byte range, then the raw bytes. Tensors are read lazily through a memory map (so
loading never holds two copies of a model) and bfloat16 is supported through ml_dtypes.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

from jaxmodels.errors import CheckpointFormatError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")


def read_config(path: str, name: str = "config.json") -> dict:
  """Parses `<path>/config.json` (or another JSON object file of the directory, `name`)."""
  if not os.path.isdir(path):
    raise CheckpointFormatError(f"{path}: not a directory")
  file = os.path.join(path, name)
  if not os.path.exists(file):
    raise CheckpointFormatError(f"{file}: missing (a Hugging Face checkpoint needs {name})")
  try:
    with open(file, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointFormatError(f"{file}: invalid JSON ({e})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise CheckpointFormatError(f"{file}: unreadable ({e})") from None
  if not isinstance(config, dict):
    raise CheckpointFormatError(f"{file}: expected a JSON object, got {type(config).__name__}")
  return config


def _read_header(file: str) -> tuple[dict, int]:
  try:
    with open(file, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
  except (OSError, struct.error, ValueError, UnicodeDecodeError) as e:
    raise CheckpointFormatError(f"{file}: not a readable safetensors file ({e})") from None
  if not isinstance(header, dict):
    raise CheckpointFormatError(f"{file}: not a readable safetensors file (the header is not an object)")
  header.pop("__metadata__", None)
  size = os.path.getsize(file)
  for key, info in header.items():
    try:
      start, stop = (int(x) for x in info["data_offsets"])
      shape = [int(d) for d in info["shape"]]
      dtype = info["dtype"]
    except (TypeError, KeyError, ValueError):
      raise CheckpointFormatError(f"{file}: tensor {key!r} has a malformed header entry (needs dtype, "
                                  f"shape and data_offsets)") from None
    if not 0 <= start <= stop or 8 + n + stop > size:
      raise CheckpointFormatError(f"{file}: tensor {key!r} lies outside the file (bytes {start}:{stop} "
                                  f"after the header; the file is truncated?)")
    itemsize = np.dtype(_DTYPES[dtype]).itemsize if dtype in _DTYPES else None
    if itemsize is not None and (stop - start) != itemsize * int(np.prod(shape, dtype=np.int64)):
      raise CheckpointFormatError(f"{file}: tensor {key!r} has {stop - start} bytes, which does not "
                                  f"fit shape {tuple(shape)} of {dtype}")
  return header, 8 + n


class SafetensorsReader:
  """All tensors of a checkpoint directory: one file, or shards listed in `*.safetensors.index.json`."""

  def __init__(self, path: str):
    self.path = path
    self._where: dict[str, str] = {}
    files = self._find_files(path)
    self._headers = {}
    for file in files:
      header, offset = _read_header(file)
      self._headers[file] = (header, offset)
      for key in header:
        self._where[key] = file
    self._maps: dict[str, np.memmap] = {}

  @staticmethod
  def _weight_names(path: str) -> list[str]:
    """WEIGHT_FILES, then diffusers' variant files (`diffusion_pytorch_model.bf16.safetensors`, saved
    with `variant="bf16"`) when the directory holds exactly one variant of a name."""
    import re
    names = list(WEIGHT_FILES)
    try:
      present = os.listdir(path)
    except OSError:
      return names
    for base in WEIGHT_FILES:
      stem = base[:-len(".safetensors")]
      pattern = re.compile(re.escape(stem) + r"\.([A-Za-z0-9_]+)\.safetensors(\.index\.json)?$")
      variants = sorted({m.group(1) for m in map(pattern.match, present) if m})
      if len(variants) > 1:
        raise CheckpointFormatError(f"{path}: several weight variants of {base} "
                                    f"({', '.join(variants)}); keep one")
      names += [f"{stem}.{v}.safetensors" for v in variants]
    return names

  @staticmethod
  def _find_files(path: str) -> list[str]:
    for name in SafetensorsReader._weight_names(path):
      index = os.path.join(path, name + ".index.json")
      if os.path.exists(index):
        try:
          with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
          raise CheckpointFormatError(f"{index}: invalid index (needs an object 'weight_map' of "
                                      f"tensor -> shard file; {e!r})") from None
        if not all(isinstance(name, str) for name in shards):
          raise CheckpointFormatError(f"{index}: invalid index ('weight_map' values must be file names)")
        files = [os.path.join(path, s) for s in shards]
        for file in files:
          if not os.path.exists(file):
            raise CheckpointFormatError(f"{file}: listed in {os.path.basename(index)} but missing")
        return files
      single = os.path.join(path, name)
      if os.path.exists(single):
        return [single]
    raise CheckpointFormatError(
        f"{path}: no weights found (expected {' or '.join(WEIGHT_FILES)} or a sharded index)")

  def keys(self) -> Iterable[str]:
    return self._where.keys()

  def __contains__(self, key: str) -> bool:
    return key in self._where

  def shape(self, key: str) -> tuple[int, ...]:
    file = self._file(key)
    return tuple(self._headers[file][0][key]["shape"])

  def file_of(self, key: str) -> str:
    """The safetensors file holding tensor `key` (raises CheckpointFormatError if none does)."""
    return self._file(key)

  def _file(self, key: str) -> str:
    if key not in self._where:
      files = sorted({os.path.basename(f) for f in self._headers})
      raise CheckpointFormatError(f"{self.path}: tensor {key!r} not found in the checkpoint "
                                  f"({', '.join(files)})")
    return self._where[key]

  def get(self, key: str) -> np.ndarray:
    """The tensor `key` as a read-only numpy array (memory-mapped)."""
    file = self._file(key)
    header, offset = self._headers[file]
    info = header[key]
    if info["dtype"] not in _DTYPES:
      raise CheckpointFormatError(f"{file}: tensor {key!r} has unsupported dtype {info['dtype']}")
    if file not in self._maps:
      self._maps[file] = np.memmap(file, dtype=np.uint8, mode="r")
    start, stop = info["data_offsets"]
    raw = self._maps[file][offset + start: offset + stop]
    return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def _write_file(file: str, tensors: Mapping[str, np.ndarray]) -> None:
  header, offset = {}, 0
  for key, value in tensors.items():
    value = np.asarray(value)
    nbytes = value.nbytes
    header[key] = {"dtype": _NAMES[value.dtype], "shape": list(value.shape),
                   "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  header["__metadata__"] = {"format": "pt"}
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(file, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for value in tensors.values():
      f.write(np.ascontiguousarray(value).tobytes())


def write_checkpoint(path: str, config: dict, tensors: Mapping[str, np.ndarray], *,
                     weights_name: str = "model.safetensors", max_shard_bytes: int | None = None):
  """Writes config.json + safetensors (sharded with an index above `max_shard_bytes`).

  Files are first written to a temporary directory next to `path` and then moved in, so a failure
  part-way leaves any checkpoint already in `path` intact.
  """
  os.makedirs(path, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".tmp-save-", dir=path)
  try:
    shards: list[dict] = [{}]
    size = 0
    for key, value in tensors.items():
      nbytes = np.asarray(value).nbytes
      if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][key] = value
      size += nbytes
    names = [weights_name] if len(shards) == 1 else [
        weights_name.replace(".safetensors", f"-{i + 1:05d}-of-{len(shards):05d}.safetensors")
        for i in range(len(shards))]
    for name, shard in zip(names, shards):
      _write_file(os.path.join(tmp, name), shard)
    if len(shards) > 1:
      total = sum(np.asarray(v).nbytes for v in tensors.values())
      index = {"metadata": {"total_size": total},
               "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
      with open(os.path.join(tmp, weights_name + ".index.json"), "w") as f:
        json.dump(index, f, indent=2)
    with open(os.path.join(tmp, "config.json"), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
    for name in os.listdir(tmp):
      os.replace(os.path.join(tmp, name), os.path.join(path, name))
    stale_index = os.path.join(path, weights_name + ".index.json")
    if len(shards) == 1 and os.path.exists(stale_index):
      os.remove(stale_index)
  finally:
    for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
      os.remove(os.path.join(tmp, name))
    if os.path.isdir(tmp):
      os.rmdir(tmp)

