"""Pixel geometry of the `shapes` GenEval detector (detectors.py): connected components, exact
ShapesWorld shape fitting, and outline evidence (edge blending, block grids, mosaics). Numpy only.

  labels, n = label_components(mask)               # 8-connected components, scipy's numbering
  iou, (cx, cy, size) = fit_shape("circle", window, xs, ys)   # best exact rasterisation
  fill, halo = edge_blend(pixels, mask, rgb, background)      # 1 and 0 on a clean render

The detector's algorithm and thresholds are documented in detectors.py.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from jaxmodels.shapes_world import shapes as sw_shapes

SHAPES: tuple[str, ...] = sw_shapes.SHAPES
_CROSS_THICKNESS = 1.0 / 3.0  # bar thickness / size of the cross (shapes.py)
shape_masks = sw_shapes.shape_masks   # the renderer's exact rasterisation, batched
_STAR_UNIT = sw_shapes.star_vertices((0.0, 0.0), 1.0)  # [10, 2]; its box is centred on (0, 0)
_STAR_ASPECT = float(np.ptp(_STAR_UNIT[:, 1]))  # height / width of the star (~0.951)


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
