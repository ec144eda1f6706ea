"""Edit pairs (source scene, instruction, target scene) for ROVER-style tasks.

An edit is a JSON-able dict:

  {"kind": one of EDIT_KINDS, "instruction": str,
   "steps": [step, ...], "target": Scene.to_dict()}

Steps are applied in order, each to the scene left by the previous one
(indices refer to that scene); `apply_steps(source, steps)` reproduces the
target exactly. Step forms and their instruction sentences:

| op      | step fields                               | sentence                                              |
|---------|-------------------------------------------|-------------------------------------------------------|
| recolor | index, color                              | Change the color of the <ref> to <color>.              |
| move    | index, center, relation, ref              | Move the <ref> so that it is <relation> the <ref2>.    |
| move    | index, center, region                     | Move the <ref> to the <left/right/top/bottom> half of the image. |
| add     | object (SceneObject dict)                 | Add a/an <color> <shape>. / Add one more <shape>.      |
| remove  | index                                     | Remove the <ref>.                                      |

<ref> is `scene.unique_reference` on the scene the step applies to. Kinds:

* colour: one recolor (exactly one object changes, only its colour);
* spatial: one move (exactly one object changes, only its centre; the asked
  relation did not hold before and is the only GenEval relation after, or the
  object's box ends up inside the asked half and was not before);
* quantitative: one add or remove (the object count changes by one);
* sequence: two steps of the kinds above, joined as
  "First <sentence 1>, then <sentence 2>." (first letters lowered, periods
  dropped).

Every target passes `render.check_scene` at the dataset resolution.

Example:
  >>> scene = Scene((SceneObject("circle", "red", (0.3, 0.5), 0.3),
  ...                SceneObject("square", "blue", (0.75, 0.5), 0.3)))
  >>> edit = make_edit(np.random.default_rng(0), scene, image_size=64, kind="colour")
  >>> edit["kind"], edit["steps"][0]["op"]
  ('colour', 'recolor')
  >>> apply_steps(scene, edit["steps"]) == Scene.from_dict(edit["target"])
  True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxmodels.shapes_world import geneval
from jaxmodels.shapes_world import layout
from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world import render as render_lib
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.shapes_world.scene import SceneObject
from jaxmodels.shapes_world.scene import unique_reference

EDIT_KINDS: tuple[str, ...] = ("spatial", "quantitative", "colour", "sequence")
REGIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
REGION_BOUNDS = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 1.0, 1.0),
                 "top": (0.0, 0.0, 1.0, 0.5), "bottom": (0.0, 0.5, 1.0, 1.0)}


def in_region(obj: SceneObject, region: str) -> bool:
  """Whether the object's geometric box lies inside that half of the canvas."""
  x0, y0, x1, y1 = obj.extent()
  return {"left": x1 <= 0.5, "right": x0 >= 0.5, "top": y1 <= 0.5, "bottom": y0 >= 0.5}[region]


def apply_step(scene: Scene, step: dict[str, Any]) -> Scene:
  """Applies one step dict (see module docstring) and returns the new scene."""
  op = step["op"]
  if op == "recolor":
    return scene.replace(step["index"], color=step["color"])
  if op == "move":
    return scene.replace(step["index"], center=tuple(step["center"]))
  if op == "add":
    return scene.add(SceneObject.from_dict(step["object"]))
  if op == "remove":
    return scene.remove(step["index"])
  raise ValueError(f"unknown edit op {op!r}")


def apply_steps(scene: Scene, steps: list[dict[str, Any]]) -> Scene:
  """Applies the steps in order."""
  for step in steps:
    scene = apply_step(scene, step)
  return scene


def _refs(scene: Scene) -> list[int]:
  return [k for k in range(len(scene.objects)) if unique_reference(scene, k)]


def _recolor(rng, scene: Scene, image_size: int):
  refs = _refs(scene)
  if not refs:
    return None
  k = refs[int(rng.integers(len(refs)))]
  ref = unique_reference(scene, k)
  old = scene.objects[k].color
  new = [c for c in palette.COLORS if c != old][int(rng.integers(len(palette.COLORS) - 1))]
  step = {"op": "recolor", "index": k, "color": new}
  return step, f"Change the color of the {ref} to {new}.", apply_step(scene, step)


def _move(rng, scene: Scene, image_size: int):
  refs = _refs(scene)
  if not refs:
    return None
  use_relation = len(scene.objects) >= 2 and rng.random() < 0.75
  for _ in range(8):
    k = refs[int(rng.integers(len(refs)))]
    obj = scene.objects[k]
    ref = unique_reference(scene, k)
    if use_relation:
      others = [j for j in refs if j != k]
      if not others:
        use_relation = False
        continue
      j = others[int(rng.integers(len(others)))]
      rel = geneval.RELATIONS[int(rng.integers(4))]
      before = render_lib.render_with_masks(scene, image_size).boxes
      if rel in geneval.relative_position(before[k], before[j]):
        continue
      out = layout.place_object(rng, scene, obj, image_size=image_size, skip=k, relation=(rel, j))
      if out is None:
        continue
      step = {"op": "move", "index": k, "center": list(out.objects[k].center), "relation": rel,
              "ref": j}
      ref_j = unique_reference(scene, j)
      return step, f"Move the {ref} so that it is {rel} the {ref_j}.", out
    region = REGIONS[int(rng.integers(4))]
    if in_region(obj, region):
      continue
    out = layout.place_object(rng, scene, obj, image_size=image_size, skip=k,
                              bounds=REGION_BOUNDS[region])
    if out is None:
      continue
    step = {"op": "move", "index": k, "center": list(out.objects[k].center), "region": region}
    return step, f"Move the {ref} to the {region} half of the image.", out
  return None


def _add(rng, scene: Scene, image_size: int):
  n = len(scene.objects)
  if n >= layout.MAX_OBJECTS:
    return None
  color = palette.COLORS[int(rng.integers(len(palette.COLORS)))]
  present = sorted({o.shape for o in scene.objects}, key=shapes.SHAPES.index)
  one_more = bool(present) and rng.random() < 0.5
  if one_more:
    shape = present[int(rng.integers(len(present)))]
    text = f"Add one more {shape}."
  else:
    shape = shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))]
    text = f"Add {shapes.article(color)} {color} {shape}."
  for _ in range(4):
    obj = SceneObject(shape, color, (0.5, 0.5), layout.sample_size(rng, n + 1))
    out = layout.place_object(rng, scene, obj, image_size=image_size)
    if out is not None:
      step = {"op": "add", "object": out.objects[-1].to_dict()}
      return step, text, out
  return None


def _remove(rng, scene: Scene, image_size: int):
  refs = _refs(scene)
  if len(scene.objects) < 2 or not refs:
    return None
  k = refs[int(rng.integers(len(refs)))]
  step = {"op": "remove", "index": k}
  return step, f"Remove the {unique_reference(scene, k)}.", apply_step(scene, step)


def _quantitative(rng, scene: Scene, image_size: int):
  ops = [_add, _remove] if rng.random() < 0.5 else [_remove, _add]
  for op in ops:
    out = op(rng, scene, image_size)
    if out is not None:
      return out
  return None


_SINGLE = {"colour": _recolor, "spatial": _move, "quantitative": _quantitative}


def _single(rng, kind: str, scene: Scene, image_size: int):
  return _SINGLE[kind](rng, scene, image_size)


def _join(first: str, second: str) -> str:
  lower = lambda s: s[0].lower() + s[1:].rstrip(".")
  return f"First {lower(first)}, then {lower(second)}."


def make_edit(rng: np.random.Generator, scene: Scene, *, image_size: int,
              kind: str | None = None) -> dict[str, Any] | None:
  """Makes one edit of `scene` (see module docstring).

  Args:
    rng: random generator (advanced in place).
    scene: the source scene (valid at `image_size`).
    image_size: resolution at which the target must be valid.
    kind: one of EDIT_KINDS; None picks one at random. If the requested kind
      is impossible for this scene (e.g. no object can be named), the other
      kinds are tried in a random order.

  Returns:
    The edit dict, or None if no kind applies.
  """
  kinds = list(EDIT_KINDS)
  order = [kinds[int(i)] for i in rng.permutation(len(kinds))]
  if kind is not None:
    if kind not in EDIT_KINDS:
      raise ValueError(f"unknown edit kind {kind!r}; expected one of {EDIT_KINDS}")
    order.remove(kind)
    order.insert(0, kind)
  for k in order:
    if k == "sequence":
      k1, k2 = (_SINGLE_KINDS[int(i)] for i in rng.choice(3, size=2, replace=False))
      first = _single(rng, k1, scene, image_size)
      if first is None:
        continue
      second = _single(rng, k2, first[2], image_size)
      if second is None:
        continue
      steps, text, target = [first[0], second[0]], _join(first[1], second[1]), second[2]
    else:
      out = _single(rng, k, scene, image_size)
      if out is None:
        continue
      steps, text, target = [out[0]], out[1], out[2]
    render_lib.check_scene(target, image_size, layout.MIN_SIZE)
    return {"kind": k, "instruction": text, "steps": steps, "target": target.to_dict()}
  return None


_SINGLE_KINDS: tuple[str, ...] = ("spatial", "quantitative", "colour")
