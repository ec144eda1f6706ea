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
The images and their answers are made by jaxmodels/shapes_world/colorbench_tasks.py (so training data
can draw the same tasks from other seeds); this module turns them into official-schema rows.

Example:
  rows = make_rows(seed=0, per_task=8, robustness_seeds=8, image_size=32)
  preds = run_model(rows, answer_fn)          # answer_fn(images uint8 [B,H,W,3], texts) -> strs
  result = colorbench.score(rows, preds)      # the official metrics
"""
from __future__ import annotations

import string
from typing import Callable, Sequence

import numpy as np

from jaxmodels.evals import EvalInputError, colorbench
from jaxmodels.shapes_world.colorbench_tasks import MAKERS, TASKS, robustness_group
from jaxmodels.shapes_world.render import encode_png

SELECT = "Select from the following choices."


def _mcq(rng, choices: Sequence[str], answer: str, shuffle: bool = True):
  choices = list(choices)
  if shuffle:
    rng.shuffle(choices)
  letters = string.ascii_uppercase[:len(choices)]
  return choices, f"({letters[choices.index(answer)]})"


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
