"""The ShapesWorld palette: GenEval's 10 colour names with fixed RGB values.

GenEval's colour classifier (evals.md §1.6) chooses among exactly these ten
names, in this order: red, orange, yellow, green, blue, purple, pink, brown,
black, white. ShapesWorld paints every object with one of them, flat (no
shading, no antialiasing), so a pixel's colour identifies its object's colour
exactly on clean renders and by nearest-palette lookup on generated images.

How the RGB values were chosen:
  * each is a prototypical, saturated instance of its name (close to the CSS /
    X11 colour of the same name, nudged apart), so that a CLIP zero-shot
    colour classifier names it correctly;
  * every pair is at least 80 apart in RGB Euclidean distance (the closest pair
    is orange/yellow at ~88), so nearest-palette classification tolerates
    generation noise of about ±40 per channel;
  * the background is the flat grey #999999 (153, 153, 153): it is at least 80
    away from every object colour (black and white included), and it is the
    grey GenEval pastes segmented objects onto before colour classification,
    so GenEval's crops of a ShapesWorld object look like the original.

| name   | RGB             |
|--------|-----------------|
| red    | (220, 30, 30)   |
| orange | (255, 140, 0)   |
| yellow | (255, 225, 25)  |
| green  | (30, 160, 50)   |
| blue   | (30, 80, 230)   |
| purple | (130, 50, 190)  |
| pink   | (255, 130, 200) |
| brown  | (135, 80, 35)   |
| black  | (15, 15, 15)    |
| white  | (245, 245, 245) |
| (background) | (153, 153, 153) |

Example:
  >>> COLOR_RGB["red"]
  (220, 30, 30)
  >>> nearest_color((200, 40, 35))
  'red'
"""

from __future__ import annotations

import numpy as np

# GenEval's colour list, in GenEval's order (evals.md §1.6). Index = colour id.
COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue",
    "purple", "pink", "brown", "black", "white",
)

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (255, 225, 25),
    "green": (30, 160, 50),
    "blue": (30, 80, 230),
    "purple": (130, 50, 190),
    "pink": (255, 130, 200),
    "brown": (135, 80, 35),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
}

# Flat background of every ShapesWorld scene: GenEval's crop grey #999.
BACKGROUND_RGB: tuple[int, int, int] = (153, 153, 153)

# uint8 [10, 3] table, row i = COLORS[i].
PALETTE: np.ndarray = np.array([COLOR_RGB[c] for c in COLORS], np.uint8)


def luminance(rgb) -> np.ndarray:
  """Rec. 601 luma (0.299 R + 0.587 G + 0.114 B) of RGB values [..., 3] in 0..255."""
  return np.asarray(rgb, np.float64) @ np.array([0.299, 0.587, 0.114])


def color_id(name: str) -> int:
  """Index of a colour name in `COLORS` (raises ValueError if unknown)."""
  try:
    return COLORS.index(name)
  except ValueError:
    raise ValueError(f"unknown ShapesWorld colour {name!r}; expected one of {COLORS}") from None


def nearest_color(rgb) -> str:
  """Name of the palette colour nearest (Euclidean RGB) to `rgb`.

  Args:
    rgb: three numbers (any numeric type), e.g. the mean colour of a mask.

  Returns:
    One of `COLORS`.
  """
  rgb = np.asarray(rgb, np.float64).reshape(3)
  d = ((PALETTE.astype(np.float64) - rgb) ** 2).sum(-1)
  return COLORS[int(np.argmin(d))]


def nearest_color_ids(pixels: np.ndarray) -> np.ndarray:
  """Per-pixel nearest palette colour id.

  Args:
    pixels: uint8 or float array [..., 3].

  Returns:
    int32 array [...] of colour ids (indices into `COLORS`).
  """
  p = np.asarray(pixels, np.float32)[..., None, :]
  d = ((p - PALETTE.astype(np.float32)) ** 2).sum(-1)
  return np.argmin(d, axis=-1).astype(np.int32)
