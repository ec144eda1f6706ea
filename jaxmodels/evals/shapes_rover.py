"""ShapesWorld-ROVER: ROVER-style edit tasks on ShapesWorld scenes, scored exactly (no judge).

IG (reasoning-informed image editing): a source scene and an edit instruction (spatial,
quantitative, colour or sequence; `jaxmodels/shapes_world/edits.py` builds the pairs); the
model returns an image and, optionally, a reasoning text. TG (draw, then answer): the same edit
followed by a question about the edited scene; the model draws the intermediate scene and answers.

Metrics of one IG output, each exact in 0..1 (`score_ig`), from the detections of a GenEval
detector (`detectors.ShapesDetector` by default) and the known target scene:
  RV  target state met: the detected (shape, colour) multiset equals the target's, and every
      moved object satisfies its instruction (the GenEval relation to the reference object holds
      on the detected boxes, or its box lies in the asked half, 1 px slack). 0 or 1.
  VC  untouched objects preserved: the fraction of source objects no step touches that are
      detected with the same shape and colour, centre within 8% of the side and box size within
      25%. Missing when every object is touched.
  RP  the reasoning names the right target: the fraction of the instruction's key words (the
      referred object's shape/colour, the new colour, relation or half, the added shape) that
      the text contains. Missing when the text is empty.
  RA  text and image agree: the fraction of changed objects (source objects not preserved,
      detections matching no source object) whose shape or colour the text mentions; 0 when the
      image shows no change. Missing when the text is empty.
  IQ  detector confidence: the sum of the accepted objects' scores over max(components found,
      target objects); 1 on a clean render of the target.
TG: accuracy (the text after the last "answer:", or the whole text, equals the answer up to case
and punctuation) and image correctness (RV of the drawn scene).

Records follow `rover.summarize`: {"key": id, "result": {"<metric>_score": 1..5 or None,
"<metric>_exact": 0..1 or None}}, the 1–5 score being 1 + round(4 x), so the official
(s − 1) × 25 mapping gives 0..100; `summarize` adds the exact means × 100. Ids are
"shapes_<kind>_<n>", so `rover.parse_task_id` groups them by dimension "shapes" and kind.

Example:
  tasks = make_tasks(num_ig=8, num_tg=8)
  out = run(tasks, edit_fn, out_dir="runs/eval/rover")   # edit_fn(images, texts) -> (images, texts)
  out["IG"]["exact"]["RV"], out["TG"]["exact"]["accuracy"]
"""
from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jaxmodels.shapes_world import edits as sw_edits, geneval as sw_geneval, layout, palette
from jaxmodels.shapes_world import shapes
from jaxmodels.shapes_world.render import decode_png, encode_png, render_with_masks
from jaxmodels.shapes_world.scene import Scene, unique_reference
from jaxmodels.evals import EvalInputError, reports, rover

IG_SHORT = {"reasoning_visual": "RV", "visual_consistency": "VC", "reasoning_process": "RP",
            "reasoning_alignment": "RA", "image_quality": "IQ"}
CENTER_TOLERANCE = 0.08  # of the image side
SIZE_TOLERANCE = 0.25    # relative box side


def to_score(x: float | None) -> int | None:
  """An exact value in 0..1 as a ROVER 1–5 score (1 + round(4 x)); None stays None."""
  return None if x is None else int(1 + round(4 * float(np.clip(x, 0.0, 1.0))))


# --------------------------------------------------------------------------- tasks

def _random_scene(rng, size: int) -> Scene | None:
  n = int(rng.integers(2, 5))
  specs = [(shapes.SHAPES[int(rng.integers(6))], palette.COLORS[int(rng.integers(10))])
           for _ in range(n)]
  return layout.place(rng, specs, image_size=size)


def _tg_question(scene: Scene, target: Scene, edit: dict, size: int) -> tuple[str, str]:
  """(question, answer) about the edited scene."""
  if edit["kind"] == "colour":
    for k, obj in enumerate(target.objects):
      before = scene.objects[k] if k < len(scene) else None
      if obj != before and target.count(shape=obj.shape) == 1:
        return f"What color is the {obj.shape}?", obj.color
  if edit["kind"] == "spatial":
    boxes = render_with_masks(target, size).boxes
    refs = [unique_reference(target, k, allow_color_only=False) for k in range(len(target))]
    for a in range(len(target)):
      for b in range(len(target)):
        if a != b and refs[a] and refs[b] and target.objects[a].shape != target.objects[b].shape:
          rel = sw_geneval.clear_relation(boxes[a], boxes[b])
          if rel is not None and target.objects[a] != scene.objects[a]:
            return f"Where is the {refs[a]} relative to the {refs[b]}?", rel
  return "How many objects are there?", str(len(target))


def make_tasks(*, seed: int = 0, num_ig: int = 8, num_tg: int = 8, image_size: int = 32,
               kinds: Sequence[str] = sw_edits.EDIT_KINDS) -> dict[str, list[dict]]:
  """ShapesWorld-ROVER tasks, deterministic; kinds cycle in order.

  Returns:
    {"IG": [task], "TG": [task]}; a task has id, dimension ("shapes"), reasoning_type (IG) or
    problem_type (TG) = the edit kind, prompt, image (PNG bytes of the source at `image_size`),
    source / target (Scene dicts), steps, kind; TG adds question and answer.
  """
  bad = [k for k in kinds if k not in sw_edits.EDIT_KINDS]
  if bad:
    raise EvalInputError(f"ShapesWorld-ROVER: unknown edit kind(s) {bad}")
  out: dict[str, list[dict]] = {"IG": [], "TG": []}
  for config, count, code in (("IG", num_ig, 0), ("TG", num_tg, 1)):
    for n in range(count):
      kind = kinds[n % len(kinds)]
      for attempt in range(200):
        rng = np.random.default_rng([seed, 7, code, n, attempt])
        scene = _random_scene(rng, image_size)
        edit = None if scene is None else sw_edits.make_edit(rng, scene, image_size=image_size,
                                                             kind=kind)
        if edit is not None and edit["kind"] == kind:
          break
      else:
        raise EvalInputError(f"ShapesWorld-ROVER: no {kind} edit at {image_size}px")
      target = Scene.from_dict(edit["target"])
      task = {"id": f"shapes_{kind}_{n}", "dimension": "shapes", "kind": kind,
              "prompt": edit["instruction"],
              "image": encode_png(render_with_masks(scene, image_size).image),
              "source": scene.to_dict(), "target": edit["target"], "steps": edit["steps"]}
      if config == "IG":
        task["reasoning_type"] = kind
      else:
        question, answer = _tg_question(scene, target, edit, image_size)
        task.update(problem_type=kind, question=question, answer=answer,
                    prompt=f"{edit['instruction']} Draw the resulting image, then answer: "
                           f"{question}")
      out[config].append(task)
  return out


# --------------------------------------------------------------------------- matching

def _trace(task: dict) -> dict[str, Any]:
  """Follows the steps: which source objects are touched, and the final index of each moved
  object with its constraint and of the relation's reference object."""
  scene = Scene.from_dict(task["source"])
  ids: list[Any] = list(range(len(scene)))  # identity of each current object
  touched, moves, words = set(), [], []
  for step in task["steps"]:
    op = step["op"]
    if op in ("recolor", "move", "remove"):
      k = step["index"]
      if isinstance(ids[k], int):  # a source object (added ones are not "untouched" anyway)
        touched.add(ids[k])
      ref = unique_reference(scene, k) or scene.objects[k].phrase
      words += [w for w in ref.split() if w != "object"]
    if op == "recolor":
      words.append(step["color"])
    elif op == "move":
      rel = step.get("relation")
      words.append(rel.split()[0] if rel else step["region"])
      moves.append({"id": ids[step["index"]], "relation": rel, "region": step.get("region"),
                    "ref": ids[step["ref"]] if rel else None})
    elif op == "add":
      obj = step["object"]
      words.append(obj["shape"])
      if f"{obj['color']} {obj['shape']}" in task["prompt"]:
        words.append(obj["color"])
      ids.append(f"new{len(ids)}")
    elif op == "remove":
      ids.pop(step["index"])
    scene = sw_edits.apply_step(scene, step)
  final = {ident: k for k, ident in enumerate(ids)}
  return {"touched": touched, "moves": moves, "final": final, "words": list(dict.fromkeys(words))}


def _center(box) -> np.ndarray:
  return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)


def _same_place(det: dict, box, side: int) -> bool:
  b = det["box"]
  if np.linalg.norm(_center(b) - _center(box)) > CENTER_TOLERANCE * side:
    return False
  dw, dh = b[2] - b[0], b[3] - b[1]
  tw, th = max(box[2] - box[0], 1), max(box[3] - box[1], 1)
  return abs(dw - tw) <= SIZE_TOLERANCE * tw + 1 and abs(dh - th) <= SIZE_TOLERANCE * th + 1


def _find(dets: list[dict], obj: dict, box, side: int, used: set) -> int | None:
  for i, d in enumerate(dets):
    if i not in used and d["class"] == obj["shape"] and d.get("color") == obj["color"] and \
        _same_place(d, box, side):
      return i
  return None


def _moved_ok(move: dict, dets: list[dict], target: Scene, final: dict, side: int) -> bool:
  k = final.get(move["id"])
  if k is None:  # removed later in the sequence
    return True
  obj = target.objects[k]
  cands = [d for d in dets if d["class"] == obj.shape and d.get("color") == obj.color]
  if move["region"]:
    x0, y0, x1, y1 = {"left": (0, 0, side / 2, side), "right": (side / 2, 0, side, side),
                      "top": (0, 0, side, side / 2), "bottom": (0, side / 2, side, side)}[
                          move["region"]]
    return any(d["box"][0] >= x0 - 1 and d["box"][1] >= y0 - 1 and d["box"][2] <= x1 + 1
               and d["box"][3] <= y1 + 1 for d in cands)
  j = final.get(move["ref"])
  if j is None:
    return True
  ref = target.objects[j]
  refs = [d for d in dets if d["class"] == ref.shape and d.get("color") == ref.color]
  return any(move["relation"] in sw_geneval.relative_position(a["box"], b["box"])
             for a in cands for b in refs if a is not b)


def components(detector, image: np.ndarray) -> tuple[list[dict], int]:
  """(accepted detections, number of components found) of one image."""
  if hasattr(detector, "analyze"):
    comps = detector.analyze(image)
    return [c.detection() for c in comps if c.accepted], len(comps)
  dets = [d for d in detector.detect(image) if d["score"] > 0.3]
  return dets, len(dets)


def _mentions(text: str, word: str) -> bool:
  forms = {word, shapes.plural(word)} if word in shapes.SHAPES else {word}
  return any(re.search(rf"\b{re.escape(f)}\b", text) for f in forms)


def _state_ok(task: dict, dets: list[dict], side: int, info: dict) -> bool:
  target = Scene.from_dict(task["target"])
  want = collections.Counter((o.shape, o.color) for o in target.objects)
  got = collections.Counter((d["class"], d.get("color")) for d in dets)
  return want == got and all(_moved_ok(m, dets, target, info["final"], side)
                             for m in info["moves"])


def target_overlap(task: dict, dets: list[dict]) -> float:
  """How much of the edit's target state an output reaches, in [0, 1]: the size of the overlap of its
  detected (shape, colour) multiset (`components`' detections) with the target's over the larger of the
  two (1 exactly when RV's multiset test holds). A dense companion of RV for rewards."""
  want = collections.Counter((o["shape"], o["color"]) for o in task["target"]["objects"])
  got = collections.Counter((d["class"], d.get("color")) for d in dets)
  return sum((want & got).values()) / max(sum(want.values()), sum(got.values()), 1)


def score_ig(task: dict, image: np.ndarray, text: str | None, detector, found=None) -> dict:
  """Exact IG metrics of one output (see the module docstring).

  Args:
    task: a `make_tasks` IG task.
    image: the edited image, uint8 [S, S, 3] (any S).
    text: the reasoning text ("" or None: RP and RA missing).
    detector: a GenEval detector (`detect`, optionally `analyze`).
    found: `components(detector, image)`, when the caller has it already.

  Returns:
    {"<metric>_exact": float | None, "<metric>_score": int | None} for the five IG metrics.
  """
  image = np.asarray(image, np.uint8)
  side = image.shape[0]
  dets, n_comp = components(detector, image) if found is None else found
  info = _trace(task)
  source = Scene.from_dict(task["source"])
  src_boxes = render_with_masks(source, side).boxes
  rv = float(_state_ok(task, dets, side, info))
  used: set = set()
  kept = {}
  for k, obj in enumerate(source.objects):
    i = _find(dets, obj.to_dict(), src_boxes[k], side, used)
    if i is not None:
      used.add(i)
      kept[k] = i
  untouched = [k for k in range(len(source)) if k not in info["touched"]]
  vc = sum(k in kept for k in untouched) / len(untouched) if untouched else None
  n_target = len(task["target"]["objects"])
  iq = sum(d["score"] for d in dets) / max(n_comp, n_target, 1)
  rp = ra = None
  words_text = (text or "").lower()
  if words_text.strip():
    rp = sum(_mentions(words_text, w) for w in info["words"]) / max(len(info["words"]), 1)
    changed = [(o.shape, o.color) for k, o in enumerate(source.objects) if k not in kept]
    changed += [(d["class"], d.get("color")) for i, d in enumerate(dets) if i not in used]
    ra = (sum(any(_mentions(words_text, w) for w in c if w) for c in changed) / len(changed)
          if changed else 0.0)
  exact = {"reasoning_visual": rv, "visual_consistency": vc, "reasoning_process": rp,
           "reasoning_alignment": ra, "image_quality": iq}
  out = {}
  for metric, x in exact.items():
    out[f"{metric}_score"] = to_score(x)
    out[f"{metric}_exact"] = x
  return out


def _normalize(text: str) -> str:
  return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def tg_answer(text: str | None) -> str:
  """The answer part of a TG reply: after the last "answer:" if present, normalised."""
  text = text or ""
  parts = re.split(r"answer\s*:", text, flags=re.IGNORECASE)
  return _normalize(parts[-1])


def score_tg(task: dict, image: np.ndarray, text: str | None, detector) -> dict:
  """Exact TG metrics: accuracy (answer) and image correctness (RV of the drawn scene), as
  {"reasoning_alignment_*": accuracy, "interleaved_reasoning_*": image} score/exact pairs."""
  image = np.asarray(image, np.uint8)
  dets, _ = components(detector, image)
  correct_image = float(_state_ok(task, dets, image.shape[0], _trace(task)))
  accuracy = float(tg_answer(text) == _normalize(task["answer"]))
  return {"interleaved_reasoning_score": to_score(correct_image),
          "interleaved_reasoning_exact": correct_image,
          "reasoning_alignment_score": to_score(accuracy), "reasoning_alignment_exact": accuracy}


# --------------------------------------------------------------------------- driver

def summarize(records: Sequence[dict], config: str = "IG") -> dict:
  """`rover.summarize` of the records plus "exact": per-metric means × 100 over non-missing
  exact values (TG: "accuracy" and "image")."""
  summary = rover.summarize(records, config=config)
  names = IG_SHORT if config == "IG" else {"reasoning_alignment": "accuracy",
                                           "interleaved_reasoning": "image"}
  exact = {}
  for metric, short in names.items():
    values = [r["result"].get(f"{metric}_exact") for r in records]
    values = [v for v in values if v is not None]
    exact[short] = 100.0 * float(np.mean(values)) if values else None
  summary["exact"] = exact
  return summary


def source_images(tasks: Sequence[dict]) -> np.ndarray:
  """The tasks' source images, uint8 [N, S, S, 3]."""
  return np.stack([decode_png(t["image"]) for t in tasks])


def run(tasks: dict[str, Sequence[dict]], edit_fn: Callable, *, detector=None,
        answer_fn: Callable | None = None, out_dir: str | None = None,
        batch_size: int = 32, progress: bool = False) -> dict:
  """Runs a model on IG and TG tasks, writes the official layout, scores exactly.

  Args:
    tasks: `make_tasks` output ({"IG": [...], "TG": [...]}; either may be empty).
    edit_fn: (source images uint8 [B, H, W, 3], instructions list[str]) -> (images uint8
      [B, H', W', 3], texts list[str]); a text may be "" (no reasoning: RP / RA missing).
    detector: GenEval detector (default `detectors.ShapesDetector()`).
    answer_fn: for TG, (images, questions) -> answers, asked on the drawn images when the edit
      texts hold no answer (a model without interleaved text output); None: the edit texts.
    out_dir: writes `<out_dir>/<IG|TG>/gen_{id}.png` / `gen_{id}.txt` (the text only when
      non-empty), `rover_metrics.jsonl` and `rover_summary.json`.
    batch_size: tasks per `edit_fn` call.
    progress: show a progress bar with ETA.

  Returns:
    {"IG": summary, "TG": summary} (configs with tasks only; see `summarize`), plus "records".
  """
  from tqdm.auto import tqdm
  if detector is None:
    from jaxmodels.evals.detectors import ShapesDetector
    detector = ShapesDetector()
  result: dict[str, Any] = {"records": {}}
  for config, score_fn in (("IG", score_ig), ("TG", score_tg)):
    todo = list(tasks.get(config, ()))
    if not todo:
      continue
    records = []
    gen_dir = Path(out_dir) / config if out_dir else None
    for start in tqdm(range(0, len(todo), batch_size), desc=f"ShapesWorld-ROVER-{config}",
                      unit="batch", disable=not progress):
      chunk = todo[start:start + batch_size]
      images, texts = edit_fn(source_images(chunk), [t["prompt"] for t in chunk])
      images, texts = np.asarray(images, np.uint8), list(texts)
      if len(images) != len(chunk) or len(texts) != len(chunk):
        raise EvalInputError(f"edit_fn returned {len(images)} images / {len(texts)} texts for "
                             f"{len(chunk)} tasks")
      if config == "TG" and answer_fn is not None:
        texts = [t if t else a for t, a in
                 zip(texts, answer_fn(images, [c["question"] for c in chunk]))]
      for task, image, text in zip(chunk, images, texts):
        if gen_dir is not None:
          rover.write_output(gen_dir, task["id"], image, text or None)
        records.append({"key": task["id"], "result": score_fn(task, image, text, detector)})
    summary = summarize(records, config)
    if gen_dir is not None:
      reports.write_jsonl(gen_dir / "rover_metrics.jsonl", records)
      reports.write_json(gen_dir / "rover_summary.json", {"summary": summary, "config": config})
    result[config] = summary
    result["records"][config] = records
  return result


def score_folder(tasks: dict[str, Sequence[dict]], gen_dir: str, *, detector=None) -> dict:
  """Scores outputs already written in the layout of `run` (`<gen_dir>/<IG|TG>/gen_{id}.png`,
  optional .txt) with no model; same return value as `run`.

  Raises:
    EvalInputError: a missing or unreadable `gen_{id}.png` (naming the file).
  """
  from jaxmodels.evals import geneval
  if detector is None:
    from jaxmodels.evals.detectors import ShapesDetector
    detector = ShapesDetector()
  out: dict[str, Any] = {"records": {}}
  for config, score_fn in (("IG", score_ig), ("TG", score_tg)):
    if not tasks.get(config):
      continue
    records = []
    for task in tasks[config]:
      png, txt = rover.output_paths(Path(gen_dir) / config, task["id"])
      if not png.is_file():
        raise EvalInputError(f"{png}: missing (ShapesWorld-ROVER output)")
      text = txt.read_text(encoding="utf-8") if txt.is_file() else ""
      records.append({"key": task["id"],
                      "result": score_fn(task, geneval.load_image(png), text, detector)})
    out[config], out["records"][config] = summarize(records, config), records
  return out
