"""Deterministic, exact renderer for ShapesWorld scenes.

`render(scene, size)` paints each object's exact pixel-centre mask
(`shapes.shape_mask`) with its palette colour on the flat background: no
antialiasing, no noise. Hence on a clean render

  * every pixel of object k's mask has exactly `palette.COLOR_RGB[color_k]`;
  * every other pixel has exactly the background colour;
  * objects of a generated scene are separated by background pixels (no two
    masks touch, even diagonally), so the 8-connected components of the
    non-background pixels are exactly the objects.

The masks are computed with NumPy, not Pillow's drawing routines, so the
output does not depend on the Pillow version; Pillow only encodes/decodes PNG.

Boxes follow mmdetection's mask-to-box convention used by GenEval: (x1, y1,
x2, y2) in pixels with x2 = last column + 1 and y2 = last row + 1, so the box
centre is ((x1 + x2) / 2, (y1 + y2) / 2) and its width x2 - x1.

Example:
  >>> from jaxmodels.shapes_world.scene import Scene, SceneObject
  >>> scene = Scene((SceneObject("star", "yellow", (0.5, 0.5), 0.4),))
  >>> r = render_with_masks(scene, 64)
  >>> r.image.shape, r.masks.shape, r.boxes.shape
  ((64, 64, 3), (1, 64, 64), (1, 4))
  >>> bool((decode_png(encode_png(r.image)) == r.image).all())
  True
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from jaxmodels.errors import JaxModelsError
from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.shapes_world.scene import SceneObject


class SceneError(JaxModelsError, ValueError):
  """A scene breaks a ShapesWorld rule (overlap, outside canvas, too small)."""


@dataclasses.dataclass(frozen=True)
class Rendering:
  """A rendered scene with its exact per-object annotations.

  Attributes:
    image: uint8 [H, W, 3].
    masks: bool [N, H, W]; mask k = pixels showing object k (visible part).
    boxes: int32 [N, 4] tight boxes (x1, y1, x2, y2) of the masks, x2/y2
      exclusive; all zeros for an object with an empty mask.
  """
  image: np.ndarray
  masks: np.ndarray
  boxes: np.ndarray


def object_mask(obj: SceneObject, size: int) -> np.ndarray:
  """Exact bool [size, size] mask of one object drawn alone."""
  return shapes.shape_mask(obj.shape, (obj.center[0] * size, obj.center[1] * size),
                           obj.size * size, size, size)


def mask_box(mask: np.ndarray) -> np.ndarray:
  """Tight int32 [4] box (x1, y1, x2, y2), x2/y2 exclusive; zeros if empty."""
  rows = np.flatnonzero(mask.any(1))
  cols = np.flatnonzero(mask.any(0))
  if rows.size == 0:
    return np.zeros(4, np.int32)
  return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.int32)


def render_with_masks(scene: Scene, size: int) -> Rendering:
  """Renders `scene` on a size x size canvas, with masks and boxes.

  Args:
    scene: the scene (any; no validity check here, see `check_scene`).
    size: canvas side in pixels.

  Returns:
    A `Rendering`. Later objects cover earlier ones where they overlap; masks
    hold visible pixels only.
  """
  return _compose(scene, [object_mask(o, size) for o in scene.objects], size)


def visible_masks(scene: Scene, size: int) -> np.ndarray:
  """bool [N, size, size]: each object's visible pixels (later objects cover earlier ones), the
  masks of `render_with_masks` without painting the image or measuring boxes."""
  return _visible([object_mask(o, size) for o in scene.objects], size)


def _visible(full: list[np.ndarray], size: int) -> np.ndarray:
  masks = np.zeros((len(full), size, size), bool)
  for k, m in enumerate(full):
    masks[:k] &= ~m
    masks[k] = m
  return masks


def _compose(scene: Scene, full: list[np.ndarray], size: int) -> Rendering:
  """Paints the objects' full masks in order; masks keep visible pixels."""
  image = np.empty((size, size, 3), np.uint8)
  image[...] = np.asarray(scene.background, np.uint8)
  for obj, m in zip(scene.objects, full):
    image[m] = palette.COLOR_RGB[obj.color]
  masks = _visible(full, size)
  boxes = np.stack([mask_box(m) for m in masks]) if len(full) else np.zeros((0, 4), np.int32)
  return Rendering(image=image, masks=masks, boxes=boxes.astype(np.int32))


def render(scene: Scene, size: int) -> np.ndarray:
  """Renders `scene` to a uint8 [size, size, 3] image (see module docstring)."""
  return render_with_masks(scene, size).image


def _dilate(mask: np.ndarray) -> np.ndarray:
  """3x3 binary dilation (8-neighbourhood) of a bool [H, W] mask."""
  p = np.pad(mask, 1)
  h, w = mask.shape
  out = np.zeros_like(mask)
  for dy in range(3):
    for dx in range(3):
      out |= p[dy:dy + h, dx:dx + w]
  return out


def check_scene(scene: Scene, size: int, min_size: float = 0.0) -> Rendering:
  """Checks the ShapesWorld scene rules at resolution `size`.

  Rules: every object's geometric box lies inside the canvas; every object's
  `size` is at least `min_size` (canvas fraction); every mask is non-empty and
  untouched by others (a background pixel separates any two objects, also
  diagonally); background and object colours are distinct.

  Args:
    scene: the scene.
    size: canvas side in pixels.
    min_size: minimum object size as a fraction of the canvas side.

  Returns:
    The `Rendering` at `size`.

  Raises:
    SceneError: naming the first broken rule.
  """
  if tuple(scene.background) in palette.COLOR_RGB.values():
    raise SceneError(f"background {scene.background} equals an object colour")
  for k, obj in enumerate(scene.objects):
    x0, y0, x1, y1 = obj.extent()
    if x0 < 0 or y0 < 0 or x1 > 1 or y1 > 1:
      raise SceneError(f"object {k} ({obj.phrase}) extends outside the canvas: {obj.extent()}")
    if obj.size < min_size:
      raise SceneError(f"object {k} ({obj.phrase}) size {obj.size:.3f} < minimum {min_size:.3f}")
  full = [object_mask(o, size) for o in scene.objects]
  for k, m in enumerate(full):
    if not m.any():
      raise SceneError(f"object {k} ({scene.objects[k].phrase}) has no pixels at {size}px")
  for k in range(len(full)):
    grown = _dilate(full[k])
    for j in range(k + 1, len(full)):
      if (grown & full[j]).any():
        raise SceneError(f"objects {k} and {j} overlap or touch at {size}px")
  return _compose(scene, full, size)


def encode_png(image: np.ndarray) -> bytes:
  """Losslessly encodes a uint8 [H, W, 3] image as PNG bytes (deterministic)."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """Decodes PNG bytes to a uint8 [H, W, 3] array."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"), np.uint8)
