"""GenEval's metadata schema, prompt templates and position rule, for shapes.

Facts from djghosh13/geneval (see /work/shared/spec/evals.md §1):

* six tags, in file order: single_object, two_object, counting, colors,
  position, color_attr; the official file has 80/99/80/94/100/100 of them
  (553 prompts);
* a record is {"tag", "include": [clause...], "exclude"?: [clause...],
  "prompt"}; a clause is {"class", "count", "color"?, "position"?: [relation,
  clause index]}; only counting records have "exclude" ({class, count N+1});
  in position records include[0] is the reference object B and include[1] is
  object A with position [rel, 0];
* templates: "a photo of a/an X", "a photo of a/an X and a/an Y", "a photo of
  {two|three|four} {Xs}", "a photo of a/an {color} X", "a photo of a/an A {rel}
  a/an B", "a photo of a/an {c1} A and a/an {c2} B", where the article is "an"
  before a vowel (e.g. "an orange circle");
* position rule (`relative_position`): see its docstring.

Here the GenEval "classes" are `shapes.SHAPES` and the colours `palette.COLORS`.

Example:
  >>> make_record("position", [{"class": "square", "count": 1},
  ...                          {"class": "circle", "count": 1, "position": ["left of", 0]}])
  {'tag': 'position', 'include': [{'class': 'square', 'count': 1}, {'class': 'circle', 'count': 1, 'position': ['left of', 0]}], 'prompt': 'a photo of a circle left of a square'}
  >>> sorted(relative_position((0, 0, 50, 50), (100, 0, 150, 50)))
  ['left of']
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from jaxmodels.shapes_world import palette
from jaxmodels.shapes_world import shapes

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position",
                         "color_attr")
# Tag counts of the official evaluation_metadata.jsonl (553 prompts).
OFFICIAL_TAG_COUNTS: dict[str, int] = {
    "single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
    "color_attr": 100,
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below",
                            "below": "above"}
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
COUNTS: tuple[int, ...] = (2, 3, 4)  # GenEval's counting N
POSITION_THRESHOLD = 0.1  # GenEval's default `position_threshold`


def tag_counts(n: int, proportions: dict[str, int] | None = None) -> dict[str, int]:
  """Splits `n` prompts over the tags in the official proportions.

  Largest-remainder rounding of n * count_t / 553 (ties go to the earlier tag),
  so the result sums to `n` and equals the official counts for n = 553.

  Args:
    n: total number of prompts.
    proportions: {tag: weight}; the official counts by default.

  Returns:
    {tag: count} in `TAGS` order.
  """
  props = proportions or OFFICIAL_TAG_COUNTS
  total = sum(props.values())
  exact = {t: n * props.get(t, 0) / total for t in TAGS}
  out = {t: int(math.floor(exact[t])) for t in TAGS}
  order = sorted(TAGS, key=lambda t: (-(exact[t] - out[t]), TAGS.index(t)))
  for t in order[:n - sum(out.values())]:
    out[t] += 1
  return out


def position_components(box_a: Sequence[float], box_b: Sequence[float],
                        threshold: float = POSITION_THRESHOLD) -> tuple[float, float] | None:
  """GenEval's normalised, shrunk offset (dx, dy) of box A from box B.

  offset = centre_A - centre_B; each |component| is shrunk by threshold x (dim_A
  + dim_B) on its axis and clamped at 0 (sign kept); if both shrunk components
  are < 1e-3 the result is None (no relation); else (dx, dy) = shrunk / |offset|
  (y down).

  Args:
    box_a: (x1, y1, x2, y2) of A.
    box_b: (x1, y1, x2, y2) of B.
    threshold: GenEval's `position_threshold`.

  Returns:
    (dx, dy), or None.
  """
  ax0, ay0, ax1, ay1 = (float(v) for v in box_a)
  bx0, by0, bx1, by1 = (float(v) for v in box_b)
  ox = (ax0 + ax1) / 2 - (bx0 + bx1) / 2
  oy = (ay0 + ay1) / 2 - (by0 + by1) / 2
  sx = math.copysign(max(abs(ox) - threshold * ((ax1 - ax0) + (bx1 - bx0)), 0.0), ox)
  sy = math.copysign(max(abs(oy) - threshold * ((ay1 - ay0) + (by1 - by0)), 0.0), oy)
  if abs(sx) < 1e-3 and abs(sy) < 1e-3:
    return None
  norm = math.hypot(ox, oy)
  return sx / norm, sy / norm


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
  """GenEval's relations of box A relative to box B (evals.md §1.7).

  With (dx, dy) from `position_components`: dx < -0.5 → "left of", dx > 0.5 →
  "right of", dy < -0.5 → "above", dy > 0.5 → "below"; several may hold, and
  none when the boxes' centres (nearly) coincide.

  Args:
    box_a: (x1, y1, x2, y2) of A.
    box_b: (x1, y1, x2, y2) of B.
    threshold: GenEval's `position_threshold`.

  Returns:
    The set of relations that hold.
  """
  d = position_components(box_a, box_b, threshold)
  if d is None:
    return set()
  dx, dy = d
  rels = set()
  if dx < -0.5:
    rels.add("left of")
  if dx > 0.5:
    rels.add("right of")
  if dy < -0.5:
    rels.add("above")
  if dy > 0.5:
    rels.add("below")
  return rels


def clear_relation(box_a: Sequence[float], box_b: Sequence[float],
                   margin: float = 0.0) -> str | None:
  """The single relation of A to B if exactly one holds with `margin`, else None.

  "Clear" means the decisive component is beyond 0.5 + margin and the other
  one within 0.5 - margin, so exactly one GenEval relation holds (margin = 0
  is GenEval's rule itself, requiring uniqueness).
  """
  d = position_components(box_a, box_b)
  if d is None:
    return None
  dx, dy = d
  hi, lo = 0.5 + margin, 0.5 - margin
  if abs(dy) < lo and abs(dx) > hi:
    return "left of" if dx < 0 else "right of"
  if abs(dx) < lo and abs(dy) > hi:
    return "above" if dy < 0 else "below"
  return None


def _a(word: str) -> str:
  return f"{shapes.article(word)} {word}"


def _noun(clause: dict[str, Any]) -> str:
  """'[colour ]class' of a clause."""
  return f"{clause['color']} {clause['class']}" if "color" in clause else clause["class"]


def prompt_for(tag: str, include: Sequence[dict[str, Any]]) -> str:
  """GenEval's prompt for a tag and its include clauses."""
  if tag in ("single_object", "colors"):
    return f"a photo of {_a(_noun(include[0]))}"
  if tag in ("two_object", "color_attr"):
    return f"a photo of {_a(_noun(include[0]))} and {_a(_noun(include[1]))}"
  if tag == "counting":
    c = include[0]
    return f"a photo of {NUMBER_WORDS[c['count']]} {shapes.plural(c['class'])}"
  if tag == "position":
    b, a = include
    return f"a photo of {_a(_noun(a))} {a['position'][0]} {_a(_noun(b))}"
  raise ValueError(f"unknown GenEval tag {tag!r}; expected one of {TAGS}")


def make_record(tag: str, include: Sequence[dict[str, Any]],
                exclude: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
  """A GenEval metadata record {tag, include, [exclude], prompt}.

  Counting records get GenEval's exclude clause {class, count N+1}
  automatically when `exclude` is None.
  """
  include = [dict(c) for c in include]
  rec: dict[str, Any] = {"tag": tag, "include": include}
  if tag == "counting" and exclude is None:
    exclude = [{"class": include[0]["class"], "count": include[0]["count"] + 1}]
  if exclude:
    rec["exclude"] = [dict(c) for c in exclude]
  rec["prompt"] = prompt_for(tag, include)
  return rec


def validate_record(rec: dict[str, Any]) -> None:
  """Raises ValueError unless `rec` is a valid ShapesWorld GenEval record."""
  keys = set(rec) - {"tag", "include", "exclude", "prompt"}
  if keys or rec.get("tag") not in TAGS or not rec.get("include"):
    raise ValueError(f"bad GenEval record {rec}")
  for k, c in enumerate(rec["include"]):
    if c.get("class") not in shapes.SHAPES or not isinstance(c.get("count"), int) or c["count"] < 1:
      raise ValueError(f"bad include clause {k} in {rec}")
    if "color" in c and c["color"] not in palette.COLORS:
      raise ValueError(f"bad colour in clause {k} of {rec}")
    if "position" in c:
      rel, j = c["position"]
      if rel not in RELATIONS or not 0 <= j < len(rec["include"]) or j == k:
        raise ValueError(f"bad position in clause {k} of {rec}")
    if set(c) - {"class", "count", "color", "position"}:
      raise ValueError(f"unknown key in clause {k} of {rec}")
  if rec["prompt"] != prompt_for(rec["tag"], rec["include"]):
    raise ValueError(f"prompt does not match the template: {rec}")
