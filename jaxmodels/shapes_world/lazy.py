"""ShapesWorld records that parse and decode a field only when it is read.

`load_split(..., decode="lazy")` returns a `LazySource`: its items are `LazyRecord`s, read-only
mappings with the keys and values of `decode_example(record)`, where a field is taken out of the
serialized record and decoded (`builder.decode_field`) on its first access and kept. A reader that
uses a few fields pays for those: the training tasks (`input_pipeline.shapes_tasks`) read the image,
scene, Q/A and prompt of a record and skip the edit image's PNG, the other JSON fields and TFDS's
per-feature NumPy conversion of all 19 features (measured on the project's CPU, res32: 0.20 ms a
record through TFDS's decoding, 0.034 ms for the raw bytes and the four fields).

The single-value byte fields (PNG, JSON and text) are read straight from the `tf.train.Example`
proto; any other field (ids, boxes, scalars) goes through TFDS's own decoding of the whole record,
once per record, so every value equals the eager path's.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterator

import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_parser

from jaxmodels.shapes_world import builder as builder_lib


class LazySource:
  """Random access (`len`, `[i]`) to one split's records as `LazyRecord`s; picklable (Grain workers)."""

  def __init__(self, builder: "builder_lib.ShapesWorld", split: str):
    self._source = builder.as_data_source(split=split,
                                          deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    self._features = builder.info.features
    self._byte_fields = frozenset(k for k, f in self._features.items() if _single_bytes(f))
    self._keys = tuple(sorted(self._features.keys()))     # the eager dicts' order

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> "LazyRecord":
    return LazyRecord(self._source[index], self._features, self._byte_fields, self._keys)

  def __repr__(self) -> str:
    return f"LazySource({self._source!r})"


def _single_bytes(feature) -> bool:
  """Whether TFDS stores the feature as one bytes value (Text, or a scalar object Tensor)."""
  if isinstance(feature, tfds.features.Text):
    return True
  return (isinstance(feature, tfds.features.Tensor) and feature.shape == ()
          and feature.np_dtype == object)


class LazyRecord(Mapping):
  """One serialized record as a read-only mapping of decoded fields, each decoded on first access."""

  __slots__ = ("_raw", "_features", "_byte_fields", "_keys", "_proto", "_tfds", "_values")

  def __init__(self, raw: bytes, features, byte_fields: frozenset, keys: tuple[str, ...]):
    self._raw, self._features, self._byte_fields, self._keys = raw, features, byte_fields, keys
    self._proto = self._tfds = None
    self._values: dict[str, Any] = {}

  def __getitem__(self, key: str) -> Any:
    if key in self._values:
      return self._values[key]
    if key not in self._features:
      raise KeyError(key)
    if key in self._byte_fields:
      if self._proto is None:
        self._proto = example_parser.tf_example_pb2.Example.FromString(self._raw).features.feature
      raw = self._proto[key].bytes_list.value[0]
    else:
      if self._tfds is None:
        self._tfds = self._features.deserialize_example_np(self._raw)
      raw = self._tfds[key]
    value = self._values[key] = builder_lib.decode_field(key, raw)
    return value

  def __iter__(self) -> Iterator[str]:
    return iter(self._keys)

  def __len__(self) -> int:
    return len(self._keys)

  def __repr__(self) -> str:
    return f"LazyRecord(decoded={sorted(self._values)})"
