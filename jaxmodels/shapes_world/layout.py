"""Random, rule-abiding placement of objects on the canvas.

Sizes and distances are fractions of the canvas side:

* object size (side of its square) in [MIN_SIZE, max_size(n)] with
  MIN_SIZE = 0.25, i.e. **16 px at the default 64 px resolution** (8 px at 32);
  max_size(n) = 0.5 / 0.42 / 0.36 / 0.34 for scenes of 1 / 2 / 3 / 4 objects;
* every object's box stays MARGIN = 0.03 inside the canvas;
* any two objects' boxes are separated by at least GAP = 0.05 along x or y
  (3.2 px at 64 px), so their masks never touch;
* a requested relation "A rel B" is placed with a margin of 0.1 on GenEval's
  rule (decisive component > 0.6, other < 0.4 on the geometric boxes) and is
  then re-checked exactly on the rendered boxes, so exactly one relation holds.

Sampling is rejection sampling driven by a NumPy `Generator`: deterministic
given the generator state. Geometry is rounded to 1e-4 of the canvas side so
the JSON form of a scene is short and round-trips exactly.

Example:
  >>> rng = np.random.default_rng(0)
  >>> scene = place(rng, [("circle", "red"), ("square", "blue")],
  ...               relation=(1, "left of", 0), image_size=64)
  >>> len(scene.objects)
  2
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmodels.shapes_world import geneval
from jaxmodels.shapes_world import render as render_lib
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.shapes_world.scene import SceneObject

MIN_SIZE = 0.25
MAX_SIZE = {1: 0.5, 2: 0.42, 3: 0.36, 4: 0.34}
MAX_OBJECTS = 4
MARGIN = 0.03
GAP = 0.05
RELATION_MARGIN = 0.1


def max_size(n_objects: int) -> float:
  """Largest object size allowed in a scene of `n_objects` objects."""
  return MAX_SIZE[min(max(n_objects, 1), MAX_OBJECTS)]


def _round(v: float) -> float:
  return round(float(v), 4)


def sample_size(rng: np.random.Generator, n_objects: int) -> float:
  """Uniform size in [MIN_SIZE, max_size(n_objects)]."""
  return _round(rng.uniform(MIN_SIZE, max_size(n_objects)))


def sample_center(rng: np.random.Generator, shape: str, size: float,
                  bounds: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
                  ) -> tuple[float, float] | None:
  """Uniform centre keeping the object's box inside `bounds` and MARGIN inside the canvas.

  Args:
    rng: the random generator.
    shape: the object's shape (the star's box is not square).
    size: the object's size.
    bounds: (x0, y0, x1, y1) region the box must lie in, canvas fractions.

  Returns:
    (cx, cy), or None if the box cannot fit.
  """
  x0, y0, x1, y1 = shapes.extent(shape, (0.5, 0.5), size)
  hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
  lo_x, hi_x = max(bounds[0], MARGIN) + hw, min(bounds[2], 1 - MARGIN) - hw
  lo_y, hi_y = max(bounds[1], MARGIN) + hh, min(bounds[3], 1 - MARGIN) - hh
  if lo_x > hi_x or lo_y > hi_y:
    return None
  return _round(rng.uniform(lo_x, hi_x)), _round(rng.uniform(lo_y, hi_y))


def separated(a: SceneObject, b: SceneObject, gap: float = GAP) -> bool:
  """Whether the geometric boxes of a and b are >= gap apart along x or y."""
  ax0, ay0, ax1, ay1 = a.extent()
  bx0, by0, bx1, by1 = b.extent()
  return max(bx0 - ax1, ax0 - bx1) >= gap or max(by0 - ay1, ay0 - by1) >= gap


def _relation_ok(a: SceneObject, rel: str, b: SceneObject, margin: float) -> bool:
  return geneval.clear_relation(a.extent(), b.extent(), margin) == rel


def relation_holds(rendering: render_lib.Rendering, a: int, rel: str, b: int) -> bool:
  """Whether `rel` is the only GenEval relation of object a to b (rendered boxes)."""
  return geneval.clear_relation(rendering.boxes[a], rendering.boxes[b]) == rel


def place(rng: np.random.Generator, specs: Sequence[tuple[str, str]], *, image_size: int,
          relation: tuple[int, str, int] | None = None, tries: int = 400) -> Scene | None:
  """Places objects with the given (shape, colour)s at random.

  Args:
    rng: the random generator (advanced in place).
    specs: (shape, colour) per object, in scene order.
    image_size: resolution at which the scene must satisfy the rules.
    relation: optional (a, rel, b): object a must be `rel` object b, as the
      only GenEval relation between them.
    tries: attempts before giving up.

  Returns:
    A valid `Scene`, or None if no placement was found.
  """
  n = len(specs)
  for _ in range(tries):
    objs: list[SceneObject] = []
    for shape, color in specs:
      size = sample_size(rng, n)
      obj = None
      for _ in range(50):
        cand = SceneObject(shape, color, sample_center(rng, shape, size), size)
        if all(separated(cand, o) for o in objs):
          obj = cand
          break
      if obj is None:
        break
      objs.append(obj)
    if len(objs) < n:
      continue
    if relation is not None and not _relation_ok(objs[relation[0]], relation[1],
                                                 objs[relation[2]], RELATION_MARGIN):
      continue
    scene = Scene(tuple(objs))
    if valid(scene, image_size, relation):
      return scene
  return None


def valid(scene: Scene, image_size: int, relation: tuple[int, str, int] | None = None) -> bool:
  """Whether the scene passes `render.check_scene` (and the relation, if any)."""
  try:
    r = render_lib.check_scene(scene, image_size, MIN_SIZE)
  except render_lib.SceneError:
    return False
  return relation is None or relation_holds(r, *relation)


def relation_bounds(rel: str, ref: SceneObject) -> tuple[float, float, float, float]:
  """Region left of / right of / above / below `ref`'s box, GAP away from it."""
  x0, y0, x1, y1 = ref.extent()
  return {"left of": (0.0, 0.0, x0 - GAP, 1.0), "right of": (x1 + GAP, 0.0, 1.0, 1.0),
          "above": (0.0, 0.0, 1.0, y0 - GAP), "below": (0.0, y1 + GAP, 1.0, 1.0)}[rel]


def place_object(rng: np.random.Generator, scene: Scene, obj: SceneObject, *, image_size: int,
                 skip: int | None = None, relation: tuple[str, int] | None = None,
                 bounds: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
                 tries: int = 200) -> Scene | None:
  """Places `obj` at a new random centre among the objects of `scene`.

  Args:
    rng: the random generator.
    scene: the scene to place into.
    obj: the object to place; its shape, colour and size are kept.
    image_size: resolution at which the result must satisfy the rules.
    skip: index of the object of `scene` that `obj` replaces (a move); None
      appends `obj` (an addition).
    relation: optional (rel, ref): the placed object must be `rel` object
      `ref` of the resulting scene, as the only GenEval relation (its box is
      put entirely on that side of ref's box, the relation placed with the
      0.1 margin and checked exactly on the rendered boxes).
    bounds: (x0, y0, x1, y1) region the placed object's box must lie in.
    tries: attempts before giving up.

  Returns:
    The resulting scene (other objects unchanged and in the same order; an
    added object is last), or None.
  """
  others = [o for k, o in enumerate(scene.objects) if k != skip]
  index = len(scene.objects) if skip is None else skip
  if relation is not None:
    rb = relation_bounds(relation[0], scene.objects[relation[1]])
    bounds = (max(bounds[0], rb[0]), max(bounds[1], rb[1]), min(bounds[2], rb[2]),
              min(bounds[3], rb[3]))
  for _ in range(tries):
    center = sample_center(rng, obj.shape, obj.size, bounds)
    if center is None:
      return None
    cand = SceneObject(obj.shape, obj.color, center, obj.size)
    if not all(separated(cand, o) for o in others):
      continue
    if relation is not None and not _relation_ok(cand, relation[0], scene.objects[relation[1]],
                                                 RELATION_MARGIN):
      continue
    objs = list(scene.objects)
    if skip is None:
      objs.append(cand)
    else:
      objs[skip] = cand
    out = Scene(tuple(objs), scene.background)
    rel = None if relation is None else (index, relation[0], relation[1])
    if valid(out, image_size, rel):
      return out
  return None
