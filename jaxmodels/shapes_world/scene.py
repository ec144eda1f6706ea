"""The `Scene` dataclass: a few flat-coloured shapes on a plain background.

Geometry is resolution-independent: centres and sizes are fractions of the
(square) canvas side, so one scene renders at any resolution. A scene made by
the generator is checked at the resolution it was generated for (objects
inside the canvas, separated by background pixels, above the minimum size);
rendering it larger keeps those properties.

Coordinates: x to the right, y down, (0, 0) the top-left corner of the canvas,
(1, 1) the bottom-right one.

Example:
  >>> s = Scene((SceneObject("circle", "red", (0.3, 0.5), 0.3),
  ...            SceneObject("square", "blue", (0.75, 0.5), 0.3)))
  >>> s.objects[0].phrase
  'red circle'
  >>> Scene.from_json(s.to_json()) == s
  True
  >>> unique_reference(s, 0)
  'circle'
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
from typing import Any

from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world import shapes


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object of a scene.

  Attributes:
    shape: one of `shapes.SHAPES` (the GenEval "class").
    color: one of `palette.COLORS`.
    center: (x, y) centre of the object's box, fractions of the canvas side.
    size: side of the square the shape is drawn in, fraction of the canvas side.
  """
  shape: str
  color: str
  center: tuple[float, float]
  size: float

  def __post_init__(self):
    shapes.shape_id(self.shape)
    palette.color_id(self.color)
    object.__setattr__(self, "center", (float(self.center[0]), float(self.center[1])))
    object.__setattr__(self, "size", float(self.size))

  @property
  def phrase(self) -> str:
    """'<colour> <shape>', e.g. 'red circle'."""
    return f"{self.color} {self.shape}"

  def extent(self) -> tuple[float, float, float, float]:
    """Geometric box (x0, y0, x1, y1) in canvas fractions."""
    return shapes.extent(self.shape, self.center, self.size)

  def to_dict(self) -> dict[str, Any]:
    return {"shape": self.shape, "color": self.color, "center": list(self.center),
            "size": self.size}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "SceneObject":
    return cls(d["shape"], d["color"], tuple(d["center"]), d["size"])


@dataclasses.dataclass(frozen=True)
class Scene:
  """An ordered tuple of objects on a flat background.

  Attributes:
    objects: the objects; later ones are drawn on top (generated scenes never
      overlap, so order only matters for hand-made scenes).
    background: RGB of the background, `palette.BACKGROUND_RGB` by default.
  """
  objects: tuple[SceneObject, ...]
  background: tuple[int, int, int] = palette.BACKGROUND_RGB

  def __post_init__(self):
    object.__setattr__(self, "objects", tuple(self.objects))
    object.__setattr__(self, "background", tuple(int(v) for v in self.background))

  def __len__(self) -> int:
    return len(self.objects)

  def replace(self, index: int, **changes) -> "Scene":
    """A copy with object `index` changed (fields as in `SceneObject`)."""
    objs = list(self.objects)
    objs[index] = dataclasses.replace(objs[index], **changes)
    return dataclasses.replace(self, objects=tuple(objs))

  def add(self, obj: SceneObject) -> "Scene":
    """A copy with `obj` appended."""
    return dataclasses.replace(self, objects=self.objects + (obj,))

  def remove(self, index: int) -> "Scene":
    """A copy without object `index`."""
    objs = self.objects[:index] + self.objects[index + 1:]
    return dataclasses.replace(self, objects=objs)

  def count(self, shape: str | None = None, color: str | None = None) -> int:
    """Number of objects matching `shape` and/or `color` (None = any)."""
    return sum(1 for o in self.objects
               if (shape is None or o.shape == shape) and (color is None or o.color == color))

  def to_dict(self) -> dict[str, Any]:
    return {"objects": [o.to_dict() for o in self.objects], "background": list(self.background)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Scene":
    return cls(tuple(SceneObject.from_dict(o) for o in d["objects"]),
               tuple(d.get("background", palette.BACKGROUND_RGB)))

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, s: str | bytes) -> "Scene":
    return cls.from_dict(json.loads(s))

  def signature(self, image_size: int) -> str:
    """Hex digest identifying the scene as rendered at `image_size`.

    Objects are sorted and their geometry rounded to whole pixels, so two
    scenes with the same signature render (near-)identically; the builder uses
    it to keep train/validation/test scenes disjoint.
    """
    items = sorted((o.shape, o.color, round(o.center[0] * image_size),
                    round(o.center[1] * image_size), round(o.size * image_size))
                   for o in self.objects)
    key = json.dumps([items, list(self.background)])
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def unique_reference(scene: Scene, index: int, allow_color_only: bool = True) -> str | None:
  """Shortest noun phrase that picks out object `index` alone, or None.

  Tries, in order: '<shape>' (shape unique in the scene), '<colour> object'
  (colour unique; only if `allow_color_only`), '<colour> <shape>' (pair unique).

  Args:
    scene: the scene.
    index: which object.
    allow_color_only: whether '<colour> object' may be returned.

  Returns:
    The phrase without article (callers write "the " + phrase), or None when
    another object has the same shape and colour.
  """
  obj = scene.objects[index]
  if scene.count(shape=obj.shape) == 1:
    return obj.shape
  if allow_color_only and scene.count(color=obj.color) == 1:
    return f"{obj.color} object"
  if scene.count(shape=obj.shape, color=obj.color) == 1:
    return obj.phrase
  return None


def class_counts(scene: Scene) -> dict[str, int]:
  """{shape: count} of the shapes present, in `shapes.SHAPES` order."""
  c = collections.Counter(o.shape for o in scene.objects)
  return {s: c[s] for s in shapes.SHAPES if c[s]}

