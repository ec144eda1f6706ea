"""Deterministic ShapesWorld examples: scene + GenEval record + Q/A + edit.

Example `index` of split `split` is a pure function of (seed, split, index,
attempt): its random generator is `np.random.default_rng([seed, SPLIT_CODES
[split], index, attempt])`, so the three splits draw from disjoint seed
sequences. `generate_split` additionally skips (attempt + 1) any scene whose
signature (`Scene.signature`) was already produced or is in `exclude`; the
builder passes the test signatures to validation and both to train, so no
scene appears in two splits.

Tags follow GenEval's official proportions (`geneval.tag_counts`): the test
split is grouped by tag in GenEval's file order (like evaluation_metadata.jsonl,
so its records form a GenEval-style prompt set); train and validation
interleave the tags evenly so that any prefix has the same proportions.
Within a tag, the k-th example uses class SHAPES[k % 6] (single_object),
count (2, 3, 4)[k % 3] (counting), colour COLORS[k % 10] (colors) and
relation RELATIONS[k % 4] (position); everything else is drawn at random.
Scenes contain exactly the objects the prompt names (1-4 objects); colours
the prompt does not fix are random; two_object, position and color_attr use two
different shapes, color_attr two different colours.

Example:
  >>> ex = generate_example("test", 0, num_examples=553, image_size=64)
  >>> ex.record["prompt"], ex.image.shape
  ('a photo of a circle', (64, 64, 3))
  >>> feats = to_features(ex)  # what the TFDS builder stores
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Iterator

import numpy as np

from jaxmodels.shapes_world import edits as edits_lib
from jaxmodels.shapes_world import geneval
from jaxmodels.shapes_world import layout
from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world import qa as qa_lib
from jaxmodels.shapes_world import render as render_lib
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.scene import Scene

SPLIT_CODES: dict[str, int] = {"train": 0, "validation": 1, "test": 2}
MAX_ATTEMPTS = 100


@dataclasses.dataclass(frozen=True)
class Example:
  """One generated example.

  Attributes:
    split: "train" / "validation" / "test".
    index: position in the split.
    attempt: how many seeds were skipped (duplicates, failed layouts).
    record: GenEval metadata record {tag, include, [exclude], prompt}.
    scene: the source scene.
    rendering: the scene at the dataset resolution (image, masks, boxes).
    qa: understanding items (see `qa`).
    edit: the edit dict (see `edits`); `edit["target"]` is a Scene dict.
    target_rendering: the edit target at the dataset resolution.
  """
  split: str
  index: int
  attempt: int
  record: dict[str, Any]
  scene: Scene
  rendering: render_lib.Rendering
  qa: list[dict[str, Any]]
  edit: dict[str, Any]
  target_rendering: render_lib.Rendering

  @property
  def image(self) -> np.ndarray:
    return self.rendering.image

  @property
  def tag(self) -> str:
    return self.record["tag"]

  @property
  def target_scene(self) -> Scene:
    return Scene.from_dict(self.edit["target"])

  def signature(self) -> str:
    return self.scene.signature(self.rendering.image.shape[0])


def tag_schedule(num_examples: int, grouped: bool) -> list[tuple[str, int]]:
  """(tag, ordinal within tag) for each index of a split of `num_examples`.

  Args:
    num_examples: split size.
    grouped: True: tags in contiguous blocks in GenEval order (test split);
      False: evenly interleaved (tag t's k-th example sits at relative position
      (k + 0.5) / count_t).

  Returns:
    A list of length num_examples.
  """
  counts = geneval.tag_counts(num_examples)
  items = [(t, k) for t in geneval.TAGS for k in range(counts[t])]
  if not grouped:
    items.sort(key=lambda tk: ((tk[1] + 0.5) / counts[tk[0]], geneval.TAGS.index(tk[0])))
  return items


def _pick(rng: np.random.Generator, seq, k: int = 1, exclude=()) -> list:
  pool = [s for s in seq if s not in exclude]
  return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]


def _color(rng: np.random.Generator) -> str:
  return palette.COLORS[int(rng.integers(len(palette.COLORS)))]


def sample_prompt(rng: np.random.Generator, tag: str, ordinal: int):
  """Draws a GenEval record and the scene content it asks for.

  Returns:
    (record, specs, relation): specs is a list of (shape, colour) in scene
    order (= include order, counting objects repeated), relation is None or
    (a, rel, b) over scene indices.
  """
  if tag == "single_object":
    shape = shapes.SHAPES[ordinal % len(shapes.SHAPES)]
    return geneval.make_record(tag, [{"class": shape, "count": 1}]), [(shape, _color(rng))], None
  if tag == "two_object":
    a, b = _pick(rng, shapes.SHAPES, 2)
    include = [{"class": a, "count": 1}, {"class": b, "count": 1}]
    return geneval.make_record(tag, include), [(a, _color(rng)), (b, _color(rng))], None
  if tag == "counting":
    n = geneval.COUNTS[ordinal % len(geneval.COUNTS)]
    (shape,) = _pick(rng, shapes.SHAPES)
    specs = [(shape, _color(rng)) for _ in range(n)]
    return geneval.make_record(tag, [{"class": shape, "count": n}]), specs, None
  if tag == "colors":
    color = palette.COLORS[ordinal % len(palette.COLORS)]
    (shape,) = _pick(rng, shapes.SHAPES)
    rec = geneval.make_record(tag, [{"class": shape, "count": 1, "color": color}])
    return rec, [(shape, color)], None
  if tag == "position":
    rel = geneval.RELATIONS[ordinal % len(geneval.RELATIONS)]
    b, a = _pick(rng, shapes.SHAPES, 2)
    include = [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]
    specs = [(b, _color(rng)), (a, _color(rng))]
    return geneval.make_record(tag, include), specs, (1, rel, 0)
  if tag == "color_attr":
    a, b = _pick(rng, shapes.SHAPES, 2)
    ca, cb = _pick(rng, palette.COLORS, 2)
    include = [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}]
    return geneval.make_record(tag, include), [(a, ca), (b, cb)], None
  raise ValueError(f"unknown GenEval tag {tag!r}")


def example_rng(split: str, index: int, attempt: int = 0, seed: int = 0) -> np.random.Generator:
  """The random generator of one example (see module docstring)."""
  return np.random.default_rng([int(seed), SPLIT_CODES[split], int(index), int(attempt)])


def generate_example(split: str, index: int, *, num_examples: int, image_size: int = 64,
                     seed: int = 0, attempt: int = 0,
                     schedule: list[tuple[str, int]] | None = None) -> Example:
  """Generates example `index` of a split of `num_examples` examples.

  Args:
    split: "train", "validation" or "test" (decides the seed and tag order).
    index: 0 <= index < num_examples.
    num_examples: split size (decides the tag of `index`).
    image_size: resolution at which the scene is checked and rendered.
    seed: dataset seed.
    attempt: first attempt number; attempts whose layout or edit fails are
      skipped (deterministically).
    schedule: `tag_schedule(num_examples, split == "test")`, to save recomputing.

  Returns:
    The `Example`.
  """
  if split not in SPLIT_CODES:
    raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_CODES)}")
  if schedule is None:
    schedule = tag_schedule(num_examples, grouped=split == "test")
  tag, ordinal = schedule[index]
  for att in range(attempt, attempt + MAX_ATTEMPTS):
    rng = example_rng(split, index, att, seed)
    record, specs, relation = sample_prompt(rng, tag, ordinal)
    scene = layout.place(rng, specs, image_size=image_size, relation=relation)
    if scene is None:
      continue
    rendering = render_lib.check_scene(scene, image_size, layout.MIN_SIZE)
    edit = edits_lib.make_edit(rng, scene, image_size=image_size,
                               kind=edits_lib.EDIT_KINDS[int(rng.integers(4))])
    if edit is None:
      continue
    items = qa_lib.make_qa(rng, scene, rendering)
    target = render_lib.render_with_masks(Scene.from_dict(edit["target"]), image_size)
    return Example(split, index, att, record, scene, rendering, items, edit, target)
  raise RuntimeError(f"no valid scene for {split}[{index}] after {MAX_ATTEMPTS} attempts")


def generate_split(split: str, num_examples: int, *, image_size: int = 64, seed: int = 0,
                   exclude: Iterable[str] = (), seen: set[str] | None = None) -> Iterator[Example]:
  """Yields the examples of a split in index order, skipping duplicate scenes.

  Args:
    split: "train", "validation" or "test".
    num_examples: split size.
    image_size: resolution.
    seed: dataset seed.
    exclude: scene signatures that must not occur (e.g. other splits').
    seen: optional set that receives the signatures of the yielded scenes.

  Yields:
    `Example`s with distinct signatures, none in `exclude`.
  """
  schedule = tag_schedule(num_examples, grouped=split == "test")
  taken = set(exclude)
  for index in range(num_examples):
    attempt = 0
    while True:
      ex = generate_example(split, index, num_examples=num_examples, image_size=image_size,
                            seed=seed, attempt=attempt, schedule=schedule)
      sig = ex.signature()
      if sig not in taken:
        break
      attempt = ex.attempt + 1
    taken.add(sig)
    if seen is not None:
      seen.add(sig)
    yield ex


def geneval_prompt_set(num_examples: int, *, image_size: int = 64, seed: int = 0,
                       split: str = "test") -> list[dict[str, Any]]:
  """The GenEval records of a split in index order (its evaluation_metadata).

  Without de-duplication against other splits (records do not depend on it
  for the test split, which the builder generates first).
  """
  return [ex.record for ex in generate_split(split, num_examples, image_size=image_size,
                                             seed=seed)]


def to_features(ex: Example) -> dict[str, Any]:
  """The flat feature dict the TFDS builder stores (see builder.FEATURES)."""
  objs = ex.scene.objects
  tgt = ex.target_scene.objects
  return {
      "index": ex.index,
      "attempt": ex.attempt,
      "signature": ex.signature(),
      "image": render_lib.encode_png(ex.rendering.image),
      "tag": ex.tag,
      "prompt": ex.record["prompt"],
      "metadata": json.dumps(ex.record),
      "scene": ex.scene.to_json(),
      "shapes": np.array([shapes.shape_id(o.shape) for o in objs], np.int32),
      "colors": np.array([palette.color_id(o.color) for o in objs], np.int32),
      "boxes": ex.rendering.boxes.astype(np.int32).reshape(-1, 4),
      "qa": json.dumps(ex.qa),
      "edit_kind": ex.edit["kind"],
      "edit_instruction": ex.edit["instruction"],
      "edit": json.dumps(ex.edit),
      "edit_image": render_lib.encode_png(ex.target_rendering.image),
      "edit_boxes": ex.target_rendering.boxes.astype(np.int32).reshape(-1, 4),
      "edit_shapes": np.array([shapes.shape_id(o.shape) for o in tgt], np.int32),
      "edit_colors": np.array([palette.color_id(o.color) for o in tgt], np.int32),
  }
