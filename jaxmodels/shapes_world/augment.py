"""Background recolouring of ShapesWorld renders, for understanding training images.

Every ShapesWorld scene is drawn on one flat grey (`palette.BACKGROUND_RGB`), so a model trained on
them alone has never seen an object on another surround, and fails when the background changes:
objects camouflaged on a near-colour background, a scene split between a dark and a light surround
(ShapesWorld-ColorBench's Mimicry, Illusion and Robustness tasks measure exactly that). Repainting the
background pixels (and only them) keeps every answer about the objects true — their shapes, colours,
counts, positions and pixel areas — because the new background is never exactly a palette colour.

Kinds (`jitter_background`, one drawn uniformly):
  random        one uniformly random colour;
  near_object   one object's colour moved 20–60 (RGB distance) in a random direction;
  two_tone      the left and right halves in two greys at least 60 apart.

    image = jitter_background(np.random.default_rng(seed), image, object_colours=["red", "blue"])
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmodels.shapes_world import palette

KINDS = ("random", "near_object", "two_tone")
_PALETTE = {tuple(int(v) for v in rgb) for rgb in palette.COLOR_RGB.values()}


def _off_palette(rgb) -> np.ndarray:
  """`rgb` as uint8, nudged by one level where it would equal a palette colour exactly."""
  out = np.clip(np.rint(np.asarray(rgb, np.float64)), 0, 255).astype(np.uint8)
  if tuple(int(v) for v in out) in _PALETTE:
    out[0] = out[0] + 1 if out[0] < 255 else out[0] - 1
  return out


def jitter_background(rng: np.random.Generator, image: np.ndarray,
                      object_colours: Sequence[str] = ()) -> np.ndarray:
  """A copy of a ShapesWorld render (uint8 [S, S, 3]) with its background pixels repainted (module
  docstring); `object_colours`: the scene's colour names (for `near_object`; without them a scene
  gets `random`)."""
  bg = np.all(image == np.asarray(palette.BACKGROUND_RGB, np.uint8), axis=-1)
  out = image.copy()
  kind = KINDS[int(rng.integers(len(KINDS)))]
  if kind == "near_object" and not object_colours:
    kind = "random"
  if kind == "random":
    out[bg] = _off_palette(rng.integers(0, 256, size=3))
  elif kind == "near_object":
    rgb = np.asarray(palette.COLOR_RGB[object_colours[int(rng.integers(len(object_colours)))]], np.float64)
    direction = rng.normal(size=3)
    out[bg] = _off_palette(rgb + rng.uniform(20, 60) * direction / np.linalg.norm(direction))
  else:
    left = int(rng.integers(20, 236))
    right = int(rng.choice([v for v in range(20, 236) if abs(v - left) >= 60]))
    half = image.shape[1] // 2
    cols = np.arange(image.shape[1])[None, :] < half
    tones = np.where(cols[..., None], _off_palette([left] * 3), _off_palette([right] * 3))
    tones = np.broadcast_to(tones, image.shape)
    out[bg] = tones[bg]
  return out
