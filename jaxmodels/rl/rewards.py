"""Rewards for image-generation RL: plug-ins scoring images [N, S, S, 3] (uint8) against their prompts'
GenEval-schema records, mixed with weights and logged one by one.

A reward is any callable `reward(images, records) -> np.ndarray [N]` (float); `make_rewards(spec)` builds
the mixture a config names:

  * `geneval`: the official GenEval verdict (1 correct / 0 not) from a detector — on ShapesWorld the exact
    `shapes` detector, so the reward is free and noiseless;
  * `geneval_dense`: partial credit from the same detections: the mean of the parts a prompt asks for —
    objects (each asked class found at all), count (each class found at least `count` times and no
    excluded count reached), colour (of the asked objects, the fraction of the asked colour), position
    (of the asked pairs, the fraction in the asked relation) — 1 exactly when every part holds;
  * `vqa`: an understanding model (our own, `jaxmodels.evals.shapes_eval.model_answer_fn`) is asked the
    prompt's questions about each image (the colour of each coloured object, how many of each class,
    whether A stands in the asked relation to B, in the ShapesWorld Q/A wording): the fraction answered
    as the prompt implies;
  * `EditReward` (GRPO's edit prompts, `rl.edit_prompts`): the dense ShapesWorld-ROVER score of an
    edited image against its edit task;
  * `external`: "module.path:factory" — `factory(**kwargs)` returns a reward callable (any scorer: an HF
    model, a remote service).

    rewards = make_rewards({"geneval_dense": 1.0, "geneval": 0.5})
    total, parts = rewards(images, records)          # [N], {"geneval_dense": [N], "geneval": [N]}
"""
from __future__ import annotations

import importlib
import itertools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxmodels.errors import ConfigError
from jaxmodels.evals import geneval

BUILT_IN = ("geneval", "geneval_dense", "vqa")


class GenEvalReward:
  """1.0 for an image GenEval judges correct for its record, else 0.0 (`dense`: partial credit,
  module docstring). `detector` defaults to the exact ShapesWorld detector."""

  def __init__(self, detector=None, *, dense: bool = False):
    if detector is None:
      from jaxmodels.evals.detectors import ShapesDetector
      detector = ShapesDetector()
    self.detector, self.dense = detector, dense

  def __call__(self, images: np.ndarray, records: Sequence[dict]) -> np.ndarray:
    out = np.zeros(len(records), np.float32)
    for i, (img, record) in enumerate(zip(images, records)):
      detections = self.detector.detect(np.asarray(img))
      if self.dense:
        out[i] = partial_credit(record, detections)
      else:
        out[i] = float(geneval.evaluate_detections(record, detections)[0])
    return out


class EditReward:
  """The dense ShapesWorld-ROVER reward of edited images [N, S, S, 3] uint8 against their IG tasks
  (`shapes_rover.make_tasks` fields; GRPO takes them from the train split): the mean of RV (the
  target state reached, 0/1), the target overlap (`shapes_rover.target_overlap`) and VC (untouched
  objects kept; left out where the edit touches every object). Returns (total [N], {"edit_rv",
  "edit_overlap", "edit_vc"} [N]; an undefined VC logged as NaN)."""

  def __init__(self, detector=None):
    if detector is None:
      from jaxmodels.evals.detectors import ShapesDetector
      detector = ShapesDetector()
    self.detector = detector

  def __call__(self, images: np.ndarray, tasks: Sequence[dict]) -> tuple[np.ndarray, dict]:
    from jaxmodels.evals import shapes_rover
    parts = {k: np.zeros(len(tasks), np.float32) for k in ("edit_rv", "edit_overlap", "edit_vc")}
    total = np.zeros(len(tasks), np.float32)
    for i, (img, task) in enumerate(zip(images, tasks)):
      img = np.asarray(img, np.uint8)
      found = shapes_rover.components(self.detector, img)          # one detection pass for both
      scores = shapes_rover.score_ig(task, img, None, self.detector, found=found)
      rv, vc = scores["reasoning_visual_exact"], scores["visual_consistency_exact"]
      overlap = shapes_rover.target_overlap(task, found[0])
      terms = [rv, overlap] + ([vc] if vc is not None else [])
      parts["edit_rv"][i], parts["edit_overlap"][i] = rv, overlap
      parts["edit_vc"][i] = np.nan if vc is None else vc
      total[i] = float(np.mean(terms))
    return total, parts


def partial_credit(record: dict, detections: list[dict]) -> float:
  """The dense GenEval reward of one image: the mean of the objects / count / colour / position parts
  its record asks for (each in [0, 1]; module docstring), with the official detection filter."""
  objects = geneval.filter_detections(detections, tag=record.get("tag", ""))
  include = record.get("include", [])
  found_any, counted, colour, position = [], [], [], []
  groups: list[list[dict]] = []
  for clause in include:
    name, count = clause["class"], clause["count"]
    found = objects.get(name, [])[:count]
    found_any.append(float(bool(found)))
    counted.append(min(len(found), count) / count)
    if "color" in clause:
      colour.append(sum(d.get("color") == clause["color"] for d in found) / count)
    if "position" in clause:
      rel, target = clause["position"]
      pairs = list(itertools.product(found, groups[target])) if target < len(groups) else []
      hits = sum(rel in geneval.relative_position(a["box"], b["box"]) for a, b in pairs)
      want = count * max(1, include[target]["count"])
      position.append(hits / want)
    groups.append(found)
  for clause in record.get("exclude", []):
    counted.append(float(len(objects.get(clause["class"], [])) < clause["count"]))
  parts = [np.mean(p) for p in (found_any, counted, colour, position) if p]
  return float(np.mean(parts)) if parts else 0.0


def questions_of(record: dict) -> list[tuple[str, str]]:
  """The (question, expected answer) pairs a GenEval-schema record implies, in the ShapesWorld Q/A
  wording (jaxmodels/shapes_world/qa.py): the colour of each coloured class asked once, the count
  of each class (summed over its clauses), and for a position clause whether A is in the relation to B
  (classes named alone only where the prompt has one object of them)."""
  from jaxmodels.shapes_world import shapes
  include = record.get("include", [])
  totals: dict[str, int] = {}
  for c in include:
    totals[c["class"]] = totals.get(c["class"], 0) + c["count"]
  out = []
  for c in include:
    if "color" in c and totals[c["class"]] == 1:
      out.append((f"What color is the {c['class']}?", c["color"]))
  for name, n in totals.items():
    out.append((f"How many {shapes.plural(name)} are there?", str(n)))
  for c in include:
    if "position" in c:
      rel, target = c["position"]
      other = include[target]["class"]
      if totals[c["class"]] == 1 and totals[other] == 1:
        out.append((f"Is the {c['class']} {rel} the {other}?", "yes"))
  return out


class VQAReward:
  """The fraction of a record's questions (`questions_of`) that `answer_fn(images, questions) ->
  answers` answers as the prompt implies (answers compared lower-cased, stripped of a final '.')."""

  def __init__(self, answer_fn: Callable[[np.ndarray, list[str]], list[str]]):
    self.answer_fn = answer_fn

  def __call__(self, images: np.ndarray, records: Sequence[dict]) -> np.ndarray:
    rows, owner, expected = [], [], []
    for i, record in enumerate(records):
      for q, a in questions_of(record):
        rows.append(i)
        owner.append(q)
        expected.append(a)
    out = np.zeros(len(records), np.float32)
    if not rows:
      return out
    answers = self.answer_fn(np.stack([np.asarray(images[i]) for i in rows]), owner)
    norm = lambda s: str(s).strip().lower().rstrip(".").strip()  # noqa: E731
    right = np.zeros(len(records), np.float32)
    asked = np.zeros(len(records), np.float32)
    for i, got, want in zip(rows, answers, expected):
      asked[i] += 1
      right[i] += float(norm(got) == norm(want))
    np.divide(right, asked, out=out, where=asked > 0)
    return out


def load_external(spec: str, **kwargs: Any) -> Callable:
  """"package.module:factory" -> factory(**kwargs), a reward callable (one-line errors naming spec)."""
  module, sep, name = spec.partition(":")
  if not sep or not module or not name:
    raise ConfigError(f"config.rl.external={spec!r}: expected 'package.module:factory'")
  try:
    factory = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError) as e:
    raise ConfigError(f"config.rl.external={spec!r}: cannot import ({e})") from None
  reward = factory(**kwargs)
  if not callable(reward):
    raise ConfigError(f"config.rl.external={spec!r}: the factory returned a {type(reward).__name__}, not "
                      f"a callable reward")
  return reward


class MixedReward:
  """Weighted sum of named rewards: `(images, records) -> (total [N], {name: [N]})`."""

  def __init__(self, parts: Mapping[str, tuple[float, Callable]]):
    if not parts:
      raise ConfigError("config.rl.rewards: name at least one reward (e.g. {'geneval_dense': 1.0})")
    self.parts = dict(parts)

  def __call__(self, images: np.ndarray, records: Sequence[dict]) -> tuple[np.ndarray, dict]:
    scores = {name: np.asarray(fn(images, records), np.float32) for name, (_, fn) in self.parts.items()}
    for name, s in scores.items():
      if s.shape != (len(records),):
        raise ConfigError(f"reward {name!r} returned shape {s.shape}, expected ({len(records)},)")
    total = sum(self.parts[name][0] * s for name, s in scores.items())
    return np.asarray(total, np.float32), scores


def make_rewards(weights: Mapping[str, float], *, answer_fn: Callable | None = None,
                 external: Mapping[str, Mapping[str, Any]] | None = None, detector=None) -> MixedReward:
  """The mixture `weights` names ({name: weight} over BUILT_IN; a zero weight is still computed and
  logged), plus `external` rewards {"module:factory": {"weight": w, **kwargs}}. `answer_fn` is needed by
  "vqa"."""
  parts: dict[str, tuple[float, Callable]] = {}
  for name, w in weights.items():
    if name not in BUILT_IN:
      raise ConfigError(f"config.rl.rewards.{name}: unknown reward (built in: {', '.join(BUILT_IN)}; others "
                        f"through config.rl.external)")
    if name == "vqa":
      if answer_fn is None:
        raise ConfigError("config.rl.rewards.vqa: needs a model that answers questions about images")
      parts[name] = (float(w), VQAReward(answer_fn))
    else:
      parts[name] = (float(w), GenEvalReward(detector, dense=name == "geneval_dense"))
  for spec, kwargs in (external or {}).items():
    kwargs = dict(kwargs)
    w = float(kwargs.pop("weight", 1.0))
    parts[spec] = (w, load_external(spec, **kwargs))
  return MixedReward(parts)
