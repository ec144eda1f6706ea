"""TFDS builder `shapes_world` (TensorFlow-free) and a Grain-ready loader.

The dataset is written as ArrayRecord files with features that TFDS encodes
and decodes in NumPy (no TensorFlow needed): scalars, int32 tensors, text and
PNG bytes (`Tensor(shape=(), dtype=object)`). It is read back through TFDS's
`as_data_source` (random access), which `grain.MapDataset.source` accepts.

Features of one example (N objects in the scene, M in the edit target):

| key              | type / shape     | content                                           |
|------------------|------------------|---------------------------------------------------|
| index            | int64 []         | position in the split (records are in this order) |
| attempt          | int64 []         | seeds skipped for this index (see generator)      |
| signature        | text             | scene signature (split disjointness)              |
| image            | bytes []         | PNG, uint8 [S, S, 3] once decoded                 |
| tag              | text             | GenEval tag                                       |
| prompt           | text             | GenEval prompt                                    |
| metadata         | text (JSON)      | GenEval record {tag, include, [exclude], prompt}  |
| scene            | text (JSON)      | `Scene.to_dict()`                                 |
| shapes, colors   | int32 [N]        | ids in `shapes.SHAPES` / `palette.COLORS`         |
| boxes            | int32 [N, 4]     | exact (x1, y1, x2, y2), x2/y2 exclusive, pixels   |
| qa               | text (JSON)      | list of Q/A items (see `qa`)                      |
| edit_kind        | text             | spatial / quantitative / colour / sequence        |
| edit_instruction | text             | the instruction                                   |
| edit             | text (JSON)      | {kind, instruction, steps, target} (see `edits`)  |
| edit_image       | bytes []         | PNG of the edit target                            |
| edit_shapes, edit_colors | int32 [M] | target ids                                       |
| edit_boxes       | int32 [M, 4]     | target boxes                                      |

Text comes back as `bytes` from the raw source; `decode_example` (or
`load_split(..., decode=True)`) turns PNGs into uint8 arrays and JSON into
Python objects.

Configs (`BUILDER_CONFIGS`): "default" 64 px, 10000/500/553 train/validation/
test; "res32" the same at 32 px; "tiny" 64 px, 48/16/24 for tests. Any other
config: `make_config(image_size=..., num_train=..., ...)`. The test split has
GenEval's official tag proportions (exactly 80/99/80/94/100/100 at 553).

Example:
  >>> src = load_split("/tmp/tfds", "validation", config="tiny")  # doctest: +SKIP
  >>> import grain
  >>> ds = grain.MapDataset.source(src).map(decode_example)  # doctest: +SKIP
  >>> ds[0]["image"].shape  # doctest: +SKIP
  (64, 64, 3)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from jaxmodels.errors import ConfigError
from jaxmodels.shapes_world import generator as gen_lib
from jaxmodels.shapes_world import render as render_lib

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Splits are generated in this order; each excludes the scenes of the earlier ones.
_GENERATION_ORDER: tuple[str, ...] = ("test", "validation", "train")


@dataclasses.dataclass(eq=False)
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """Builder config: resolution, split sizes and seed.

  Attributes:
    image_size: canvas side in pixels (scenes are checked at this size).
    num_train: train examples.
    num_validation: validation examples.
    num_test: test examples (GenEval proportions; 553 = the official counts).
    seed: dataset seed.
  """
  image_size: int = 64
  num_train: int = 10000
  num_validation: int = 500
  num_test: int = 553
  seed: int = 0

  def num_examples(self, split: str) -> int:
    return {"train": self.num_train, "validation": self.num_validation,
            "test": self.num_test}[split]


def make_config(image_size: int = 64, num_train: int = 10000, num_validation: int = 500,
                num_test: int = 553, seed: int = 0, name: str | None = None) -> ShapesWorldConfig:
  """A config whose default name encodes its parameters (its own directory)."""
  for key, v in (("image_size", image_size), ("num_train", num_train),
                 ("num_validation", num_validation), ("num_test", num_test)):
    if int(v) < (16 if key == "image_size" else 1):
      raise ConfigError(f"shapes_world config: {key}={v} is too small")
  name = name or f"s{image_size}_n{num_train}_{num_validation}_{num_test}_seed{seed}"
  return ShapesWorldConfig(name=name, description="custom ShapesWorld config",
                           image_size=int(image_size), num_train=int(num_train),
                           num_validation=int(num_validation), num_test=int(num_test),
                           seed=int(seed))


PNG_FIELDS = ("image", "edit_image")
JSON_FIELDS = ("metadata", "scene", "qa", "edit")


def _features() -> tfds.features.FeaturesDict:
  png = lambda: tfds.features.Tensor(shape=(), dtype=np.object_)
  ids = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)
  boxes = lambda: tfds.features.Tensor(shape=(None, 4), dtype=np.int32)
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "index": tfds.features.Scalar(dtype=np.int64),
      "attempt": tfds.features.Scalar(dtype=np.int64),
      "signature": text(),
      "image": png(),
      "tag": text(),
      "prompt": text(),
      "metadata": text(),
      "scene": text(),
      "shapes": ids(),
      "colors": ids(),
      "boxes": boxes(),
      "qa": text(),
      "edit_kind": text(),
      "edit_instruction": text(),
      "edit": text(),
      "edit_image": png(),
      "edit_shapes": ids(),
      "edit_colors": ids(),
      "edit_boxes": boxes(),
  })


class ShapesWorld(tfds.core.GeneratorBasedBuilder):
  """ShapesWorld: coloured shapes with GenEval prompts, Q/A and edit pairs."""

  # Bump when generation changes: an existing data dir is reused by version.
  VERSION = tfds.core.Version("1.0.0")
  # TFDS derives `code_path` through the third-party `importlib_resources`
  # package (not a declared tfds dependency, often absent); a plain path avoids it.
  code_path = epath.Path(__file__)
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      ShapesWorldConfig(name="default", description="64 px, 10000/500/553 examples."),
      ShapesWorldConfig(name="res32", description="32 px, 10000/500/553 examples.",
                        image_size=32),
      ShapesWorldConfig(name="tiny", description="64 px, 48/16/24 examples (tests).",
                        num_train=48, num_validation=16, num_test=24),
  ]

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self._signatures: dict[str, set[str]] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Procedural scenes of 1-4 flat-coloured shapes on a grey background, "
                     "with GenEval-schema prompts, understanding Q/A and edit pairs."),
        features=_features(),
        disable_shuffling=True,
        homepage="https://github.com/djghosh13/geneval",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in _GENERATION_ORDER}

  def _exclusion(self, split: str) -> set[str]:
    """Signatures of the splits generated before `split`."""
    out: set[str] = set()
    for earlier in _GENERATION_ORDER[:_GENERATION_ORDER.index(split)]:
      if earlier not in self._signatures:  # generate (again) if TFDS ran splits out of order
        seen: set[str] = set()
        for _ in self._examples(earlier, seen):
          pass
        self._signatures[earlier] = seen
      out |= self._signatures[earlier]
    return out

  def _examples(self, split: str, seen: set[str]) -> Iterator[gen_lib.Example]:
    cfg = self.builder_config
    return gen_lib.generate_split(split, cfg.num_examples(split), image_size=cfg.image_size,
                                  seed=cfg.seed, exclude=self._exclusion(split), seen=seen)

  def _generate_examples(self, split: str):
    seen: set[str] = set()
    for ex in self._examples(split, seen):
      yield ex.index, gen_lib.to_features(ex)
    self._signatures[split] = seen


def _as_config(config: str | ShapesWorldConfig) -> str | ShapesWorldConfig:
  if isinstance(config, ShapesWorldConfig):
    return config
  names = [c.name for c in ShapesWorld.BUILDER_CONFIGS]
  if config not in names:
    raise ConfigError(f"shapes_world config {config!r} unknown; expected one of {names} "
                       "or a ShapesWorldConfig (see make_config)")
  return config


def default_data_dir() -> str:
  """$JAXMODELS_DATA_DIR, else ~/.cache/jaxmodels/tfds: where datasets are built on first use."""
  return os.environ.get("JAXMODELS_DATA_DIR", os.path.expanduser("~/.cache/jaxmodels/tfds"))


def get_builder(data_dir: str | None, config: str | ShapesWorldConfig = "default") -> ShapesWorld:
  """The `ShapesWorld` builder for `config`, writing under `data_dir` (None: `default_data_dir()`)."""
  return ShapesWorld(data_dir=str(data_dir or default_data_dir()), config=_as_config(config),
                     file_format="array_record")


def prepare(data_dir: str | None, config: str | ShapesWorldConfig = "default") -> ShapesWorld:
  """Builds the dataset into `data_dir` unless it is already there.

  The first call generates and writes all three splits (TFDS shows a progress
  bar per split); later calls find the files and return at once.
  """
  builder = get_builder(data_dir, config)
  if not builder.is_prepared():
    logging.info("Building ShapesWorld %s into %s (first use).", builder.builder_config.name,
                 builder.data_dir)
    builder.download_and_prepare(file_format="array_record")
  return builder


def load_split(data_dir: str | None, split: str, config: str | ShapesWorldConfig = "default", *,
               decode: bool | str = False) -> Sequence[Mapping[str, Any]]:
  """Random-access source of one split, building the dataset on first use.

  Args:
    data_dir: TFDS data directory (files go to data_dir/shapes_world/<config>/1.0.0); None: the
      default, `default_data_dir()`.
    split: "train", "validation" or "test" (TFDS slicing such as "train[:10]" works too).
    config: a config name ("default", "res32", "tiny") or a `ShapesWorldConfig`.
    decode: if True, wrap the source so items come through `decode_example`; "lazy": items are
      `lazy.LazyRecord`s, which parse and decode a field on its first access only (the same values;
      for readers that use a few fields, e.g. the training tasks).

  Returns:
    A sequence (len, [i]) of feature dicts, usable as `grain.MapDataset.source(...)`.
  """
  if split.split("[")[0] not in SPLITS:
    raise ConfigError(f"shapes_world split {split!r} unknown; expected one of {SPLITS}")
  if decode not in (True, False, "lazy"):
    raise ConfigError(f"load_split: decode={decode!r}: expected True, False or 'lazy'")
  builder = prepare(data_dir, config)
  if decode == "lazy":
    from jaxmodels.shapes_world.lazy import LazySource
    return LazySource(builder, split)
  source = builder.as_data_source(split=split)
  return DecodedSource(source) if decode else source


def _text(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def decode_field(key: str, value: Any) -> Any:
  """One field of a raw record, decoded: "image"/"edit_image" PNG → uint8 [S, S, 3];
  "metadata"/"scene"/"qa"/"edit" JSON → objects; other text → str; tensors unchanged."""
  if key in PNG_FIELDS:
    return render_lib.decode_png(value)
  if key in JSON_FIELDS:
    return json.loads(_text(value))
  if isinstance(value, (bytes, str)):
    return _text(value)
  return value


def decode_example(raw: dict[str, Any]) -> dict[str, Any]:
  """Decodes a raw record, every field through `decode_field`; returns a new dict, same keys."""
  return {k: decode_field(k, v) for k, v in raw.items()}


class DecodedSource:
  """A random-access source whose items go through `decode_example`."""

  def __init__(self, source: Sequence[dict[str, Any]]):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    # IndexError past the end (negative indices count from it), so `for ex in source` stops as on a
    # list: the ArrayRecord source raises ValueError for an out-of-range key.
    n = len(self._source)
    if not -n <= index < n:
      raise IndexError(f"index {index} out of range for a split of {n} records")
    return decode_example(self._source[index % n])

  def __repr__(self) -> str:
    return f"DecodedSource({self._source!r})"
