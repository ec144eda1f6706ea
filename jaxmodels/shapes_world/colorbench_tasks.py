"""ShapesWorld's ColorBench-style task images: one maker per ColorBench task, and the robustness
recolourings. Each maker draws (image uint8 [S, S, 3], question, choices, answer text) from a numpy
Generator, or None when the draw breaks a rule (the caller retries with the next draw); every answer
follows from how the image was built (the table in jaxmodels/evals/shapes_colorbench.py, which turns
the items into official-schema rows). Numpy only.

    item = MAKERS["Color Illusion"](np.random.default_rng(0), 32)
    image, question, choices, answer = item      # "Which circle is lighter in color?", ..., "The left one"
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxmodels.shapes_world import layout, palette, shapes
from jaxmodels.shapes_world.render import render_with_masks
from jaxmodels.shapes_world.scene import Scene

TASKS: dict[str, str] = {
    "Color Recognition": "Perception", "Color Extraction": "Perception",
    "Object Recognition": "Perception", "Color Proportion": "Reasoning",
    "Color Comparison": "Reasoning", "Color Counting": "Reasoning", "Object Counting": "Reasoning",
    "Color Illusion": "Reasoning", "Color Mimicry": "Reasoning", "Color Blindness": "Reasoning",
    "Color Robustness": "Robustness"}
PROPORTION_BINS = ((0.0, 0.05, "less than 5%"), (0.05, 0.10, "5% to 10%"),
                   (0.10, 0.20, "10% to 20%"), (0.20, 0.30, "20% to 30%"),
                   (0.30, 1.01, "more than 30%"))
REGIONS = ("entire", "target", "largest")
HUE_SHIFTS = (90, 180, 270)
# Figure / ground dot colours of the plates: pairs confusable under red-green or blue-yellow
# colour blindness, of similar luminance.
PLATE_PAIRS = (((205, 105, 70), (125, 150, 70)), ((215, 90, 110), (110, 145, 95)),
               ((90, 120, 210), (150, 110, 170)))


def hue_rotate(image: np.ndarray, degrees: float, mask: np.ndarray | None = None) -> np.ndarray:
  """Rotates the HSV hue of uint8 [H, W, 3] pixels (those in bool `mask` [H, W], else all)."""
  x = image.astype(np.float64) / 255.0
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  mx, mn = x.max(-1), x.min(-1)
  delta = mx - mn
  safe = np.where(delta > 0, delta, 1.0)
  h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2,
                                                        (r - g) / safe + 4))
  h = np.where(delta > 0, (h * 60.0 + degrees) % 360.0, 0.0)
  s = np.where(mx > 0, delta / np.where(mx > 0, mx, 1.0), 0.0)
  v = mx
  c = v * s
  hp = h / 60.0
  xx = c * (1 - np.abs(hp % 2 - 1))
  zero = np.zeros_like(c)
  sector = np.floor(hp).astype(int) % 6
  table = [(c, xx, zero), (xx, c, zero), (zero, c, xx), (zero, xx, c), (xx, zero, c),
           (c, zero, xx)]
  out = np.zeros_like(x)
  for k, (rr, gg, bb) in enumerate(table):
    sel = sector == k
    out[sel] = np.stack([rr[sel], gg[sel], bb[sel]], -1)
  out = np.rint((out + (v - c)[..., None]) * 255.0).clip(0, 255).astype(np.uint8)
  if mask is None:
    return out
  return np.where(np.asarray(mask, bool)[..., None], out, image)


def _pick(rng, pool: Sequence, k: int = 1, exclude=()) -> list:
  pool = [p for p in pool if p not in exclude]
  return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]


def _with(rng, answer: str, pool: Sequence[str], k: int = 4) -> list[str]:
  return [answer] + _pick(rng, pool, k - 1, exclude=(answer,))


def _numbers(rng, answer: int, k: int = 4) -> list[str]:
  pick = _pick(rng, [n for n in range(6) if n != answer], k - 1)
  return [str(n) for n in sorted(pick + [answer])]


def _scene(rng, specs, size: int, background=palette.BACKGROUND_RGB) -> tuple[Scene, object]:
  scene = layout.place(rng, specs, image_size=size)
  if scene is None:
    return None, None
  scene = Scene(scene.objects, tuple(background))
  return scene, render_with_masks(scene, size)


def _proportion_label(frac: float) -> str | None:
  for lo, hi, label in PROPORTION_BINS:
    if lo <= frac < hi:
      near = min(frac - lo, hi - frac) < 0.01 and not (lo == 0.0 and frac < 0.04)
      return None if near else label
  return None


# --------------------------------------------------------------------------- one item per task
# Each maker returns (image uint8 [S, S, 3], question, choices, answer text) or None (retry).

def _recognition(rng, size):
  shape_list = _pick(rng, shapes.SHAPES, int(rng.integers(1, 4)))
  scene, r = _scene(rng, [(s, _pick(rng, palette.COLORS)[0]) for s in shape_list], size)
  if scene is None:
    return None
  o = scene.objects[int(rng.integers(len(scene)))]
  return r.image, f"What color is the {o.shape}?", _with(rng, o.color, palette.COLORS), o.color


def _extraction(rng, size):
  item = _recognition(rng, size)
  if item is None:
    return None
  image, question, _, color = item
  fmt = lambda v: "[" + ", ".join(str(int(c)) for c in v) + "]"  # noqa: E731
  rgb = np.array(palette.COLOR_RGB[color])
  choices = {fmt(rgb)}
  while len(choices) < 4:
    delta = rng.choice([-1, 1], size=3) * rng.integers(40, 90, size=3) * (rng.random(3) < 0.7)
    choices.add(fmt(np.clip(rgb + delta, 0, 255)))
  shape = question.split("the ")[1].rstrip("?")
  return image, f"What is the RGB value of the {shape}?", sorted(choices), fmt(rgb)


def _object_recognition(rng, size):
  colors = _pick(rng, palette.COLORS, int(rng.integers(1, 4)))
  scene, r = _scene(rng, [(_pick(rng, shapes.SHAPES)[0], c) for c in colors], size)
  if scene is None:
    return None
  o = scene.objects[int(rng.integers(len(scene)))]
  return r.image, f"Which shape is {o.color}?", _with(rng, o.shape, shapes.SHAPES), o.shape


def _proportion(rng, size):
  n = int(rng.integers(1, 5))
  scene, r = _scene(rng, [(_pick(rng, shapes.SHAPES)[0], _pick(rng, palette.COLORS)[0])
                          for _ in range(n)], size)
  if scene is None:
    return None
  color = scene.objects[int(rng.integers(n))].color
  frac = float(np.all(r.image == palette.COLOR_RGB[color], -1).mean())
  label = _proportion_label(frac)
  if label is None:
    return None
  return (r.image, f"What percentage of the image is {color}?", [b[2] for b in PROPORTION_BINS],
          label)


def _comparison(rng, size):
  n = int(rng.integers(3, 5))
  colors = _pick(rng, [c for c in palette.COLORS if c not in ("black", "white")], n)
  lum = palette.luminance([palette.COLOR_RGB[c] for c in colors])
  if np.min(np.diff(np.sort(lum))) < 20:  # keep the order of lightness unmistakable
    return None
  shape_list = _pick(rng, shapes.SHAPES, n)
  scene, r = _scene(rng, list(zip(shape_list, colors)), size)
  if scene is None:
    return None
  darkest = rng.random() < 0.5
  k = int(np.argmin(lum) if darkest else np.argmax(lum))
  word = "darkest" if darkest else "lightest"
  return r.image, f"Which shape has the {word} color?", list(shape_list), shape_list[k]


def _color_counting(rng, size):
  n = int(rng.integers(1, 5))
  pool = _pick(rng, palette.COLORS, int(rng.integers(1, n + 1)))
  colors = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
  scene, r = _scene(rng, [(_pick(rng, shapes.SHAPES)[0], c) for c in colors], size)
  if scene is None:
    return None
  k = len({o.color for o in scene.objects})
  return (r.image, "How many different colors do the objects have?", _numbers(rng, k), str(k))


def _object_counting(rng, size):
  n = int(rng.integers(2, 5))
  pool = _pick(rng, palette.COLORS, 2)
  scene, r = _scene(rng, [(_pick(rng, shapes.SHAPES)[0], pool[int(rng.integers(2))])
                          for _ in range(n)], size)
  if scene is None:
    return None
  color = pool[int(rng.integers(2))]
  k = scene.count(color=color)
  return r.image, f"How many {color} objects are there?", _numbers(rng, k), str(k)


def _paint(image, shape, center, side, rgb):
  s = image.shape[0]
  m = shapes.shape_mask(shape, (center[0] * s, center[1] * s), side * s, s, s)
  image[m] = rgb
  return m


def _illusion(rng, size):
  shape = _pick(rng, shapes.SHAPES)[0]
  base = np.array(palette.COLOR_RGB[_pick(rng, ("red", "green", "blue", "purple", "brown",
                                                     "orange", "pink"))[0]], np.float64)
  image = np.zeros((size, size, 3), np.uint8)
  dark_left = rng.random() < 0.5
  image[:, :size // 2] = 40 if dark_left else 220
  image[:, size // 2:] = 220 if dark_left else 40
  case = int(rng.integers(3))  # 0 same, 1 left lighter, 2 right lighter
  light = np.rint(base + 0.35 * (255 - base)).astype(np.uint8)
  cols = [base.astype(np.uint8)] * 2
  if case:
    cols[case - 1] = light
  side = float(rng.uniform(0.3, 0.4))
  cy = float(rng.uniform(0.3, 0.7))
  _paint(image, shape, (0.25, cy), side, cols[0])
  _paint(image, shape, (0.75, cy), side, cols[1])
  choices = ["The left one", "The right one", "They are the same"]
  answer = choices[(2, 0, 1)[case]]
  return image, f"Which {shape} is lighter in color?", choices, answer


def _mimicry(rng, size):
  n = int(rng.integers(2, 5))
  hidden = _pick(rng, [c for c in palette.COLORS if c not in ("black", "white")])[0]
  shape = _pick(rng, shapes.SHAPES)[0]
  specs = [(shape if rng.random() < 0.6 else _pick(rng, shapes.SHAPES)[0],
            hidden if rng.random() < 0.5 else _pick(rng, palette.COLORS)[0]) for _ in range(n)]
  specs[0] = (shape, hidden)  # at least one camouflaged object of the asked shape
  # The background is the hidden colour moved 28 towards grey: close, never equal.
  rgb = np.array(palette.COLOR_RGB[hidden], np.float64)
  grey = np.array(palette.BACKGROUND_RGB, np.float64)
  bg = np.rint(rgb + 28 * (grey - rgb) / np.linalg.norm(grey - rgb)).astype(int)
  scene, r = _scene(rng, specs, size, background=tuple(bg))
  if scene is None:
    return None
  k = scene.count(shape=shape)
  return (r.image, f"How many {shapes.plural(shape)} are there?", _numbers(rng, k), str(k))


def _blindness(rng, size):
  shape = _pick(rng, shapes.SHAPES)[0]
  fig, ground = PLATE_PAIRS[int(rng.integers(len(PLATE_PAIRS)))]
  cell = max(2, size // 16)
  s = size
  mask = shapes.shape_mask(shape, (s / 2, s / 2), 0.62 * s, s, s)
  image = np.full((s, s, 3), 245, np.uint8)
  dot = cell - 1 if cell > 2 else cell  # 1-px gaps between dots when there is room
  for y in range(0, s, cell):
    for x in range(0, s, cell):
      inside = mask[min(y + cell // 2, s - 1), min(x + cell // 2, s - 1)]
      rgb = np.array(fig if inside else ground, np.int64) + rng.integers(-22, 23, size=3)
      image[y:y + dot, x:x + dot] = np.clip(rgb, 0, 255)
  return (image, "Which shape is hidden in the dot pattern?", _with(rng, shape, shapes.SHAPES),
          shape)


MAKERS: dict[str, Callable] = {
    "Color Recognition": _recognition, "Color Extraction": _extraction,
    "Object Recognition": _object_recognition, "Color Proportion": _proportion,
    "Color Comparison": _comparison, "Color Counting": _color_counting,
    "Object Counting": _object_counting, "Color Illusion": _illusion, "Color Mimicry": _mimicry,
    "Color Blindness": _blindness}


def robustness_group(rng, size):
  """A seed image and its 9 recolourings with one colour-invariant question.

  Returns:
    ([(image, variant name)] * 10 with the seed first, question, choices, answer) or None.
  """
  n = int(rng.integers(2, 5))
  shape = _pick(rng, shapes.SHAPES)[0]
  specs = [(shape if rng.random() < 0.5 else _pick(rng, shapes.SHAPES)[0],
            _pick(rng, [c for c in palette.COLORS if c not in ("black", "white")])[0])
           for _ in range(n)]
  specs[0] = (shape, specs[0][1])
  scene, r = _scene(rng, specs, size)
  if scene is None:
    return None
  k = scene.count(shape=shape)
  target = next(i for i, o in enumerate(scene.objects) if o.shape == shape)
  largest = int(np.argmax(r.masks.reshape(len(scene), -1).sum(1)))
  regions = {"entire": None, "target": r.masks[target], "largest": r.masks[largest]}
  images = [(r.image, "original")]
  for region in REGIONS:
    for deg in HUE_SHIFTS:
      images.append((hue_rotate(r.image, deg, regions[region]), f"{region}_hue{deg}"))
  return images, f"How many {shapes.plural(shape)} are there?", _numbers(rng, k), str(k)


# The fixed wording of the makers' questions and answers (a word tokenizer's vocabulary needs them).
TEXTS = ("Which shape is hidden in the dot pattern?", "The left one", "The right one",
         "They are the same", "Which circle is lighter in color?",
         "What percentage of the image is red?") + tuple(b[2] for b in PROPORTION_BINS) + tuple(
             "[" + ", ".join(str(int(v)) for v in palette.COLOR_RGB[c]) + "]" for c in palette.COLORS)


def make_item(task: str, rng, size: int, attempts: int = 200):
  """One item of `task` (a MAKERS key): the first of up to `attempts` draws from `rng` that keeps the
  rules, or None."""
  for _ in range(attempts):
    item = MAKERS[task](rng, size)
    if item is not None:
      return item
  return None


def training_item(rng, size: int):
  """One item of a task drawn uniformly from the 10 MAKERS and Color Robustness (one of its 10 images:
  the seed or a recolouring), for training data: (image, question, answer text), or None."""
  tasks = list(MAKERS) + ["Color Robustness"]
  task = tasks[int(rng.integers(len(tasks)))]
  if task == "Color Robustness":
    group = None
    for _ in range(200):
      group = robustness_group(rng, size)
      if group is not None:
        break
    if group is None:
      return None
    images, question, _, answer = group
    return images[int(rng.integers(len(images)))][0], question, answer
  item = make_item(task, rng, size)
  return None if item is None else (item[0], item[1], item[3])
