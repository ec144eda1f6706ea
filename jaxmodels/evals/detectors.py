"""GenEval detectors behind the `geneval.Detector` interface; here `shapes`, for ShapesWorld.

`ShapesDetector` finds the objects of a ShapesWorld image (jaxmodels/shapes_world): flat
circles, squares, triangles, diamonds, stars and crosses in the 10 GenEval colours on a flat grey
background, at any resolution. It is exact on clean renders (every object, with its class, colour
and mmdetection-style tight box, score 1.0) and strict on generated images: an object is reported
only when its pixels are, up to mild noise, those of a ShapesWorld render of one shape, so a blocky
patch-grid artefact, a mosaic, a blob, noise or blur does not pass as a square or a circle.
Numpy only (no scipy, no torch); the pixel geometry (components, exact shape fits, outline
evidence) lives in jaxmodels/shapes_world/shape_fit.py and is re-exported here.

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
  >>> from jaxmodels.shapes_world import Scene, SceneObject, render
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

from jaxmodels.shapes_world import palette as sw_palette
from jaxmodels.shapes_world import shapes as sw_shapes
from jaxmodels.evals import EvalInputError
from jaxmodels.shapes_world.shape_fit import (_inner_boundary, block_size, critical_sizes,  # noqa: F401
                                       edge_blend, fit_shape, label_components, mosaic_block,
                                       shape_masks)

SHAPES: tuple[str, ...] = sw_shapes.SHAPES
COLORS: tuple[str, ...] = sw_palette.COLORS
_PIXELS_PER_CHUNK = 1 << 16  # nearest-colour lookup in chunks (memory bound on large images)


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


def _hf_detector(**kwargs: Any):
  from jaxmodels.evals.hf_detector import HFDetector  # torch + transformers, loaded on demand
  return HFDetector(**kwargs)


DETECTORS = {"shapes": ShapesDetector, "hf": _hf_detector}


def make_detector(name: str, **kwargs: Any):
  """A detector by name: "shapes", or "hf" (`hf_detector.HFDetector`: detector_dir, clip_dir,
  ...), built with `kwargs`.

  Raises:
    EvalInputError: for an unknown name (the message lists the known ones).
  """
  if name not in DETECTORS:
    raise EvalInputError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
  return DETECTORS[name](**kwargs)
