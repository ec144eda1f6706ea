"""Understanding question/answer pairs about a ShapesWorld scene.

Each item is a JSON-able dict with at least "kind", "question", "answer":

| kind       | example question                              | answer            |
|------------|-----------------------------------------------|-------------------|
| color      | What color is the circle?                     | red (a colour)    |
| shape      | What shape is the red object?                 | circle (a shape)  |
| count      | How many circles are there? / ... objects ... | 2 (digits, 0-4)   |
| position   | Where is the circle relative to the square?   | left of (relation)|
| position   | Is the circle above the square?               | yes / no          |
| colorbench | (multiple choice, see below)                  | a choice's text   |

Open questions are asked only when their answer is unambiguous: an object is
named by `scene.unique_reference` (shape, colour or both must be unique), an
open position question only when exactly one GenEval relation holds between the
rendered boxes, and yes/no answers follow GenEval's rule exactly ("yes" iff the
asked relation is among those that hold).

ColorBench-style items (evals.md §2) add "task", "choices" (3-6 strings,
exactly one correct), "answer_letter" ("(A)".."(F)") and "prompt" (the
question, "Select from the following choices.", then one "(X) choice" per
line). Tasks, modelled on ColorBench's perception/reasoning tasks:

* color_recognition: "What color is the <shape>?" — colour names;
* object_recognition: "Which shape is <colour>?" — shape names;
* color_counting: "How many different colors do the objects have?" — numbers;
* object_counting: "How many <colour> objects are there?" — numbers;
* color_proportion: "What percentage of the image is <colour>?" — ranges
  (computed from the exact masks at the dataset resolution; not asked within
  1 percentage point of a range boundary);
* color_extraction: "What is the RGB value of the <shape>?" — "[r, g, b]".

Colour-reasoning questions (`reasoning_questions`, made from a scene's objects when asked, not
stored): "How many <colour> objects are there?" for each colour drawn, "Which shape has the
darkest / lightest color?" (the object's shape is unique and its
luminance at least `LUMA_GAP` from every other object's) and "Which <shape> is lighter in color?"
for a shape drawn exactly twice, side by side ("The left one", "The right one", "They are the
same" for one colour). Luminance is Rec. 601 (`palette.luminance`).

Example:
  >>> from jaxmodels.shapes_world.render import render_with_masks
  >>> from jaxmodels.shapes_world.scene import SceneObject
  >>> scene = Scene((SceneObject("circle", "red", (0.3, 0.5), 0.3),
  ...                SceneObject("square", "blue", (0.75, 0.5), 0.3)))
  >>> items = make_qa(np.random.default_rng(0), scene, render_with_masks(scene, 64))
  >>> items[0]
  {'kind': 'color', 'question': 'What color is the circle?', 'answer': 'red'}
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from jaxmodels.shapes_world import geneval
from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.render import Rendering
from jaxmodels.shapes_world.scene import Scene
from jaxmodels.shapes_world.scene import unique_reference

COLORBENCH_TASKS: tuple[str, ...] = (
    "color_recognition", "object_recognition", "color_counting", "object_counting",
    "color_proportion", "color_extraction",
)
PROPORTION_BINS: tuple[tuple[float, float, str], ...] = (
    (0.0, 0.05, "less than 5%"), (0.05, 0.10, "5% to 10%"), (0.10, 0.20, "10% to 20%"),
    (0.20, 0.30, "20% to 30%"), (0.30, 1.01, "more than 30%"),
)
SELECT = "Select from the following choices."
LUMA_GAP = 20.0     # luminance difference that makes "darker" / "lighter" unmistakable
SIDE_GAP = 0.2      # centre distance (of the canvas side) that makes "left" / "right" unmistakable
LIGHTER_ANSWERS = ("The left one", "The right one", "They are the same")
# Every word the reasoning questions use (the tokenizer's vocabulary must hold them).
REASONING_TEXTS = ("Which shape has the darkest color?", "Which shape has the lightest color?",
                   "Which circle is lighter in color?") + LIGHTER_ANSWERS


def mcq(task: str, question: str, choices: list[str], answer: str) -> dict[str, Any]:
  """A ColorBench-style multiple-choice item (see module docstring)."""
  if not 3 <= len(choices) <= 6 or choices.count(answer) != 1 or len(set(choices)) != len(choices):
    raise ValueError(f"bad choices {choices} for answer {answer!r}")
  letters = string.ascii_uppercase[:len(choices)]
  lines = [question, SELECT] + [f"({l}) {c}" for l, c in zip(letters, choices)]
  return {"kind": "colorbench", "task": task, "question": question, "choices": choices,
          "answer": answer, "answer_letter": f"({letters[choices.index(answer)]})",
          "prompt": "\n".join(lines)}


def _shuffled(rng: np.random.Generator, answer: str, pool: list[str], k: int) -> list[str]:
  """`answer` plus k - 1 distinct distractors from `pool`, shuffled."""
  others = [p for p in pool if p != answer]
  pick = [others[i] for i in rng.choice(len(others), size=k - 1, replace=False)]
  out = pick + [answer]
  rng.shuffle(out)
  return out


def _numbers(rng: np.random.Generator, answer: int, k: int = 4) -> list[str]:
  """`answer` plus k - 1 other numbers from 0..5, ascending, as strings."""
  others = [n for n in range(6) if n != answer]
  pick = sorted(int(v) for v in rng.choice(others, size=k - 1, replace=False))
  return [str(n) for n in sorted(pick + [answer])]


def open_questions(rng: np.random.Generator, scene: Scene, rendering: Rendering) -> list[dict]:
  """Colour, shape, count and position questions (see module docstring)."""
  items: list[dict[str, Any]] = []
  objs = scene.objects
  for o in objs:  # colour: objects whose shape is unique
    if scene.count(shape=o.shape) == 1:
      items.append({"kind": "color", "question": f"What color is the {o.shape}?",
                    "answer": o.color})
  for o in objs:  # shape: objects whose colour is unique
    if scene.count(color=o.color) == 1:
      items.append({"kind": "shape", "question": f"What shape is the {o.color} object?",
                    "answer": o.shape})
  present = [s for s in shapes.SHAPES if scene.count(shape=s)]
  absent = [s for s in shapes.SHAPES if not scene.count(shape=s)]
  for s in present:
    items.append({"kind": "count", "question": f"How many {shapes.plural(s)} are there?",
                  "answer": str(scene.count(shape=s))})
  items.append({"kind": "count", "question": "How many objects are there?",
                "answer": str(len(objs))})
  if absent:
    s = absent[int(rng.integers(len(absent)))]
    items.append({"kind": "count", "question": f"How many {shapes.plural(s)} are there?",
                  "answer": "0"})
  refs = [unique_reference(scene, k) for k in range(len(objs))]
  pairs = [(a, b) for a in range(len(objs)) for b in range(len(objs))
           if a != b and refs[a] and refs[b]]
  if pairs:
    order = rng.permutation(len(pairs))
    asked_open = 0
    for p in order[:2]:
      a, b = pairs[int(p)]
      box_a, box_b = rendering.boxes[a], rendering.boxes[b]
      rel = geneval.clear_relation(box_a, box_b)
      if rel is not None and asked_open < 1:
        asked_open += 1
        items.append({"kind": "position",
                      "question": f"Where is the {refs[a]} relative to the {refs[b]}?",
                      "answer": rel})
      holds = geneval.relative_position(box_a, box_b)
      if holds and rng.random() < 0.5:
        asked = sorted(holds)[int(rng.integers(len(holds)))]
      else:
        asked = geneval.RELATIONS[int(rng.integers(4))]
      items.append({"kind": "position", "question": f"Is the {refs[a]} {asked} the {refs[b]}?",
                    "answer": "yes" if asked in holds else "no"})
  return items


def _proportion_bin(frac: float) -> str | None:
  for lo, hi, label in PROPORTION_BINS:
    if lo <= frac < hi:
      if min(frac - lo, hi - frac) < 0.01 and not (lo == 0.0 and frac < 0.04):
        return None
      return label
  return None


def colorbench_question(rng: np.random.Generator, task: str, scene: Scene,
                        rendering: Rendering) -> dict[str, Any] | None:
  """One ColorBench-style item of `task`, or None when the scene has none."""
  objs = scene.objects
  by_shape = [o for o in objs if scene.count(shape=o.shape) == 1]
  by_color = [o for o in objs if scene.count(color=o.color) == 1]
  if task == "color_recognition" and by_shape:
    o = by_shape[int(rng.integers(len(by_shape)))]
    return mcq(task, f"What color is the {o.shape}?",
               _shuffled(rng, o.color, list(palette.COLORS), 4), o.color)
  if task == "object_recognition" and by_color:
    o = by_color[int(rng.integers(len(by_color)))]
    return mcq(task, f"Which shape is {o.color}?",
               _shuffled(rng, o.shape, list(shapes.SHAPES), 4), o.shape)
  if task == "color_counting":
    n = len({o.color for o in objs})
    return mcq(task, "How many different colors do the objects have?", _numbers(rng, n), str(n))
  if task == "object_counting":
    c = palette.COLORS[int(rng.integers(len(palette.COLORS)))]
    n = scene.count(color=c)
    return mcq(task, f"How many {c} objects are there?", _numbers(rng, n), str(n))
  if task == "color_proportion":
    c = objs[int(rng.integers(len(objs)))].color
    frac = float(sum(rendering.masks[k].sum() for k, o in enumerate(objs) if o.color == c))
    frac /= rendering.masks.shape[1] * rendering.masks.shape[2]
    label = _proportion_bin(frac)
    if label is None:
      return None
    return mcq(task, f"What percentage of the image is {c}?",
               [b[2] for b in PROPORTION_BINS], label)
  if task == "color_extraction" and by_shape:
    o = by_shape[int(rng.integers(len(by_shape)))]
    rgb = np.array(palette.COLOR_RGB[o.color])
    fmt = lambda v: "[" + ", ".join(str(int(x)) for x in v) + "]"
    choices = {fmt(rgb)}
    while len(choices) < 4:
      delta = rng.choice([-1, 1], size=3) * rng.integers(40, 90, size=3) * (rng.random(3) < 0.7)
      choices.add(fmt(np.clip(rgb + delta, 0, 255)))
    choices = sorted(choices)
    rng.shuffle(choices)
    return mcq(task, f"What is the RGB value of the {o.shape}?", list(choices), fmt(rgb))
  return None


def reasoning_questions(scene: Scene) -> list[dict[str, Any]]:
  """The colour-reasoning questions of a scene (module docstring), kind "colorbench", open answers."""
  objs = scene.objects
  lum = [float(palette.luminance(palette.COLOR_RGB[o.color])) for o in objs]
  items: list[dict[str, Any]] = []
  for word, pick in (("darkest", int(np.argmin(lum)) if lum else 0),
                     ("lightest", int(np.argmax(lum)) if lum else 0)):
    others = [l for k, l in enumerate(lum) if k != pick]
    if (others and scene.count(shape=objs[pick].shape) == 1
        and min(abs(lum[pick] - l) for l in others) >= LUMA_GAP):
      items.append({"kind": "colorbench", "question": f"Which shape has the {word} color?",
                    "answer": objs[pick].shape})
  for color in palette.COLORS:   # the stored object-counting items mostly ask an absent colour
    if scene.count(color=color):
      items.append({"kind": "colorbench", "question": f"How many {color} objects are there?",
                    "answer": str(scene.count(color=color))})
  for shape in shapes.SHAPES:
    pair = [k for k, o in enumerate(objs) if o.shape == shape]
    if len(pair) != 2:
      continue
    left, right = sorted(pair, key=lambda k: objs[k].center[0])
    if objs[right].center[0] - objs[left].center[0] < SIDE_GAP:
      continue
    if objs[left].color == objs[right].color:
      answer = LIGHTER_ANSWERS[2]
    elif abs(lum[left] - lum[right]) >= LUMA_GAP:
      answer = LIGHTER_ANSWERS[0] if lum[left] > lum[right] else LIGHTER_ANSWERS[1]
    else:
      continue
    items.append({"kind": "colorbench", "question": f"Which {shape} is lighter in color?",
                  "answer": answer})
  return items


def make_qa(rng: np.random.Generator, scene: Scene, rendering: Rendering,
            num_colorbench: int = 2) -> list[dict[str, Any]]:
  """All open questions plus up to `num_colorbench` ColorBench-style items.

  Args:
    rng: random generator (advanced in place).
    scene: the scene.
    rendering: `render.render_with_masks(scene, image_size)` (boxes and masks
      at the dataset resolution decide positions and proportions).
    num_colorbench: number of distinct ColorBench tasks to try.

  Returns:
    List of item dicts (see module docstring).
  """
  items = open_questions(rng, scene, rendering)
  for t in rng.permutation(len(COLORBENCH_TASKS))[:num_colorbench]:
    item = colorbench_question(rng, COLORBENCH_TASKS[int(t)], scene, rendering)
    if item is not None:
      items.append(item)
  return items
