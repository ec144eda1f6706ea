"""The `shapes` GenEval detector (jaxmodels/evals/detectors.py): exact on clean ShapesWorld
renders, strict on degraded ones (noise, blur, mosaics, blobs, patch grids)."""
import functools
import json

import numpy as np
import pytest

from jaxmodels.shapes_world import generator
from jaxmodels.shapes_world import layout
from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world.render import mask_box
from jaxmodels.shapes_world.render import render
from jaxmodels.shapes_world.render import render_with_masks
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.shapes_world.scene import SceneObject
from jaxmodels.evals import EvalInputError
from jaxmodels.evals import detectors
from jaxmodels.evals import geneval

DET = detectors.ShapesDetector()
BG = np.array(palette.BACKGROUND_RGB, np.uint8)


# --------------------------------------------------------------------------- helpers

@functools.lru_cache(maxsize=None)
def _examples(size: int, n: int) -> tuple:
  """The first n examples of a generated test split of n (all six GenEval tags)."""
  schedule = generator.tag_schedule(n, grouped=True)
  return tuple(generator.generate_example("test", i, num_examples=n, image_size=size,
                                          schedule=schedule) for i in range(n))


@functools.lru_cache(maxsize=None)
def _shape_colour_scenes(size: int) -> tuple:
  """60 renders covering every (shape, colour) pair, 1 to 4 objects each."""
  rng = np.random.default_rng(size)
  pairs = [(s, c) for s in shapes.SHAPES for c in palette.COLORS]
  out, k = [], 0
  while k < len(pairs):
    n = 1 + len(out) % 4
    specs = pairs[k:k + n]
    scene = layout.place(rng, specs, image_size=size)
    assert scene is not None
    out.append((scene, render_with_masks(scene, size)))
    k += n
  return tuple(out)


def _truth(scene: Scene, rendering) -> list:
  return sorted((o.shape, o.color, tuple(int(v) for v in b))
                for o, b in zip(scene.objects, rendering.boxes))


def _found(dets: list) -> list:
  return sorted((d["class"], d["color"], tuple(d["box"])) for d in dets)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
  r = int(3 * sigma + 0.5)
  k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma ** 2))
  k /= k.sum()
  f = img.astype(np.float64)
  for axis in (0, 1):
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    p = np.pad(f, pad, mode="edge")
    f = sum(k[i] * np.take(p, np.arange(i, i + f.shape[axis]), axis=axis) for i in range(2 * r + 1))
  return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def _mosaic(img: np.ndarray, b: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
  """Average-pool b x b blocks then upsample (nearest); the grid shifted by `shift` (y, x)."""
  x = np.roll(img, shift, (0, 1)).astype(np.float64)
  h, w, _ = x.shape
  pooled = x.reshape(h // b, b, w // b, b, 3).mean((1, 3))
  up = np.rint(pooled).astype(np.uint8).repeat(b, 0).repeat(b, 1)
  return np.roll(up, (-shift[0], -shift[1]), (0, 1))


def _gaussian_noise(img: np.ndarray, sigma: float, rng) -> np.ndarray:
  return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _uniform_noise(img: np.ndarray, amplitude: int, rng) -> np.ndarray:
  noise = rng.integers(-amplitude, amplitude + 1, img.shape)
  return np.clip(img.astype(np.int64) + noise, 0, 255).astype(np.uint8)


def _box_iou(a, b) -> float:
  ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _assert_no_wrong_shape(dets: list, scene: Scene, rendering, what: str) -> int:
  """Every detection a GenEval rule would keep (score > 0.3) sits on a true object of the same
  class (box IoU > 0.5), at most one per object. Returns how many there were."""
  kept = [d for d in dets if d["score"] > 0.3]
  used = set()
  for d in kept:
    ious = [_box_iou(d["box"], b) for b in rendering.boxes]
    j = int(np.argmax(ious))
    assert ious[j] > 0.5 and d["class"] == scene.objects[j].shape and j not in used, (
        f"{what}: confident wrong detection {d}; truth {_truth(scene, rendering)}")
    used.add(j)
  return len(kept)


def _disc(img: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
  h, w = img.shape[:2]
  yy, xx = np.mgrid[:h, :w] + 0.5
  return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# --------------------------------------------------------------------------- building blocks

def test_shape_masks_and_critical_sizes_match_the_renderer():
  rng = np.random.default_rng(0)
  xs = np.arange(40) + 0.5
  for t in range(120):
    shape = shapes.SHAPES[t % 6]
    cx, cy, size = rng.uniform(15, 25), rng.uniform(15, 25), rng.uniform(3, 30)
    ref = shapes.shape_mask(shape, (cx, cy), size, 40, 40)
    np.testing.assert_array_equal(detectors.shape_masks(shape, [cx], [cy], [size], xs, xs)[0], ref)
    sig = detectors.critical_sizes(shape, xs[None, :] - cx, xs[:, None] - cy)
    np.testing.assert_array_equal(sig <= size, ref)


def test_fit_shape_is_exact_on_clean_masks_and_separates_shapes():
  rng = np.random.default_rng(1)
  for t in range(36):
    shape = shapes.SHAPES[t % 6]
    size = rng.uniform(7.5, 30)
    mask = shapes.shape_mask(shape, (rng.uniform(20, 22), rng.uniform(20, 22)), size, 44, 44)
    box = mask_box(mask)
    r0, r1, c0, c1 = box[1] - 3, box[3] + 3, box[0] - 3, box[2] + 3
    xs, ys = np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5
    ious = {s: detectors.fit_shape(s, mask[r0:r1, c0:c1], xs, ys)[0] for s in shapes.SHAPES}
    assert ious[shape] >= 0.99, (shape, size, ious)
    assert max(v for s, v in ious.items() if s != shape) < 0.95, (shape, size, ious)


def test_label_components_matches_a_flood_fill():
  def flood(mask, conn):
    h, w = mask.shape
    lab = np.zeros((h, w), int)
    n = 0
    nbrs = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if conn == 8:
      nbrs += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    for i in range(h):
      for j in range(w):
        if mask[i, j] and not lab[i, j]:
          n += 1
          stack = [(i, j)]
          lab[i, j] = n
          while stack:
            y, x = stack.pop()
            for dy, dx in nbrs:
              yy, xx = y + dy, x + dx
              if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not lab[yy, xx]:
                lab[yy, xx] = n
                stack.append((yy, xx))
    return lab, n

  rng = np.random.default_rng(2)
  for t in range(20):
    mask = rng.random((17, 23)) < (0.2 + 0.03 * t)
    for conn in (4, 8):
      got, n = detectors.label_components(mask, conn)
      want, m = flood(mask, conn)
      assert n == m
      np.testing.assert_array_equal(got, want)
  assert detectors.label_components(np.zeros((5, 5), bool))[1] == 0


# --------------------------------------------------------------------------- clean renders

@pytest.mark.parametrize("size", [32, 64])
def test_exact_on_clean_generated_scenes(size):
  exs = _examples(size, 60)
  seen_shapes, seen_colors, max_count = set(), set(), 0
  for ex in exs:
    dets = DET.detect(ex.image)
    assert _found(dets) == _truth(ex.scene, ex.rendering), ex.record["prompt"]
    assert all(d["score"] == 1.0 for d in dets)
    seen_shapes |= {o.shape for o in ex.scene.objects}
    seen_colors |= {o.color for o in ex.scene.objects}
    max_count = max(max_count, len(ex.scene.objects))
  assert seen_shapes == set(shapes.SHAPES) and seen_colors == set(palette.COLORS)
  assert max_count == 4


@pytest.mark.parametrize("size", [32, 64])
def test_exact_on_every_shape_colour_pair(size):
  for scene, rendering in _shape_colour_scenes(size):
    assert _found(DET.detect(rendering.image)) == _truth(scene, rendering)


def test_exact_on_large_renders():
  for i in (3, 40):
    ex = generator.generate_example("test", i, num_examples=60, image_size=256)
    assert _found(DET.detect(ex.image)) == _truth(ex.scene, ex.rendering)


def test_geneval_end_to_end_on_clean_renders(tmp_path):
  n = 60
  records = generator.geneval_prompt_set(n, image_size=64)
  exs = _examples(64, n)
  assert [ex.record for ex in exs] == records
  assert {r["tag"] for r in records} == set(geneval.TAGS)
  for ex in exs:
    ok, reason = geneval.evaluate_detections(ex.record, DET.detect(ex.image))
    assert ok, (ex.record["prompt"], reason)
  # Through the official folder layout and the scorer, two images per prompt.
  meta = tmp_path / "evaluation_metadata.jsonl"
  meta.write_text("".join(json.dumps(r) + "\n" for r in records[::6]))
  rng = np.random.default_rng(3)
  for k, ex in enumerate(exs[::6]):
    geneval.write_prompt_images(tmp_path / "images", k, ex.record,
                                [ex.image, _uniform_noise(ex.image, 10, rng)])
  out = geneval.score_folder(tmp_path / "images", meta, DET, images_per_prompt=2, progress=False)
  assert out["summary"]["correct_images"] == 1.0 and out["summary"]["overall"] == 1.0


@pytest.mark.parametrize("size", [32, 64])
def test_mild_noise_still_detects_exactly(size):
  rng = np.random.default_rng(size)
  for ex in _examples(size, 60)[::2]:
    noisy = _uniform_noise(ex.image, 10, rng)
    assert _found(DET.detect(noisy)) == _truth(ex.scene, ex.rendering), ex.record["prompt"]


# --------------------------------------------------------------------------- degraded renders

DEGRADATIONS = {
    "gaussian noise sigma 20": lambda im, rng: _gaussian_noise(im, 20, rng),
    "blur sigma 1": lambda im, rng: _blur(im, 1.0),
    "blur sigma 0.6": lambda im, rng: _blur(im, 0.6),
    "4x4 mosaic": lambda im, rng: _mosaic(im, 4),
    "8x8 mosaic": lambda im, rng: _mosaic(im, 8),
    "shifted 4x4 mosaic": lambda im, rng: _mosaic(im, 4, (1, 2)),
    "shifted 8x8 mosaic": lambda im, rng: _mosaic(im, 8, (3, 5)),
    "4x4 mosaic + mild noise": lambda im, rng: _uniform_noise(_mosaic(im, 4, (2, 1)), 10, rng),
}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_degraded_renders_give_no_confident_wrong_shape(name, size):
  rng = np.random.default_rng(size)
  for ex in _examples(size, 60)[::2]:
    degraded = DEGRADATIONS[name](ex.image, rng)
    dets = DET.detect(degraded)
    _assert_no_wrong_shape(dets, ex.scene, ex.rendering, name)
    # A prompt for a shape the scene does not have is never satisfied.
    absent = [s for s in ("square", "circle") if s not in {o.shape for o in ex.scene.objects}]
    for s in absent:
      record = {"tag": "single_object", "include": [{"class": s, "count": 1}]}
      assert not geneval.evaluate_detections(record, dets)[0], (name, s)


def test_blur_and_mosaics_are_rejected_outright():
  # The rules that make the test above pass: soft or blocky outlines never pass.
  for ex in _examples(64, 60)[:20]:
    for image in (_blur(ex.image, 1.0), _mosaic(ex.image, 4), _mosaic(ex.image, 8, (3, 5))):
      assert DET.detect(image) == []


def test_random_blobs_are_not_shapes():
  rng = np.random.default_rng(4)
  circle = {"tag": "single_object", "include": [{"class": "circle", "count": 1}]}
  for t in range(40):
    size = (32, 64)[t % 2]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BG
    colour = palette.PALETTE[t % 10]
    c = rng.uniform(0.4, 0.6, 2) * size
    r = rng.uniform(0.09, 0.13) * size
    mask = np.zeros((size, size), bool)
    if t % 4 < 2:  # peanut or trefoil: 2-3 equal discs around a centre
      k = 2 + t % 2
      for a in rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(k) / k:
        mask |= _disc(img, c[0] + 0.8 * r * np.cos(a), c[1] + 0.8 * r * np.sin(a), r)
    else:  # a random walk of small discs
      p = c.copy()
      for _ in range(8):
        mask |= _disc(img, p[0], p[1], 0.45 * r)
        p += rng.normal(0, 0.35 * r, 2)
    img[mask] = colour
    dets = DET.detect(img)
    assert dets == [], (t, dets)
    assert not geneval.evaluate_detections(circle, dets)[0]
    noisy = _gaussian_noise(img, 12, rng)
    assert DET.detect(noisy) == []


def test_patch_grids_and_blocky_artefacts_are_not_shapes():
  rng = np.random.default_rng(5)
  for size, patch in ((32, 8), (64, 16), (64, 8), (64, 4)):
    for _ in range(5):
      ids = rng.integers(10, size=(size // patch, size // patch))
      grid = palette.PALETTE[ids].repeat(patch, 0).repeat(patch, 1)
      assert DET.detect(grid) == []
  # A 3x3 checkerboard of 8-px patches on the background, aligned and shifted off the grid.
  for (y, x) in ((16, 16), (13, 19)):
    for a, b in ((0, 4), (0, 1), (5, 6)):
      img = np.empty((64, 64, 3), np.uint8)
      img[:] = BG
      for i in range(3):
        for j in range(3):
          colour = palette.PALETTE[(a, b)[(i + j) % 2]]
          img[y + 8 * i:y + 8 * i + 8, x + 8 * j:x + 8 * j + 8] = colour
      assert DET.detect(img) == [], ((y, x), (a, b))
  # Discs drawn in b-px blocks (pure colour, a staircase outline): not circles.
  for size, diameter, b in ((64, 24, 4), (64, 30, 2), (128, 60, 4), (256, 120, 2)):
    img = np.empty((size, size, 3), np.uint8)
    img[:] = BG
    yy, xx = (np.mgrid[:size // b, :size // b] + 0.5) * b
    blocks = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (diameter / 2) ** 2
    img[blocks.repeat(b, 0).repeat(b, 1)] = palette.COLOR_RGB["red"]
    assert DET.detect(img) == [], (size, diameter, b)


def test_uniform_and_empty_images_have_no_detections():
  for size in (1, 8, 32, 64):
    for rgb in [BG, palette.PALETTE[0], palette.PALETTE[8], palette.PALETTE[9]]:
      assert DET.detect(np.broadcast_to(rgb, (size, size, 3)).copy()) == []


def test_small_border_and_mixed_components_are_dropped_with_reasons():
  img = np.empty((64, 64, 3), np.uint8)
  img[:] = BG
  img[30:34, 30:34] = palette.COLOR_RGB["red"]  # 4 px: too small
  img[0:20, 44:64] = palette.COLOR_RGB["blue"]  # a square cut by the border
  img[43:59, 5:13] = palette.COLOR_RGB["green"]  # a 16x16 square, half green half yellow
  img[43:59, 13:21] = palette.COLOR_RGB["yellow"]
  reasons = sorted(c.reason.split(":")[0] for c in DET.analyze(img))
  assert reasons == ["mixed colours", "too small", "touches the image border"]
  assert DET.detect(img) == []


def test_off_palette_colour_gives_no_colour_name():
  scene = Scene((SceneObject("square", "blue", (0.5, 0.5), 0.4),))
  img = render(scene, 64)
  img[np.all(img == palette.COLOR_RGB["blue"], -1)] = (0, 200, 200)  # cyan: no palette colour
  (det,) = DET.detect(img)
  assert det["class"] == "square" and det["color"] is None
  record = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}]}
  assert not geneval.evaluate_detections(record, [det])[0]


# --------------------------------------------------------------------------- API

def test_detect_batch_inputs_and_factory():
  exs = _examples(32, 60)[:4]
  batch = np.stack([ex.image for ex in exs])
  want = [DET.detect(ex.image) for ex in exs]
  assert DET.detect_batch(batch) == want
  assert DET.detect_batch(iter([ex.image for ex in exs])) == want
  assert DET.detect(exs[0].image.astype(np.float32)) == want[0]
  rgba = np.concatenate([exs[0].image, np.full((32, 32, 1), 255, np.uint8)], -1)
  assert DET.detect(rgba) == want[0]
  assert detectors.ShapesDetector(background=palette.BACKGROUND_RGB).detect(exs[0].image) == want[0]
  assert isinstance(detectors.make_detector("shapes"), detectors.ShapesDetector)
  with pytest.raises(EvalInputError, match="unknown detector"):
    detectors.make_detector("yolo")
  with pytest.raises(EvalInputError, match="shape"):
    DET.detect(np.zeros((4, 4, 3, 1), np.uint8))
  with pytest.raises(EvalInputError, match="0..255"):
    DET.detect(np.full((4, 4, 3), 300.0))
  with pytest.raises(ValueError, match="background"):
    detectors.ShapesDetector(background="grey")
