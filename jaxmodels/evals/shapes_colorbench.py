"""ShapesWorld-ColorBench: a ColorBench-style question set drawn with ShapesWorld, made on the fly.

Every row has the official ColorBench schema (idx, id, type, task, filename, image (PNG bytes),
prompt, question, choices, answer "(C)"), so `colorbench.score` scores it unchanged. The set is a
pure function of (seed, sizes, image_size); each answer follows from how its image was built:

  Color Recognition (P)   What color is the <shape>? 4 colours; the painted colour.
  Color Extraction (P)    What is the RGB value of the <shape>? 4 "[r, g, b]"; the palette RGB.
  Object Recognition (P)  Which shape is <colour>? 4 shapes; the painted shape.
  Color Proportion (R)    What percentage of the image is <colour>? 5 ranges; pixel counts
                          (never within 1 point of a range boundary).
  Color Comparison (R)    Which shape has the darkest / lightest color? the shapes shown, colours
                          >= 20 apart in luminance; the luminance order.
  Color Counting (R)      How many different colors do the objects have? the colours drawn.
  Object Counting (R)     How many <colour> objects are there? the objects drawn.
  Color Illusion (R)      Which <shape> is lighter in color? left / right / same: two objects of
                          one hue, one on a dark and one on a light surround; the painted RGB.
  Color Mimicry (R)       How many <shape>s are there? some objects on a background 28 (RGB)
                          from their own colour; the objects drawn.
  Color Blindness (R)     Which shape is hidden in the dot pattern? a dot plate in two confusable
                          hues of similar luminance; the figure's shape.
  Color Robustness (Rob.) How many <shape>s are there? a seed and 9 recolourings; objects drawn.

P / R / Rob.: type Perception / Reasoning / Robustness, as in the official set.

Robustness recolourings: 3 regions (entire image, target segment = the first object of the asked
shape, largest segment = the largest object) × HSV hue rotation by 90°, 180° and 270°. Files are
named as the official set does, so `colorbench` groups them: the seed "<n>.png", its variants
"<n>_<v>.png". Luminance is Rec. 601 (0.299 R + 0.587 G + 0.114 B).

Example:
  rows = make_rows(seed=0, per_task=8, robustness_seeds=8, image_size=32)
  preds = run_model(rows, answer_fn)          # answer_fn(images uint8 [B,H,W,3], texts) -> strs
  result = colorbench.score(rows, preds)      # the official metrics
"""
from __future__ import annotations

import string
from typing import Callable, Sequence

import numpy as np

from jaxmodels.shapes_world import layout, palette, shapes
from jaxmodels.shapes_world.render import encode_png, render_with_masks
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.evals import EvalInputError, colorbench

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
SELECT = "Select from the following choices."


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


def _mcq(rng, choices: Sequence[str], answer: str, shuffle: bool = True):
  choices = list(choices)
  if shuffle:
    rng.shuffle(choices)
  letters = string.ascii_uppercase[:len(choices)]
  return choices, f"({letters[choices.index(answer)]})"


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


def _prompt(question: str, choices: Sequence[str]) -> str:
  letters = string.ascii_uppercase
  return "\n".join([question, SELECT] + [f"({letters[i]}) {c}" for i, c in enumerate(choices)])


def make_rows(*, seed: int = 0, per_task: int = 8, robustness_seeds: int = 8,
              image_size: int = 32, tasks: Sequence[str] | None = None) -> list[dict]:
  """The ShapesWorld-ColorBench rows (see the module docstring), deterministic.

  Args:
    seed: the set's seed.
    per_task: items per Perception / Reasoning task.
    robustness_seeds: seed instances of Color Robustness (each adds 10 rows).
    image_size: side of the images in pixels (the model's resolution; 32 by default).
    tasks: a subset of `TASKS` (default all 11).

  Returns:
    Rows {idx, id, type, task, filename, image (PNG bytes), prompt, question, choices, answer,
    variant (robustness: "original" or "<region>_hue<deg>")}, the P&R tasks first.

  Raises:
    EvalInputError: an unknown task name.
  """
  tasks = list(TASKS) if tasks is None else list(tasks)
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise EvalInputError(f"ShapesWorld-ColorBench: unknown task(s) {unknown}; known: {list(TASKS)}")
  rows: list[dict] = []

  def add(task, k, image, filename, question, choices, answer, shuffle=True, variant=None):
    rng = np.random.default_rng([seed, 99, list(TASKS).index(task), k])
    choices, letter = _mcq(rng, choices, answer, shuffle)
    row = {"idx": len(rows), "id": f"shapes_{task.lower().replace(' ', '_')}_{k}",
           "type": TASKS[task], "task": task, "filename": filename,
           "image": encode_png(image), "prompt": _prompt(question, choices),
           "question": question, "choices": choices, "answer": letter}
    if variant is not None:
      row["variant"] = variant
    rows.append(row)

  for t, task in enumerate(tasks):
    if task == "Color Robustness":
      continue
    ordered = task in ("Color Proportion", "Color Illusion")  # keep the natural option order
    for k in range(per_task):
      item = None
      for attempt in range(200):
        item = MAKERS[task](np.random.default_rng([seed, list(TASKS).index(task), k, attempt]),
                            image_size)
        if item is not None:
          break
      if item is None:
        raise EvalInputError(f"ShapesWorld-ColorBench: no {task} item at {image_size}px")
      image, question, choices, answer = item
      slug = task.lower().replace(" ", "_")
      add(task, k, image, f"{slug}-{k}.png", question, choices, answer,
          shuffle=not ordered and task not in ("Color Counting", "Object Counting",
                                               "Color Mimicry"))
  if "Color Robustness" in tasks:
    for k in range(robustness_seeds):
      group = None
      for attempt in range(200):
        group = robustness_group(np.random.default_rng([seed, 10, k, attempt]), image_size)
        if group is not None:
          break
      if group is None:
        raise EvalInputError(f"ShapesWorld-ColorBench: no robustness scene at {image_size}px")
      images, question, choices, answer = group
      for v, (image, variant) in enumerate(images):
        name = f"{k}.png" if v == 0 else f"{k}_{v}.png"
        add("Color Robustness", k, image, name, question, choices, answer, shuffle=False,
            variant=variant)
  return rows


def row_pixels(row: dict) -> np.ndarray:
  """The row's image as uint8 [H, W, 3]."""
  return np.asarray(colorbench.row_image(row), np.uint8)


def match_option(response: str | None, choices: Sequence[str]) -> str | None:
  """"(X)" when a reply is exactly one option's text (case, spacing and end punctuation ignored: a
  word-level tokenizer writes "[30, 160, 50]" back as "[ 30, 160, 50 ]" and "5%" as "5 %"): the
  adapter for models trained on open answers. Returns None otherwise."""
  if response is None:
    return None
  key = lambda t: "".join(t.strip().strip(".").lower().split())  # noqa: E731
  text = key(response)
  hits = [i for i, c in enumerate(choices) if key(c) == text]
  return f"({string.ascii_uppercase[hits[0]]})" if len(hits) == 1 else None


def run_model(rows: Sequence[dict], answer_fn: Callable, *, batch_size: int = 32,
              text: str = "prompt", match_choices: bool = False,
              progress: bool = False, pixels: Callable[[dict], np.ndarray] = row_pixels,
              instruction: str | None = None) -> dict:
  """Runs `answer_fn` over the rows in batches; returns {idx: response} for `colorbench.score`.

  Args:
    rows: ColorBench rows (ours or the official ones, all images the same size per batch).
    answer_fn: (images uint8 [B, H, W, 3], texts list[str]) -> list[str] responses.
    batch_size: rows per call.
    text: "prompt" (the official instruction + prompt, `colorbench.build_prompt`) or "question"
      (the bare question, for models trained on open questions).
    match_choices: read a reply that equals an option's text as that option (`match_option`).
    progress: show a progress bar.
    pixels: row -> uint8 [H, W, 3], one size for every row (default `row_pixels`, as stored).
    instruction: replaces the default instruction of text="prompt" (`colorbench.build_prompt`).
  """
  from tqdm.auto import tqdm
  if text not in ("prompt", "question"):
    raise EvalInputError(f"run_model: text must be 'prompt' or 'question', got {text!r}")
  preds = {}
  for start in tqdm(range(0, len(rows), batch_size), desc="ColorBench", disable=not progress):
    chunk = rows[start:start + batch_size]
    images = np.stack([pixels(r) for r in chunk])
    texts = [colorbench.build_prompt(r, instruction=instruction) if text == "prompt"
             else r["question"] for r in chunk]
    replies = list(answer_fn(images, texts))
    if len(replies) != len(chunk):
      raise EvalInputError(f"answer_fn returned {len(replies)} replies for {len(chunk)} rows")
    for r, reply in zip(chunk, replies):
      if match_choices:
        reply = match_option(reply, r["choices"]) or reply
      preds[r["idx"]] = reply
  return preds


def evaluate(answer_fn: Callable, rows: Sequence[dict] | None = None, **kwargs) -> dict:
  """`colorbench.score` of `answer_fn` on `rows` (default: `make_rows()`); kwargs go to
  `run_model`."""
  rows = make_rows() if rows is None else rows
  return colorbench.score(rows, run_model(rows, answer_fn, **kwargs))


def summary(result: dict) -> dict:
  """The headline numbers of a `colorbench.score` result: perception, reasoning, overall,
  robustness (accuracies in 0..1, None when absent)."""
  return {"perception": result["perception"]["accuracy"],
          "reasoning": result["reasoning"]["accuracy"],
          "overall": result["overall"]["accuracy"],
          "robustness": result["robustness"]["accuracy"]}
