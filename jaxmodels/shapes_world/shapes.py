"""ShapesWorld shape vocabulary ("GenEval classes") and exact rasterisation.

Six shapes play the role of GenEval's COCO classes:

| id | class    | drawn as (inside a square of side s centred at c)              |
|----|----------|----------------------------------------------------------------|
| 0  | circle   | disc of diameter s                                             |
| 1  | square   | axis-aligned square of side s                                  |
| 2  | triangle | isosceles, apex up: base s (bottom edge), height s             |
| 3  | diamond  | square rotated 45°: vertices at the midpoints of the box edges |
| 4  | star     | 5-pointed, point up, inner/outer radius 0.5, width s, height ~0.95 s |
| 5  | cross    | plus sign: two bars of length s and thickness s/3              |

The set was picked so that a simple detector can tell them apart from a mask
alone: their fill ratios of the tight box differ (square 1.0, circle 0.79,
cross 0.56, diamond 0.5, triangle 0.5, star ~0.44) and triangle/diamond differ
in symmetry (the triangle is widest at the bottom, the diamond in the middle).
Hexagons and ellipses were left out on purpose: at 16 px they are nearly
indistinguishable from circles.

All names start with a consonant ("a circle", "a star") and the GenEval plural
rule (append "s", or "es" after s/x/z/ch/sh) gives "crosses".

Rasterisation is exact and library-independent: a pixel (i, j) belongs to the
shape iff its centre (j + 0.5, i + 0.5) lies inside the analytic shape (no
antialiasing). The tight pixel box of a shape is therefore within one pixel of
its geometric `extent`.

Example:
  >>> m = shape_mask("circle", center=(32.0, 32.0), size=20.0, height=64, width=64)
  >>> m.shape, m.dtype
  ((64, 64), dtype('bool'))
"""

from __future__ import annotations

import math

import numpy as np

# Shape names, index = shape ("class") id.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")

_STAR_INNER = 0.5  # inner radius / outer radius (a regular star is 0.382; fatter is easier to see)
_STAR_R = 1.0 / (2.0 * math.sin(math.radians(72)))  # outer radius per unit width
_STAR_H = _STAR_R * (1.0 + math.cos(math.radians(36)))  # height per unit width (~0.951)
_CROSS_THICKNESS = 1.0 / 3.0


def shape_id(name: str) -> int:
  """Index of a shape name in `SHAPES` (raises ValueError if unknown)."""
  try:
    return SHAPES.index(name)
  except ValueError:
    raise ValueError(f"unknown ShapesWorld shape {name!r}; expected one of {SHAPES}") from None


def plural(name: str) -> str:
  """GenEval's plural rule: append "es" after s/x/z/ch/sh, else "s"."""
  if name.endswith(("s", "x", "z", "ch", "sh")):
    return name + "es"
  return name + "s"


def article(word: str) -> str:
  """GenEval's indefinite article for the next word: "an" before a vowel."""
  return "an" if word[:1].lower() in "aeiou" else "a"


def extent(shape: str, center: tuple[float, float], size: float) -> tuple[float, float, float, float]:
  """Geometric bounding box of a shape, in the units of `center` and `size`.

  Args:
    shape: one of `SHAPES`.
    center: (x, y) of the box centre; y points down.
    size: side of the square the shape is drawn in.

  Returns:
    (x0, y0, x1, y1) with x1 - x0 = size; y1 - y0 = size except for the star
    (~0.951 * size). The box is centred on `center` for every shape.
  """
  shape_id(shape)
  cx, cy = center
  h = size * _STAR_H if shape == "star" else size
  return (cx - size / 2, cy - h / 2, cx + size / 2, cy + h / 2)


def star_vertices(center: tuple[float, float], size: float) -> np.ndarray:
  """The 10 vertices [10, 2] (x, y) of the star drawn for `center`, `size`."""
  cx, cy = center
  r_out = size * _STAR_R
  r_in = r_out * _STAR_INNER
  # Put the star's circumcentre so that its bounding box is centred on `center`.
  oy = cy - size * _STAR_H / 2 + r_out
  angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
  radii = np.where(np.arange(10) % 2 == 0, r_out, r_in)
  return np.stack([cx + radii * np.cos(angles), oy + radii * np.sin(angles)], -1)


def shape_masks(shape: str, cx: np.ndarray, cy: np.ndarray, size: np.ndarray, xs: np.ndarray,
                ys: np.ndarray) -> np.ndarray:
  """Exact ShapesWorld masks of K placements of one shape, at the given pixel centres.

  A pixel belongs to the shape iff its centre is inside the analytic shape; element [k, i, j]
  tests the pixel whose centre is (xs[j], ys[i]) against placement k. `shape_mask` (the
  renderer) and the GenEval `shapes` detector both rasterise through this function.

  Args:
    shape: one of `SHAPES`.
    cx, cy, size: float [K] centres and sizes, in pixels.
    xs: float [W'] x of the pixel centres (column + 0.5); ys: float [H'] likewise.

  Returns:
    bool [K, H', W'].
  """
  cx = np.asarray(cx, np.float64).reshape(-1, 1, 1)
  cy = np.asarray(cy, np.float64).reshape(-1, 1, 1)
  size = np.asarray(size, np.float64).reshape(-1, 1, 1)
  xx = np.asarray(xs, np.float64).reshape(1, 1, -1)
  yy = np.asarray(ys, np.float64).reshape(1, -1, 1)
  r = size / 2.0
  if shape in ("circle", "square", "diamond", "cross"):
    dx, dy = np.abs(xx - cx), np.abs(yy - cy)
    if shape == "circle":
      return dx * dx + dy * dy <= r * r
    if shape == "square":
      return (dx <= r) & (dy <= r)
    if shape == "diamond":
      return dx + dy <= r
    t = size * _CROSS_THICKNESS / 2.0
    return ((dx <= t) & (dy <= r)) | ((dy <= t) & (dx <= r))
  if shape == "triangle":  # apex up: (cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)
    c, y, rr = cx[:, 0], cy[:, 0], r[:, 0]  # [K, 1]
    verts = np.stack([np.concatenate([c, y - rr], -1), np.concatenate([c + rr, y + rr], -1),
                      np.concatenate([c - rr, y + rr], -1)], 1)  # [K, 3, 2]
  elif shape == "star":
    verts = star_vertices((cx[:, 0], cy[:, 0]), size[:, 0])  # [K, 10, 2]
  else:
    shape_id(shape)  # raises ValueError naming the shapes
    raise AssertionError(shape)
  # Even-odd point-in-polygon rule; the crossing abscissa depends on the row only.
  inside = np.zeros((len(verts), yy.shape[1], xx.shape[2]), bool)
  n = verts.shape[1]
  with np.errstate(divide="ignore", invalid="ignore"):
    for k in range(n):
      x1, y1 = verts[:, k, 0, None, None], verts[:, k, 1, None, None]
      x2, y2 = verts[:, (k + 1) % n, 0, None, None], verts[:, (k + 1) % n, 1, None, None]
      crosses = (y1 > yy) != (y2 > yy)
      x_at = x1 + (x2 - x1) * (yy - y1) / (y2 - y1)
      inside ^= crosses & (xx < x_at)
  return inside


def shape_mask(shape: str, center: tuple[float, float], size: float, height: int,
               width: int) -> np.ndarray:
  """Exact boolean mask of one shape on a height x width pixel grid.

  Only the pixels near the shape's box are tested (same result as testing all
  of them, faster).

  Args:
    shape: one of `SHAPES`.
    center: (x, y) centre in pixels (x right, y down; pixel (i, j) spans
      [j, j + 1) x [i, i + 1)).
    size: side of the shape's square, in pixels.
    height: grid height in pixels.
    width: grid width in pixels.

  Returns:
    bool [height, width]; True where the pixel centre is inside the shape.
  """
  cx, cy = float(center[0]), float(center[1])
  x0, y0, x1, y1 = extent(shape, (cx, cy), size)
  c0, c1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 1, width)
  r0, r1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 1, height)
  out = np.zeros((height, width), bool)
  if c0 >= c1 or r0 >= r1:
    return out
  ys = np.arange(r0, r1, dtype=np.float64) + 0.5
  xs = np.arange(c0, c1, dtype=np.float64) + 0.5
  out[r0:r1, c0:c1] = shape_masks(shape, [cx], [cy], [float(size)], xs, ys)[0]
  return out
