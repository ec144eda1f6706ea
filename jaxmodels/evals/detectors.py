"""GenEval detectors behind the `geneval.Detector` interface; here `shapes`, for ShapesWorld.

`ShapesDetector` finds the objects of a ShapesWorld image (input_pipeline/shapes_world): flat
circles, squares, triangles, diamonds, stars and crosses in the 10 GenEval colours on a flat grey
background, at any resolution. It is exact on clean renders (every object, with its class, colour
and mmdetection-style tight box, score 1.0) and strict on generated images: an object is reported
only when its pixels are, up to mild noise, those of a ShapesWorld render of one shape, so a blocky
patch-grid artefact, a mosaic, a blob, noise or blur does not pass as a square or a circle.
Numpy only (no scipy, no torch).

Algorithm, per image:
  1. Background: the mode colour of the 1-pixel image border when it covers at least half of the
     border (clean renders: all of it; objects never touch the border), else the per-channel
     median of the border (noisy images); or a fixed RGB given by the caller.
  2. Foreground: every pixel takes the nearest (Euclidean RGB) of {background, the 10 palette
     colours}; the foreground is the pixels nearer to a palette colour than to the background.
     (A fixed radius around the background would turn far more noisy background pixels into
     foreground: noise must move a pixel half-way to a palette colour to flip it.)
  3. Objects: 8-connected components of the foreground (`label_components`, a vectorised
     union-find). On clean renders these are exactly the objects: the renderer keeps a background
     pixel between any two objects, also diagonally.
  4. Colour: the palette colour nearest to the component's per-channel median pixel, kept only if
     the component's colours are coherent (`color_tolerance`, `color_purity`), else None.
  5. Shape: for each of the six shapes, the best IoU between the component's mask and that
     shape's exact ShapesWorld rasterisation (the pixel-centre rule of `shapes.shape_mask`) over
     centre and size (`fit_shape`: the best size for a given centre is found exactly, the centre
     on grids down to 1/128 px). Clean renders fit with IoU 1.0. The class is the best shape and
     `score` its IoU.
  6. Outline evidence: `fill` and `halo` (`edge_blend`), how much the object's edge pixels and
     the pixels around it are blends of object colour and background (clean: 1 and 0), and
     whether the outline runs on a block grid (`block_size`, `mosaic_block`). The object colour
     here is the palette colour of which the median pixel is a blend with the background (within
     `color_tolerance` / 2), so a uniformly blended block reads as a partial blend; a colour
     that is no such blend (e.g. cyan) is judged on its own median.
  7. A component is reported only if it passes every bar below; `analyze` gives every
     component with the reason it was dropped.

Thresholds (defaults of `ShapesDetector`) and why. "Measured" numbers come from 80 generated
scenes (146 objects, every shape and colour, 1-4 objects) at 32 px and at 64 px, clean and
degraded (uniform noise ±10, Gaussian noise sigma 15 / 25, Gaussian blur sigma 0.5 / 1 px,
average-pool mosaics of 2/4/8-px blocks, aligned and shifted):
  * `min_size_frac` = 0.2 of min(H, W), floored at `min_size_px` = 6: both sides of the tight box
    must be at least that. ShapesWorld objects are at least 0.25 of the canvas side (16 px at
    64 px, 8 px at 32 px); a pointed tip (triangle apex, diamond and star points) can lose a
    pixel row and the star is 0.951 as tall as wide, so the smallest legal box is ~0.22 of the
    side. Below ~6 px the six shapes rasterise to nearly the same few pixels; noise specks are
    that small.
  * `max_size_frac` = 0.75 of min(H, W): objects are at most half the canvas; a component spanning
    most of it is a colour field or merged artefacts.
  * `reject_border` = True: scenes keep objects 3% of the side inside the canvas, so a component
    touching the border is clutter or a cut-off object whose shape cannot be judged.
  * `iou_bar` = 0.98 (the minimum score): clean renders fit their true shape with IoU 1.0 (every
    generated object; >= 0.99 over 2,160 random placements of the six shapes at 7.5-36 px) and
    noise sigma 15 with >= 0.988, while the best *wrong* shape of a clean render reaches at most
    0.94 (a 7-9 px square or diamond against a circle). A flat, roundish 13x14 px blob fits a
    circle with 0.97 and is dropped. Every reported object also clears GenEval's counting
    threshold 0.9.
  * `margin` = 0.03: the best IoU must beat the second-best shape's by this much, so an object
    between two shapes is dropped rather than guessed. Clean renders: >= 0.062 at 32 px,
    >= 0.108 at 64 px (measured).
  * `edge_tolerance` = 0.5: mismatched pixels between the component and its best fit, per
    boundary pixel of the fit. The IoU bar loosens as objects grow (2% of a 100-px disc is a
    half-pixel band all around it, of a 200-px disc a 1-px band); this bar does not. Clean 0,
    noise sigma 25 <= 0.25, blocky (mosaic) outlines up to 2.8 (measured).
  * `min_sharpness` = 0.85: `fill - halo` must be at least this. Clean 1.0; noise ±10 >= 0.94;
    noise sigma 15 >= 0.91; blur sigma 0.5 px <= 0.79 and sigma 1 px <= 0.48; objects in 4-px
    mosaics mostly <= 0.84 (measured; the block-grid rule and the IoU bar take the others).
    Blur is rejected whatever its class because at sigma = 1 px thresholding turns small
    diamonds and stars into pixel-perfect discs (IoU 1.0 with a circle). Lower it (not below
    ~0.5) to accept softer images at the price of that strictness.
  * `blocky_sharpness` = 0.95: an object whose outline runs on a b-px grid (b >= 2: its box on
    multiples of b and its mask constant on the blocks, or the whole image exactly
    block-constant, i.e. a mosaic, at any offset) must be pixel-exact (IoU 1) and this sharp.
    A mosaic can turn a circle into an exact 8x8 square with only a faint halo (sharpness up to
    0.90 measured on shifted 8-px mosaics at 32 px), and a disc drawn in 2-px blocks at 256 px
    fits a circle with IoU 0.988; a clean object on such a grid (only a square can be) fits
    exactly with sharpness 1.
  * `color_tolerance` = 44: the median pixel must be within 44 (RGB Euclidean) of its palette
    colour, half the distance of the closest palette pair (orange/yellow, 88.6), for the name to
    be unambiguous; else `color` is None (an off-palette colour).
  * `color_purity` = 0.8: at least 80% of the component's pixels must be nearest to that palette
    colour for it to be named, else `color` is None. Clean renders are 100% pure; noise ±10
    cannot move a pixel across a palette boundary; accepted objects under noise sigma 25 are
    >= 88% pure (measured).
  * `min_purity` = 0.6: below it the component has no dominant colour (touching objects of
    different colours, a checkerboard of patches) and is dropped: a ShapesWorld object is
    painted in one colour.

Fill ratios of the shapes in their tight box (measured with `shapes.shape_mask` at 800 px):
circle 0.785, square 1.0, triangle 0.50, diamond 0.50, star 0.43, cross 0.556.

Example:
  >>> from input_pipeline.shapes_world import Scene, SceneObject, render
  >>> image = render(Scene((SceneObject("circle", "red", (0.3, 0.5), 0.3),)), 64)
  >>> ShapesDetector().detect(image)
  [{'class': 'circle', 'box': [10, 22, 29, 42], 'score': 1.0, 'color': 'red'}]

With the GenEval rules: `geneval.evaluate_detections(record, ShapesDetector().detect(image))`,
or `geneval.score_folder(folder, metadata, ShapesDetector())`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np

from input_pipeline.shapes_world import palette as sw_palette
from input_pipeline.shapes_world import shapes as sw_shapes
from jaxmodels.evals import EvalInputError

SHAPES: tuple[str, ...] = sw_shapes.SHAPES
COLORS: tuple[str, ...] = sw_palette.COLORS
_CROSS_THICKNESS = 1.0 / 3.0  # bar thickness / size of the cross (shapes.py)
shape_masks = sw_shapes.shape_masks   # the renderer's exact rasterisation, batched
_STAR_UNIT = sw_shapes.star_vertices((0.0, 0.0), 1.0)  # [10, 2]; its box is centred on (0, 0)
_STAR_ASPECT = float(np.ptp(_STAR_UNIT[:, 1]))  # height / width of the star (~0.951)
_PIXELS_PER_CHUNK = 1 << 16  # nearest-colour lookup in chunks (memory bound on large images)


# --------------------------------------------------------------------------- connected components

def label_components(mask: np.ndarray, connectivity: int = 8) -> tuple[np.ndarray, int]:
  """Connected components of a boolean mask, numpy only (vectorised union-find).

  Args:
    mask: bool [H, W].
    connectivity: 8 (diagonal neighbours connect: the ShapesWorld object rule) or 4.

  Returns:
    (labels int32 [H, W], n): 0 off the mask, 1..n on it, numbered in raster order of each
    component's first pixel (the numbering of `scipy.ndimage.label`).
  """
  if connectivity not in (4, 8):
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
  mask = np.asarray(mask, bool)
  if mask.ndim != 2:
    raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
  h, w = mask.shape
  flat = mask.ravel()
  n_on = int(flat.sum())
  labels = np.zeros(h * w, np.int32)
  if n_on == 0:
    return labels.reshape(h, w), 0
  index = np.full(h * w, -1, np.int64)
  index[flat] = np.arange(n_on)
  index = index.reshape(h, w)
  steps = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
  us, vs = [], []
  for dy, dx in steps:  # pixel (i, j) and its neighbour (i + dy, j + dx)
    a = index[:h - dy, max(0, -dx):w - max(0, dx)]
    b = index[dy:, max(0, dx):w - max(0, -dx)]
    both = (a >= 0) & (b >= 0)
    us.append(a[both])
    vs.append(b[both])
  u, v = np.concatenate(us), np.concatenate(vs)
  # Invariant parent[x] <= x, so every tree's root is its smallest index (its first pixel).
  parent = np.arange(n_on)
  while True:
    while True:  # full path compression: every node points at its root
      grand = parent[parent]
      if np.array_equal(grand, parent):
        break
      parent = grand
    pu, pv = parent[u], parent[v]
    apart = pu != pv
    if not apart.any():
      break
    u, v, pu, pv = u[apart], v[apart], pu[apart], pv[apart]  # joined pairs stay joined
    np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))  # hook the larger root
  _, inverse = np.unique(parent, return_inverse=True)
  labels[flat] = inverse.astype(np.int32) + 1
  return labels.reshape(h, w), int(inverse.max()) + 1


# --------------------------------------------------------------------------- exact shape fitting

def critical_sizes(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Smallest size at which each point (u, v) (offset from the shape's centre, y down) lies in
  `shape`: the point is inside the shape of size s iff s >= the returned value.

  Every ShapesWorld shape is star-shaped about its centre (the star's box centre lies 0.05
  units from its circumcentre, inside its inner pentagon), so growing the size only grows the
  shape and this threshold (the shape's gauge function) exists. It turns the search over size
  into a sort: for a fixed centre the best size for a mask is found exactly.
  """
  u = np.asarray(u, np.float64)
  v = np.asarray(v, np.float64)
  au, av = np.abs(u), np.abs(v)
  if shape == "circle":
    return 2.0 * np.hypot(u, v)
  if shape == "square":
    return 2.0 * np.maximum(au, av)
  if shape == "diamond":
    return 2.0 * (au + av)
  if shape == "cross":
    k = 2.0 / _CROSS_THICKNESS
    return np.minimum(np.maximum(k * au, 2.0 * av), np.maximum(k * av, 2.0 * au))
  if shape == "triangle":  # below the base s >= 2v; beside the slanted edges s >= 4|u| - 2v
    return np.maximum(2.0 * v, 4.0 * au - 2.0 * v)
  if shape == "star":  # 1 / t where the ray t * (u, v) meets the outline of the unit star
    t_hit = np.full(u.shape, np.inf)
    n = len(_STAR_UNIT)
    with np.errstate(divide="ignore", invalid="ignore"):
      for k in range(n):
        (ax, ay), (bx, by) = _STAR_UNIT[k], _STAR_UNIT[(k + 1) % n]
        ex, ey = bx - ax, by - ay
        denom = u * ey - v * ex  # q x e
        t = (ax * ey - ay * ex) / denom  # (a x e) / (q x e)
        lam = (ax * v - ay * u) / denom  # (a x q) / (q x e): where along the edge
        hit = (lam >= 0) & (lam <= 1) & (t > 0)
        t_hit = np.where(hit & (t < t_hit), t, t_hit)
    return np.where((u == 0) & (v == 0), 0.0, 1.0 / t_hit)
  sw_shapes.shape_id(shape)
  raise AssertionError(shape)


def _polygon_area_centroid_y(v: np.ndarray) -> tuple[float, float]:
  """Area and centroid y of a simple polygon [N, 2] (shoelace formula)."""
  x, y = v[:, 0], v[:, 1]
  x2, y2 = np.roll(x, -1), np.roll(y, -1)
  cross = x * y2 - x2 * y
  area = cross.sum() / 2
  return abs(float(area)), float(((y + y2) * cross).sum() / (6 * area))


_STAR_AREA, _STAR_CENTROID_Y = _polygon_area_centroid_y(_STAR_UNIT)
# Area / size**2, and (area centroid y - centre y) / size, of each shape.
_AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5,
         "star": _STAR_AREA, "cross": 1 - 4 * ((1 - _CROSS_THICKNESS) / 2) ** 2}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6, "diamond": 0.0,
                "star": _STAR_CENTROID_Y, "cross": 0.0}


def _ious(cands: np.ndarray, mask: np.ndarray) -> np.ndarray:
  inter = np.count_nonzero(cands & mask, axis=(1, 2))
  union = np.count_nonzero(cands, axis=(1, 2)) + np.count_nonzero(mask) - inter
  return inter / np.maximum(union, 1)


def _edge_distances(vertices: np.ndarray) -> np.ndarray:
  """Distances from the origin to the lines through the edges of a polygon [N, 2]."""
  a, b = vertices, np.roll(vertices, -1, axis=0)
  e = b - a
  return np.abs(a[:, 0] * e[:, 1] - a[:, 1] * e[:, 0]) / np.hypot(e[:, 0], e[:, 1])


# Lipschitz constant of each shape's critical size in its centre: the critical size is the
# shape's gauge, linear on each edge's cone with slope 1 / (that edge's distance from the centre
# at size 1), so moving the centre by d changes any pixel's critical size by at most L * d.
_TRIANGLE_UNIT = np.array([(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)])
_GAUGE_LIPSCHITZ = {"circle": 2.0, "square": 2.0, "diamond": 2.0 * math.sqrt(2.0),
                    "cross": 2.0 / _CROSS_THICKNESS,
                    "triangle": 1.0 / float(_edge_distances(_TRIANGLE_UNIT).min()),
                    "star": 1.0 / float(_edge_distances(_STAR_UNIT).min())}


def _best_sizes(shape: str, mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, cx: np.ndarray,
                cy: np.ndarray, ref: tuple[float, float, float],
                span: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For each candidate centre (cx[c], cy[c]): the size within `span` of the reference size
  that maximises the IoU with `mask`, that IoU (-1 if there is none), and a miss cost.

  The shape of size s holds the pixels whose critical size is <= s, so the IoU needs counts
  only: the best cut lies at the critical size of a mask pixel (growing past a pixel off the mask
  only adds to the union); there the intersection is the number of mask pixels at or below it,
  and the shape's area comes from a binary search among all pixels' critical sizes. The size
  returned is half-way to the next critical size (robust to ties).

  Only pixels near the outline are sorted: with the candidates within `spread` of the reference
  centre and sizes within `span` of the reference size, a pixel whose critical size at the
  reference centre is below (above) the reference size by more than span + L * spread (L:
  `_GAUGE_LIPSCHITZ`) is inside (outside) every candidate shape, and is just counted.

  The IoU is flat between pixel events, so a search on it alone stalls on plateaus; the miss
  cost, the summed distance (in critical size) of the misclassified band pixels to the cut, is 0
  at an exact fit and shrinks continuously towards one, which tells plateau points apart.

  Args:
    shape, mask, xs, ys: as in `fit_shape`.
    cx, cy: float [C] candidate centres.
    ref: (x, y, size) of the reference placement.
    span: largest distance of a returned size from the reference size.
  """
  n_c = len(cx)
  rx, ry, rs = ref
  spread = float(np.max(np.hypot(cx - rx, cy - ry)))
  slack = span + _GAUGE_LIPSCHITZ[shape] * spread
  ref_sig = critical_sizes(shape, xs[None, :] - rx, ys[:, None] - ry).ravel()
  on = mask.ravel()
  core = ref_sig < rs - slack
  band = ~core & (ref_sig <= rs + slack)
  n_core, on_core, total = int(core.sum()), int((core & on).sum()), int(on.sum())
  yy, xx = np.divmod(np.flatnonzero(band), len(xs))
  sig = critical_sizes(shape, xs[xx][None, :] - cx[:, None], ys[yy][None, :] - cy[:, None])
  band_on = on[band]
  n, n_cuts = sig.shape[1], int(band_on.sum())
  if n_cuts == 0:
    return np.full(n_c, rs), np.full(n_c, -1.0), np.zeros(n_c)
  all_sorted = np.sort(sig, axis=1)  # [C, n]
  cuts = np.sort(sig[:, band_on], axis=1)  # [C, n_cuts]
  # One binary search for all rows: shift row c by c times a bound on the values.
  shift = (np.arange(n_c) * (2.0 * float(all_sorted[:, -1].max()) + 1.0))[:, None]
  below = np.searchsorted((all_sorted + shift).ravel(), (cuts + shift).ravel(), side="right")
  below = below.reshape(n_c, n_cuts) - np.arange(n_c)[:, None] * n  # band pixels with sig <= cut
  inter = on_core + np.arange(1, n_cuts + 1)[None, :]
  iou = inter / (n_core + below + total - inter)
  last_of_ties = np.concatenate([cuts[:, 1:] > cuts[:, :-1], np.ones((n_c, 1), bool)], 1)
  # The largest size the window holds: the shape reaches s/2 from its centre sideways (the star
  # 0.951 s/2 up and down), the window half a pixel beyond its outer pixel centres.
  room_x = np.minimum(cx - xs[0], xs[-1] - cx) + 0.5
  room_y = np.minimum(cy - ys[0], ys[-1] - cy) + 0.5
  aspect = _STAR_ASPECT if shape == "star" else 1.0
  cap = np.minimum(np.minimum(2.0 * room_x, 2.0 * room_y / aspect), rs + span)
  ok = last_of_ties & (cuts >= rs - span) & (cuts <= cap[:, None])
  iou = np.where(ok, iou, -1.0)
  k = np.argmax(iou, axis=1)
  rows = np.arange(n_c)
  lo = cuts[rows, k]
  after = below[rows, k]
  hi = np.where(after < n, all_sorted[rows, np.minimum(after, n - 1)], lo + 1.0)
  size = (lo + np.minimum(hi, np.maximum(cap, lo))) / 2  # pixels beyond the band stay outside
  gap = sig - size[:, None]
  cost = np.where(band_on, np.maximum(gap, 0.0), np.maximum(-gap, 0.0)).sum(axis=1)
  return size, iou[rows, k], cost


def fit_shape(shape: str, mask: np.ndarray, xs: np.ndarray, ys: np.ndarray,
              refine: bool = True) -> tuple[float, np.ndarray]:
  """Best IoU of `mask` with the exact mask of `shape`, over centre and size.

  For a fixed centre the best size is exact (`critical_sizes`), so only the centre is searched:
  a 3x3 grid of step 1/4 px around the centre implied by the mask's area and area centroid for
  this shape (a fraction of a pixel from the truth on a clean render; sizes within 25% of the
  area's), then, with `refine`, 5x5 grids of steps 1/8, 1/32 and 1/128 px, each around the best
  placement so far (sizes within 1 px + the centre's reach), stopping at IoU 1. The IoU
  returned is that of the exact rasterisation (`shape_masks`) at the chosen placement.
  Measured on clean masks of every shape at 7.5-36 px with random sub-pixel placement: IoU 1.0
  for most, >= 0.99 for all.

  Args:
    shape: one of `SHAPES`.
    mask: bool [H', W'], the object's pixels at the pixel centres (xs, ys); not empty.
    xs, ys: pixel-centre coordinates of the mask's columns and rows (image pixels: column
      + 0.5, consecutive), with a margin of background around the object.
    refine: screen only (False) or the full search (True).

  Returns:
    (iou, array (cx, cy, size) of the best placement).
  """
  rows, cols = np.nonzero(mask)
  size0 = math.sqrt(len(rows) / _AREA[shape])
  cx, cy = float(xs[cols].mean()), float(ys[rows].mean()) - _CENTROID_DY[shape] * size0
  # Rank by IoU, then by miss cost: the cost term is below half an IoU step (1 / union).
  tie = 0.5 / (mask.size + 1)
  best = (-np.inf, -1.0, cx, cy, size0)
  schedule = ((1, 1 / 4), (2, 1 / 8), (2, 1 / 32), (2, 1 / 128)) if refine else ((1, 1 / 4),)
  for stage, (reach, step) in enumerate(schedule):
    if best[1] >= 1.0:
      break
    offsets = np.arange(-reach, reach + 1) * step
    gx, gy = np.meshgrid(best[2] + offsets, best[3] + offsets, indexing="ij")
    gx, gy = gx.ravel(), gy.ravel()
    lipschitz_reach = _GAUGE_LIPSCHITZ[shape] * reach * step * math.sqrt(2.0)
    span = max(2.0, 0.25 * size0) if stage == 0 else 1.0 + lipschitz_reach
    sizes, ious, costs = _best_sizes(shape, mask, xs, ys, gx, gy, best[2:], span)
    keys = ious - tie * costs / (1.0 + costs)
    k = int(np.argmax(keys))
    if keys[k] > best[0]:
      best = (float(keys[k]), float(ious[k]), float(gx[k]), float(gy[k]), float(sizes[k]))
  params = np.array(best[2:])
  exact = shape_masks(shape, params[:1], params[1:2], params[2:3], xs, ys)
  return float(_ious(exact, mask)[0]), params


# --------------------------------------------------------------------------- outline evidence

def _inner_boundary(mask: np.ndarray) -> np.ndarray:
  """Pixels of `mask` with a 4-neighbour outside it (the array edge counts as outside)."""
  p = np.pad(mask, 1)
  core = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
  return mask & ~core


def edge_blend(pixels: np.ndarray, mask: np.ndarray, rgb: Sequence[float],
               bg: Sequence[float]) -> tuple[float, float]:
  """How an object's outline blends into the background: (fill, halo).

  A pixel's blend fraction is its position between the background (0) and the object's colour
  (1): the projection of (pixel - bg) onto (rgb - bg). `fill` is the mean blend fraction of the
  object's edge pixels (those with a 4-neighbour off the object), `halo` that of the pixels just
  outside it (its 8-neighbours). A clean render has fill 1 and halo 0, zero-mean noise keeps the
  means near those, and blur, an average-pooled mosaic or any soft outline puts blends on the
  edge (fill < 1) and around it (halo > 0).

  Args:
    pixels: uint8 [h, w, 3] window of the image around the object.
    mask: bool [h, w], the object's pixels in the window (with a pixel of room around them).
    rgb: the object's colour; bg: the background colour.

  Returns:
    (fill, halo); (0, 1) when undefined (colour equal to the background, nothing around).
  """
  bg = np.asarray(bg, np.float64)
  axis = np.asarray(rgb, np.float64) - bg
  norm2 = float(axis @ axis)
  p = np.pad(mask, 1)
  grown = np.zeros_like(mask)
  for dy in range(3):
    for dx in range(3):
      grown |= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
  ring = grown & ~mask
  edge = _inner_boundary(mask)
  if norm2 < 1.0 or not ring.any() or not edge.any():
    return 0.0, 1.0
  alpha = ((pixels.astype(np.float64) - bg) @ axis) / norm2
  return float(alpha[edge].mean()), float(alpha[ring].mean())


def block_size(mask: np.ndarray, box: Sequence[int]) -> int:
  """Largest b in 2, 4, 8, ... such that an object's outline runs on the image's b-px grid: its
  tight box (x1, y1, x2, y2) has corners on multiples of b and `mask` (bool, the object's pixels
  inside that box) is constant on every b x b block; 1 if none.

  That is the outline of average-pooled mosaics and patch-grid artefacts (a generator's latent
  patches); a clean ShapesWorld object has one only if it is a square whose four box
  coordinates happen to be multiples of b.
  """
  x1, y1, x2, y2 = (int(c) for c in box)
  best, b = 1, 2
  while b <= min(x2 - x1, y2 - y1):
    if x1 % b or y1 % b or x2 % b or y2 % b:
      break
    blocks = mask.reshape((y2 - y1) // b, b, (x2 - x1) // b, b)
    if not (blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3))).all():
      break
    best, b = b, 2 * b
  return best


def mosaic_block(image: np.ndarray) -> int:
  """Largest b in 2, 4, 8, ... such that `image` is exactly constant on every whole b x b block
  of a grid at some offset (an average-pooled, upsampled mosaic, shifted or not); 1 if none.

  A clean ShapesWorld render is such a mosaic only when all its objects are squares on one
  grid, and then they are pixel-perfect (sharpness 1).
  """
  img = np.asarray(image)
  h, w = img.shape[:2]
  best, b, offsets = 1, 2, [(0, 0), (0, 1), (1, 0), (1, 1)]
  while offsets and 2 * b <= min(h, w) + 1:
    found = []
    for oy, ox in offsets:
      ny, nx = (h - oy) // b, (w - ox) // b
      blocks = img[oy:oy + ny * b, ox:ox + nx * b].reshape(ny, b, nx, b, -1)
      if (blocks.max(axis=(1, 3)) == blocks.min(axis=(1, 3))).all():
        found.append((oy, ox))
    if not found:
      break
    best = b
    # A mosaic of 2b-blocks is also one of b-blocks, at the same offset modulo b.
    offsets = [(oy + dy, ox + dx) for oy, ox in found for dy in (0, b) for dx in (0, b)]
    b *= 2
  return best


# --------------------------------------------------------------------------- the detector

@dataclasses.dataclass(frozen=True)
class Component:
  """One foreground component and the detector's judgement of it (`ShapesDetector.analyze`).

  Attributes:
    box: tight (x1, y1, x2, y2), x2/y2 exclusive.
    area: number of pixels.
    color: palette colour name, or None when the colours are not coherent.
    color_distance: RGB distance of the median pixel to its nearest palette colour.
    color_purity: fraction of the pixels nearest to that palette colour.
    fill: mean blend fraction of the object's edge pixels, 1 on a clean render (`edge_blend`).
    halo: mean blend fraction of the pixels around the object, 0 on a clean render.
    block: size of the block grid the outline runs on, 1 if none (`block_size`,
      `mosaic_block`).
    shape: best-fitting shape (None if no fit was attempted).
    iou: IoU of the best fit (0 if none); the detection's score.
    runner_up: IoU of the second-best shape.
    edge_error: mismatched pixels per boundary pixel of the best fit.
    accepted: whether `detect` reports it.
    reason: "" when accepted, else why it was dropped.
  """
  box: tuple[int, int, int, int]
  area: int
  color: str | None
  color_distance: float
  color_purity: float
  fill: float
  halo: float
  block: int
  shape: str | None
  iou: float
  runner_up: float
  edge_error: float
  accepted: bool
  reason: str

  @property
  def sharpness(self) -> float:
    """fill - halo: 1 on a clean render, lower for blurred or blended outlines."""
    return self.fill - self.halo

  def detection(self) -> dict[str, Any]:
    """The `geneval.Detector` dict of this component."""
    return {"class": self.shape, "box": [int(c) for c in self.box], "score": float(self.iou),
            "color": self.color}


def _as_image(image: Any) -> np.ndarray:
  """uint8 [H, W, 3] from an RGB(A) or greyscale array with values in 0..255."""
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, -1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
    raise EvalInputError(f"image must be an RGB array [H, W, 3], got shape {arr.shape}")
  arr = arr[..., :3]
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                               or np.issubdtype(arr.dtype, np.floating)):
    raise EvalInputError(f"image must hold numbers in 0..255, got dtype {arr.dtype}")
  if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255:
    raise EvalInputError("image values must be finite and within 0..255")
  return np.rint(arr).astype(np.uint8)


def estimate_background(image: np.ndarray) -> np.ndarray:
  """Background RGB (float [3]) of an image: the mode of its 1-pixel border when that covers at
  least half of the border, else the per-channel median of the border."""
  img = _as_image(image)
  h, w = img.shape[:2]
  border = np.concatenate([img[0], img[h - 1], img[1:h - 1, 0], img[1:h - 1, w - 1]])
  keys = ((border[:, 0].astype(np.int64) << 16) | (border[:, 1].astype(np.int64) << 8)
          | border[:, 2].astype(np.int64))
  values, counts = np.unique(keys, return_counts=True)
  k = int(np.argmax(counts))
  if 2 * counts[k] >= len(keys):
    key = int(values[k])
    return np.array([key >> 16, (key >> 8) & 255, key & 255], np.float64)
  return np.median(border.astype(np.float64), axis=0)


class ShapesDetector:
  """GenEval `Detector` for ShapesWorld images of any size (see the module docstring).

  The module docstring gives each threshold's meaning, default and the measurements behind it.

  Args:
    min_size_px: floor, in pixels, of the minimum box side.
    min_size_frac: minimum box side as a fraction of min(H, W).
    max_size_frac: maximum box side as a fraction of min(H, W).
    background: "auto" (estimated per image) or an RGB triple, e.g. `palette.BACKGROUND_RGB`.
    iou_bar: minimum IoU of the best shape fit (the minimum reported score).
    margin: minimum lead of the best shape's IoU over the second best's.
    min_sharpness: minimum fill - halo of the outline.
    blocky_sharpness: minimum fill - halo of an outline on a block grid.
    edge_tolerance: maximum mismatched pixels per boundary pixel of the best fit.
    color_tolerance: maximum distance of the median pixel to its palette colour.
    color_purity: minimum fraction of the pixels nearest to that palette colour.
    min_purity: below this fraction the component mixes colours and is dropped.
    reject_border: drop components touching the image border.

  Example:
    det = ShapesDetector()
    dets = det.detect(image)   # [{"class", "box", "score", "color"}, ...]
    why = det.analyze(image)   # every component, accepted or with the reason it was dropped
  """

  name = "shapes"

  def __init__(self, *, min_size_px: float = 6.0, min_size_frac: float = 0.2,
               max_size_frac: float = 0.75, background: str | Sequence[float] = "auto",
               iou_bar: float = 0.98, margin: float = 0.03, min_sharpness: float = 0.85,
               blocky_sharpness: float = 0.95, edge_tolerance: float = 0.5,
               color_tolerance: float = 44.0, color_purity: float = 0.8,
               min_purity: float = 0.6, reject_border: bool = True):
    if isinstance(background, str):
      if background != "auto":
        raise ValueError(f"background must be 'auto' or an RGB triple, got {background!r}")
      self.background = None
    else:
      bg = np.asarray(background, np.float64).reshape(-1)
      if bg.shape != (3,):
        raise ValueError(f"background must be an RGB triple, got {background!r}")
      self.background = bg
    if not 0 < iou_bar <= 1:
      raise ValueError(f"iou_bar must be in (0, 1], got {iou_bar}")
    self.min_size_px = float(min_size_px)
    self.min_size_frac = float(min_size_frac)
    self.max_size_frac = float(max_size_frac)
    self.iou_bar = float(iou_bar)
    self.margin = float(margin)
    self.min_sharpness = float(min_sharpness)
    self.blocky_sharpness = float(blocky_sharpness)
    self.edge_tolerance = float(edge_tolerance)
    self.color_tolerance = float(color_tolerance)
    self.color_purity = float(color_purity)
    self.min_purity = float(min_purity)
    self.reject_border = bool(reject_border)

  def __repr__(self) -> str:
    bg = "auto" if self.background is None else tuple(self.background.tolist())
    return (f"ShapesDetector(min_size_px={self.min_size_px}, min_size_frac={self.min_size_frac}, "
            f"max_size_frac={self.max_size_frac}, background={bg!r}, iou_bar={self.iou_bar}, "
            f"margin={self.margin}, min_sharpness={self.min_sharpness}, "
            f"blocky_sharpness={self.blocky_sharpness}, edge_tolerance={self.edge_tolerance}, "
            f"color_tolerance={self.color_tolerance}, color_purity={self.color_purity}, "
            f"min_purity={self.min_purity}, "
            f"reject_border={self.reject_border})")

  # ------------------------------------------------------------------------- public API

  def detect(self, image: np.ndarray) -> list[dict[str, Any]]:
    """The objects of one image as `geneval.Detector` dicts `{"class", "box", "score", "color"}`.

    Args:
      image: RGB uint8 [H, W, 3] (greyscale, RGBA or other numbers in 0..255 are converted).

    Returns:
      One dict per accepted component, in raster order of the components' first pixels: `box`
      the tight [x1, y1, x2, y2] (x2/y2 exclusive, ints), `score` the shape-fit IoU
      (>= `iou_bar`; 1.0 on clean renders), `color` a palette colour name or None.

    Raises:
      EvalInputError: if `image` is not an image array.
    """
    return [c.detection() for c in self.analyze(image) if c.accepted]

  def detect_batch(self, images: Iterable[np.ndarray]) -> list[list[dict[str, Any]]]:
    """`detect` on each image of a [B, H, W, 3] array or of an iterable of images."""
    return [self.detect(image) for image in images]

  def analyze(self, image: np.ndarray) -> list[Component]:
    """Every foreground component of `image` with the detector's judgement of it."""
    img = _as_image(image)
    h, w = img.shape[:2]
    bg = estimate_background(img) if self.background is None else self.background
    # Palette colours within `color_tolerance` of the background cannot be told from it.
    palette = sw_palette.PALETTE.astype(np.float64)
    keep = np.linalg.norm(palette - bg, axis=1) > self.color_tolerance
    names = [c for c, k in zip(COLORS, keep) if k]
    table = np.concatenate([bg[None], palette[keep]]).astype(np.float32)  # row 0: background
    flat = img.reshape(-1, 3).astype(np.float32)
    nearest = np.empty(h * w, np.int64)
    for s in range(0, h * w, _PIXELS_PER_CHUNK):
      d = ((flat[s:s + _PIXELS_PER_CHUNK, None, :] - table) ** 2).sum(-1)
      nearest[s:s + _PIXELS_PER_CHUNK] = np.argmin(d, axis=1)
    nearest = nearest.reshape(h, w)
    labels, n = label_components(nearest > 0)
    if n == 0:
      return []
    mosaic = mosaic_block(img)
    side = min(h, w)
    min_side = max(self.min_size_px, self.min_size_frac * side)
    max_side = self.max_size_frac * side
    lab = labels.ravel()
    on = np.flatnonzero(lab)
    order = on[np.argsort(lab[on], kind="stable")]  # pixels grouped by component
    ends = np.cumsum(np.bincount(lab[on], minlength=n + 1)[1:])
    out, start = [], 0
    for k in range(n):
      pixels = order[start:ends[k]]
      start = ends[k]
      rows, cols = pixels // w, pixels % w
      box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
      out.append(self._judge(img, nearest, names, bg, mosaic, rows, cols, box, min_side,
                             max_side))
    return out

  # ------------------------------------------------------------------------- internals

  def _judge(self, img, nearest, names, bg, mosaic, rows, cols, box, min_side,
             max_side) -> Component:
    h, w = img.shape[:2]
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    info: dict[str, Any] = dict(box=box, area=int(len(rows)), color=None,
                                color_distance=math.nan, color_purity=math.nan, fill=math.nan,
                                halo=math.nan, block=1, shape=None, iou=0.0, runner_up=0.0,
                                edge_error=math.nan)
    if min(bw, bh) < min_side:
      return Component(**info, accepted=False,
                       reason=f"too small: box {bw}x{bh} px, sides must be >= {min_side:g} px")
    color, distance, purity, rgb = self._color(img, nearest, names, bg, rows, cols)
    info.update(color=color, color_distance=distance, color_purity=purity)
    if max(bw, bh) > max_side:
      return Component(**info, accepted=False,
                       reason=f"too large: box {bw}x{bh} px, sides must be <= {max_side:g} px")
    if self.reject_border and (x1 == 0 or y1 == 0 or x2 == w or y2 == h):
      return Component(**info, accepted=False, reason="touches the image border")
    # The component in a window with 3 px of room around its box.
    r0, r1 = max(y1 - 3, 0), min(y2 + 3, h)
    c0, c1 = max(x1 - 3, 0), min(x2 + 3, w)
    window = np.zeros((r1 - r0, c1 - c0), bool)
    window[rows - r0, cols - c0] = True
    fill, halo = edge_blend(img[r0:r1, c0:c1], window, rgb, bg)
    block = max(block_size(window[y1 - r0:y2 - r0, x1 - c0:x2 - c0], box), mosaic)
    info.update(fill=fill, halo=halo, block=block)
    # Fitted at every pixel, whatever the image size: a coarser grid would hide a blocky
    # outline (a disc drawn in 4-px blocks, sampled every 4 px, is a perfect disc).
    xs = np.arange(c0, c1, dtype=np.float64) + 0.5
    ys = np.arange(r0, r1, dtype=np.float64) + 0.5
    screen = {s: fit_shape(s, window, xs, ys, refine=False) for s in SHAPES}
    # Refine the shapes that may reach the bar (refining adds a few IoU points at most).
    fits = {s: (fit_shape(s, window, xs, ys) if iou >= self.iou_bar - 0.15 else (iou, params))
            for s, (iou, params) in screen.items()}
    ranked = sorted(SHAPES, key=lambda s: -fits[s][0])
    shape, (iou, params) = ranked[0], fits[ranked[0]]
    runner_up = fits[ranked[1]][0]
    fitted = shape_masks(shape, params[:1], params[1:2], params[2:3], xs, ys)[0]
    outline = max(np.count_nonzero(_inner_boundary(fitted)), 1)
    edge_error = np.count_nonzero(fitted ^ window) / outline
    info.update(shape=shape, iou=float(iou), runner_up=float(runner_up),
                edge_error=float(edge_error))
    sharpness = fill - halo
    reason = ""
    if block > 1 and (sharpness < self.blocky_sharpness or iou < 1.0):
      reason = (f"patch-grid artefact: outline on a {block}-px block grid, not a pixel-exact "
                f"sharp shape (best {shape} IoU {iou:.3f}, sharpness {sharpness:.2f}; needs 1 "
                f"and >= {self.blocky_sharpness:g})")
    elif sharpness < self.min_sharpness:
      reason = (f"soft edge (blur, blended blocks or a halo): sharpness {sharpness:.2f} < "
                f"{self.min_sharpness:g}")
    elif not purity >= self.min_purity:  # NaN (no usable palette colour) fails too
      reason = (f"mixed colours: only {purity:.0%} of the pixels are nearest to the main palette "
                f"colour (< {self.min_purity:.0%})")
    elif iou < self.iou_bar:
      reason = f"no shape fits: best {shape} IoU {iou:.3f} < {self.iou_bar:g}"
    elif iou - runner_up < self.margin:
      reason = (f"ambiguous: {shape} IoU {iou:.3f}, {ranked[1]} {runner_up:.3f} "
                f"(margin < {self.margin:g})")
    elif edge_error > self.edge_tolerance:
      reason = (f"irregular outline: {edge_error:.2f} mismatched pixels per boundary pixel of the "
                f"{shape} > {self.edge_tolerance:g}")
    return Component(**info, accepted=not reason, reason=reason)

  def _color(self, img, nearest, names, bg, rows, cols):
    """Colour of a component: (name or None, distance of the median pixel to its nearest palette
    colour, purity, reference RGB for `edge_blend`).

    The reference is the palette colour of which the median pixel is a blend with the
    background (the colour itself for a clean object, so that a blended block reads as a
    partial blend), or the median itself when it is no such blend (an off-palette colour, judged
    on its own).
    """
    median = np.median(img[rows, cols].astype(np.float64), axis=0)
    if not names:
      return None, math.nan, math.nan, median
    table = np.array([sw_palette.COLOR_RGB[c] for c in names], np.float64)
    d = np.linalg.norm(table - median, axis=1)
    k = int(np.argmin(d))
    purity = float(np.mean(nearest[rows, cols] == k + 1))
    coherent = d[k] <= self.color_tolerance and purity >= self.color_purity
    axes = table - bg
    alpha = np.clip(((median - bg) @ axes.T) / np.einsum("ij,ij->i", axes, axes), 0.0, 1.0)
    residual = np.linalg.norm(median - bg - alpha[:, None] * axes, axis=1)
    j = int(np.argmin(residual))
    reference = table[j] if residual[j] <= self.color_tolerance / 2 else median
    return (names[k] if coherent else None), float(d[k]), purity, reference


DETECTORS = {"shapes": ShapesDetector}


def make_detector(name: str, **kwargs: Any):
  """A detector by name ("shapes"), built with `kwargs`.

  Raises:
    EvalInputError: for an unknown name (the message lists the known ones).
  """
  if name not in DETECTORS:
    raise EvalInputError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
  return DETECTORS[name](**kwargs)
