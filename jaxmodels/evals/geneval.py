"""GenEval scoring with the official rules (djghosh13/geneval @ af4902f; shared/spec/evals.md §1).

What lives here is everything except the detector: reading the official prompt file, reading and
writing the official image-folder layout (with the completeness check the official tool lacks),
the per-image rules (`evaluate_detections`, pure), the official `results.jsonl` rows and the
`summary_scores` summary, and a driver (`score_folder`) that runs any `Detector` over a folder.

Folder layout (official):

  <folder>/00000/metadata.jsonl     one JSON object: line 0 of evaluation_metadata.jsonl
  <folder>/00000/samples/0000.png   4 images per prompt (any "<digits>.png" name is read)

Example:
  prompts = read_metadata("evaluation_metadata.jsonl")
  out = score_folder("samples_dir", "evaluation_metadata.jsonl", MyDetector(), out_dir="scores")
  print(out["summary"]["overall"])
  ok, reason = evaluate_detections(prompts[0], [{"class": "bench", "box": [10, 10, 90, 60],
                                                 "score": 0.95, "color": "brown"}])

Choices where the official code is silent or random (none changes a verdict):
  - detections of equal score keep the order the detector gave (the official argsort is unstable);
  - position relations in a `reason` are listed alphabetically (the official joins a Python set);
  - a detection whose `color` is None never satisfies a colour clause and is not listed in the
    colour part of the reason (the official CLIP classifier always returns one of `COLORS`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from jaxmodels.evals import EvalInputError, reports

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")
IMAGES_PER_PROMPT = 4
_PNG_NAME = re.compile(r"\d+\.png")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class Detector(Protocol):
  """Finds objects (e.g. Mask2Former + CLIP colours, or a ShapesWorld palette detector).

  `detect` gets one RGB image, uint8 [H, W, 3] (EXIF orientation already applied), and returns
  every detection it has, highest confidence or not (the rules apply the thresholds), each
  `{"class": str, "box": [x1, y1, x2, y2], "score": float, "color": str | None}` with the box in
  pixels and `color` one of `COLORS` (the colour of that object) or None when not classified.
  """

  def detect(self, image: np.ndarray) -> list[dict]:
    ...


# --------------------------------------------------------------------------- prompt file

def _check_clause(clause: Any, where: str, index: int, *, exclude: bool) -> None:
  if not isinstance(clause, dict):
    raise EvalInputError(f"{where}: clause {index} is not an object")
  if not isinstance(clause.get("class"), str):
    raise EvalInputError(f"{where}: clause {index} has no string field 'class'")
  count = clause.get("count")
  if not isinstance(count, int) or isinstance(count, bool) or count < 1:
    raise EvalInputError(f"{where}: clause {index} field 'count' must be an integer >= 1")
  if exclude:
    return
  if "color" in clause and clause["color"] not in COLORS:
    raise EvalInputError(f"{where}: clause {index} field 'color' is {clause['color']!r}, "
                         f"not one of {', '.join(COLORS)}")
  if "position" in clause:
    pos = clause["position"]
    if (not isinstance(pos, (list, tuple)) or len(pos) != 2 or pos[0] not in RELATIONS
        or not isinstance(pos[1], int) or not 0 <= pos[1] < index):
      raise EvalInputError(f"{where}: clause {index} field 'position' must be [relation, index of "
                           f"an earlier clause] with relation in {RELATIONS}, got {pos!r}")


def validate_metadata(metadata: Any, where: str = "metadata") -> dict:
  """Checks one prompt record (tag one of `TAGS`, prompt, include/exclude clauses); returns it
  unchanged.

  Raises:
    EvalInputError: naming `where` and the offending field.
  """
  if not isinstance(metadata, dict):
    raise EvalInputError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
  for field in ("tag", "prompt"):
    if not isinstance(metadata.get(field), str):
      raise EvalInputError(f"{where}: missing string field '{field}'")
  if metadata["tag"] not in TAGS:
    raise EvalInputError(f"{where}: unknown tag {metadata['tag']!r}; expected one of {', '.join(TAGS)}")
  include = metadata.get("include")
  if not isinstance(include, list) or not include:
    raise EvalInputError(f"{where}: field 'include' must be a non-empty list")
  for i, clause in enumerate(include):
    _check_clause(clause, where, i, exclude=False)
  exclude = metadata.get("exclude", [])
  if not isinstance(exclude, list):
    raise EvalInputError(f"{where}: field 'exclude' must be a list")
  for i, clause in enumerate(exclude):
    _check_clause(clause, where, i, exclude=True)
  return metadata


def read_metadata(path: str | os.PathLike) -> list[dict]:
  """Reads the official `evaluation_metadata.jsonl` (or a rewritten-prompt variant with the same
  fields): one prompt record per non-empty line, in file order (the order fixes folder indices).

  Raises:
    EvalInputError: if the file is missing or a line is not a valid prompt record ("file:line").
  """
  rows = reports.read_jsonl(path)
  if not rows:
    raise EvalInputError(f"{path}: no prompts in file")
  # read_jsonl skips blank lines: number the records by the lines they came from.
  text = Path(path).read_text(encoding="utf-8").splitlines()
  lines = [n for n, line in enumerate(text, 1) if line.strip()]
  return [validate_metadata(r, f"{path}:{n}: prompt {i}") for i, (n, r) in enumerate(zip(lines, rows))]


# --------------------------------------------------------------------------- rules (pure)

def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
  """IoU with the official +1-pixel area convention (inclusive integer corners)."""
  def area(b):
    return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)
  inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]),
                min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
  union = area(box_a) + area(box_b) - inter
  return inter / union if union else 0.0


def relative_position(box_a: Sequence[float], box_b: Sequence[float], *,
                      position_threshold: float = 0.1) -> set[str]:
  """Relations of box A relative to box B (evals.md §1.7), a subset of `RELATIONS`.

  The centre offset A−B is shrunk on each axis by `position_threshold` × (size_A + size_B),
  clamped at 0, divided by the length of the unshrunk offset; a component beyond ±0.5 names a
  relation (image y points down). Two 50-px boxes with centres 100 px apart on x give dx = −0.9:
  A is "left of" B.
  """
  a = np.asarray(box_a[:4], np.float64).reshape(2, 2)
  b = np.asarray(box_b[:4], np.float64).reshape(2, 2)
  offset = a.mean(0) - b.mean(0)
  size_sum = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
  shrunk = np.maximum(np.abs(offset) - position_threshold * size_sum, 0) * np.sign(offset)
  if np.all(np.abs(shrunk) < 1e-3):
    return set()
  dx, dy = shrunk / np.linalg.norm(offset)
  tests = (("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5),
           ("below", dy > 0.5))
  return {name for name, holds in tests if holds}


def _check_detection(det: Any, i: int) -> None:
  if not isinstance(det, dict) or not isinstance(det.get("class"), str):
    raise EvalInputError(f"detection {i}: needs a string field 'class'")
  box = det.get("box")
  if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
    raise EvalInputError(f"detection {i} ({det['class']}): field 'box' must be [x1, y1, x2, y2]")
  if not isinstance(det.get("score"), (int, float, np.floating, np.integer)):
    raise EvalInputError(f"detection {i} ({det['class']}): field 'score' must be a number")


def filter_detections(detections: Iterable[dict], *, tag: str, threshold: float = 0.3,
                      counting_threshold: float = 0.9, max_objects: int = 16,
                      max_overlap: float = 1.0) -> dict[str, list[dict]]:
  """Per-class filtering of evals.md §1.4: class → kept detections, best score first.

  Per class: sort by score (descending; ties keep input order), keep score > threshold
  (`counting_threshold` for every class when `tag == "counting"`), keep the first `max_objects`,
  then greedy NMS dropping boxes whose IoU with a kept box is >= `max_overlap` (1.0 disables it).
  Classes with nothing left are absent.
  """
  cut = counting_threshold if tag == "counting" else threshold
  by_class: dict[str, list[dict]] = {}
  for i, det in enumerate(detections):
    _check_detection(det, i)
    by_class.setdefault(det["class"], []).append(det)
  kept = {}
  for name, dets in by_class.items():
    order = sorted(dets, key=lambda d: -float(d["score"]))
    order = [d for d in order if float(d["score"]) > cut][:max_objects]
    chosen = []
    while order:
      best = order.pop(0)
      chosen.append(best)
      order = [d for d in order if max_overlap == 1 or box_iou(best["box"], d["box"]) < max_overlap]
    if chosen:
      kept[name] = chosen
  return kept


def _judge(metadata: dict, objects: dict[str, list[dict]],
           position_threshold: float) -> tuple[bool, str]:
  """The official per-image verdict on filtered detections (evals.md §1.5)."""
  correct = True
  reasons = []
  groups: list[list[dict] | None] = []
  for clause in metadata.get("include", []):
    name, count = clause["class"], clause["count"]
    found = objects.get(name, [])[:count]
    matched = True
    if len(found) < count:
      correct = matched = False
      reasons.append(f"expected {name}>={count}, found {len(found)}")
    else:
      if "color" in clause:
        want = clause["color"]
        colors = [d.get("color") for d in found]
        if colors.count(want) < count:
          correct = matched = False
          seen = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
          reasons.append(f"expected {want} {name}>={count}, found {colors.count(want)} {want}; "
                         f"and {seen}")
      if "position" in clause and matched:
        rel, target = clause["position"]
        if groups[target] is None:
          correct = matched = False
          reasons.append(f"no target for {name} to be {rel}")
        else:
          for obj, other in itertools.product(found, groups[target]):  # stop at the first miss
            rels = relative_position(obj["box"], other["box"],
                                     position_threshold=position_threshold)
            if rel not in rels:
              correct = matched = False
              reasons.append(f"expected {name} {rel} target, found "
                             f"{' and '.join(sorted(rels))} target")
              break
    groups.append(found if matched else None)
  for clause in metadata.get("exclude", []):
    name = clause["class"]
    n = len(objects.get(name, []))
    if n >= clause["count"]:
      correct = False
      reasons.append(f"expected {name}<{clause['count']}, found {n}")
  return correct, "\n".join(reasons)


def evaluate_detections(metadata: dict, detections: list[dict], *, threshold: float = 0.3,
                        counting_threshold: float = 0.9, max_objects: int = 16,
                        max_overlap: float = 1.0,
                        position_threshold: float = 0.1) -> tuple[bool, str]:
  """GenEval's verdict for one image: (correct, reason), the official rules of evals.md §1.4–1.8.

  Include clauses are ANDed: the top-`count` detections of the class must exist, at least `count`
  of them must carry the clause's `color`, and every pair (this clause's objects × the target
  clause's objects) must stand in the clause's `position` relation. Exclude clauses fail the image
  when at least `count` detections of the class survive the filter. `reason` is "" when correct,
  else the official messages joined by newlines, e.g. "expected dog>=2, found 1".

  Args:
    metadata: one prompt record (`tag`, `include`, optional `exclude`).
    detections: `{"class", "box": [x1, y1, x2, y2], "score", "color"}` dicts (see `Detector`).
    threshold: score cut (strictly greater) for non-counting prompts.
    counting_threshold: score cut for every class of a `counting` prompt.
    max_objects: detections kept per class after the cut.
    max_overlap: NMS IoU threshold; 1.0 (official default) disables NMS.
    position_threshold: the shrink factor of the position rule.

  Example:
    meta = {"tag": "counting", "include": [{"class": "cat", "count": 2}],
            "exclude": [{"class": "cat", "count": 3}]}
    evaluate_detections(meta, [{"class": "cat", "box": [0, 0, 9, 9], "score": 0.95},
                               {"class": "cat", "box": [20, 0, 29, 9], "score": 0.5}])
    # -> (False, "expected cat>=2, found 1")   (0.5 is below the counting threshold 0.9)
  """
  objects = filter_detections(detections, tag=metadata.get("tag", ""), threshold=threshold,
                              counting_threshold=counting_threshold, max_objects=max_objects,
                              max_overlap=max_overlap)
  return _judge(metadata, objects, position_threshold)


def result_record(filename: str | os.PathLike, metadata: dict, detections: list[dict],
                  **rules: float) -> dict:
  """One official `results.jsonl` row: filename, tag, prompt, correct, reason, metadata (JSON
  string) and details (JSON string: class → [[x1, y1, x2, y2, score], ...] of the kept boxes).
  `rules` are the keyword options of `evaluate_detections`."""
  filter_kw = {k: v for k, v in rules.items() if k != "position_threshold"}
  objects = filter_detections(detections, tag=metadata.get("tag", ""), **filter_kw)
  correct, reason = _judge(metadata, objects, rules.get("position_threshold", 0.1))
  details = {name: [[float(v) for v in d["box"]] + [float(d["score"])] for d in dets]
             for name, dets in objects.items()}
  return {"filename": str(filename), "tag": metadata["tag"], "prompt": metadata["prompt"],
          "correct": bool(correct), "reason": reason, "metadata": json.dumps(metadata),
          "details": json.dumps(details)}


# --------------------------------------------------------------------------- summary

def summarize(results: Iterable[dict]) -> dict:
  """The official `summary_scores` numbers from result rows (each needs `tag`, `correct` and
  `metadata` (string or dict; rows are grouped into prompts by it) or `prompt`).

  Returns:
    {"total_images", "total_prompts", "correct_images" (fraction of images correct),
     "correct_prompts" (fraction of prompts with at least one correct image),
     "tags": {tag: {"correct", "total", "accuracy"}} in first-seen order,
     "overall": unweighted mean of the per-tag accuracies (macro over tags)}.

  Example:
    summarize([{"tag": "colors", "prompt": "p", "correct": True},
               {"tag": "colors", "prompt": "p", "correct": False}])["overall"]   # 0.5
  """
  tags: dict[str, list[int]] = {}
  prompts: dict[str, bool] = {}
  n_images = n_correct = 0
  for i, row in enumerate(results):
    if "tag" not in row or "correct" not in row:
      raise EvalInputError(f"result row {i}: needs fields 'tag' and 'correct'")
    key = row.get("metadata", row.get("prompt"))
    if key is None:
      raise EvalInputError(f"result row {i}: needs field 'metadata' or 'prompt'")
    key = key if isinstance(key, str) else json.dumps(key, sort_keys=True)
    ok = bool(row["correct"])
    counts = tags.setdefault(row["tag"], [0, 0])
    counts[0] += ok
    counts[1] += 1
    prompts[key] = prompts.get(key, False) or ok
    n_images += 1
    n_correct += ok
  if not n_images:
    raise EvalInputError("GenEval results: no rows to summarize")
  per_tag = {t: {"correct": c, "total": n, "accuracy": c / n} for t, (c, n) in tags.items()}
  return {"total_images": n_images, "total_prompts": len(prompts),
          "correct_images": n_correct / n_images,
          "correct_prompts": sum(prompts.values()) / len(prompts),
          "tags": per_tag,
          "overall": float(np.mean([v["accuracy"] for v in per_tag.values()]))}


write_results = reports.write_jsonl  # rows -> results.jsonl (official schema)
read_results = reports.read_jsonl  # ours or the official tool's results.jsonl
format_summary = reports.geneval_summary_text
write_summary = reports.write_geneval_summary


# --------------------------------------------------------------------------- folder layout

def write_prompt_images(folder: str | os.PathLike, index: int, metadata: dict,
                        images: Sequence[Any]) -> list[Path]:
  """Writes one prompt's entry of the official layout: `<folder>/<index:05d>/metadata.jsonl` (the
  record as one JSON object) and `samples/<j:04d>.png` per image (uint8 [H, W, 3] arrays or PIL
  images). Returns the image paths."""
  from PIL import Image
  sub = Path(folder) / f"{index:05d}"
  (sub / "samples").mkdir(parents=True, exist_ok=True)
  (sub / "metadata.jsonl").write_text(json.dumps(metadata) + "\n", encoding="utf-8")
  paths = []
  for j, img in enumerate(images):
    if not isinstance(img, Image.Image):
      img = Image.fromarray(np.asarray(img, np.uint8))
    path = sub / "samples" / f"{j:04d}.png"
    img.save(path)
    paths.append(path)
  return paths


@dataclasses.dataclass
class FolderReport:
  """What a GenEval image folder holds compared with the prompt file.

  Fields map prompt indices to problems: `missing_folders` (no `<index>` subfolder),
  `missing_metadata` (no or unreadable metadata.jsonl), `missing_images` (index → how many PNGs
  short), `extra_images` (index → PNGs beyond the expected number; scored, like the official tool
  does), `ignored_files` (index → image files the official tool skips, e.g. JPEGs),
  `mismatched` (metadata whose tag/include/exclude differ from the prompt file),
  `unexpected_folders` (digit folders past the prompt file's end), `metadata_errors` (index →
  why that folder's metadata.jsonl was refused, naming the file).
  """
  expected_prompts: int
  images_per_prompt: int
  missing_folders: list[int] = dataclasses.field(default_factory=list)
  missing_metadata: list[int] = dataclasses.field(default_factory=list)
  missing_images: dict[int, int] = dataclasses.field(default_factory=dict)
  extra_images: dict[int, int] = dataclasses.field(default_factory=dict)
  ignored_files: dict[int, list[str]] = dataclasses.field(default_factory=dict)
  mismatched: list[int] = dataclasses.field(default_factory=list)
  unexpected_folders: list[str] = dataclasses.field(default_factory=list)
  metadata_errors: dict[int, str] = dataclasses.field(default_factory=dict)

  @property
  def complete(self) -> bool:
    return not (self.missing_folders or self.missing_metadata or self.missing_images
                or self.mismatched)

  def describe(self) -> str:
    """One line per kind of problem, e.g. "2 prompt folders missing: 00003, 00007"."""
    def ids(xs):
      names = [x if isinstance(x, str) else f"{x:05d}" for x in sorted(xs)]
      return ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    short = {f"{i:05d} (-{n})" for i, n in self.missing_images.items()}
    items = [
        (self.missing_folders, f"{len(self.missing_folders)} prompt folders missing"),
        (self.missing_metadata, f"{len(self.missing_metadata)} folders without a readable "
                                "metadata.jsonl"),
        (short, f"{sum(self.missing_images.values())} images missing in "
                f"{len(self.missing_images)} folders (expected {self.images_per_prompt} PNGs)"),
        (self.mismatched, f"{len(self.mismatched)} metadata.jsonl differ from the prompt file"),
        (self.ignored_files, f"{sum(map(len, self.ignored_files.values()))} non-PNG images "
                             "ignored (GenEval reads only <digits>.png)"),
        (self.extra_images, f"{sum(self.extra_images.values())} extra images (scored)"),
        (self.unexpected_folders, f"{len(self.unexpected_folders)} folders past the prompt file "
                                  "ignored")]
    return "\n".join(f"{label}: {ids(xs)}" for xs, label in items if xs)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _same_rules(a: dict, b: dict) -> bool:
  return all(a.get(k) == b.get(k) for k in ("tag", "include", "exclude"))


def scan_folder(folder: str | os.PathLike, prompts: Sequence[dict], *,
                images_per_prompt: int = IMAGES_PER_PROMPT) -> tuple[FolderReport, list[dict]]:
  """Reads the layout: returns (report, entries) where each entry is
  `{"index", "metadata", "images": [png paths, sorted]}` for the folders that can be scored.

  Raises:
    EvalInputError: if `folder` is not a directory.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise EvalInputError(f"{folder}: GenEval image folder not found")
  report = FolderReport(len(prompts), images_per_prompt)
  subdirs = {}
  for p in sorted(folder.iterdir()):
    if p.is_dir() and p.name.isdigit():
      if int(p.name) < len(prompts):
        subdirs.setdefault(int(p.name), p)
      else:
        report.unexpected_folders.append(p.name)
  entries = []
  for index in range(len(prompts)):
    sub = subdirs.get(index)
    if sub is None:
      report.missing_folders.append(index)
      continue
    meta_file = sub / "metadata.jsonl"
    try:
      metadata = json.loads(meta_file.read_text(encoding="utf-8"))
      validate_metadata(metadata, str(meta_file))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, EvalInputError) as e:
      report.missing_metadata.append(index)
      report.metadata_errors[index] = (
          f"{meta_file}: missing" if isinstance(e, FileNotFoundError) else
          f"{meta_file}: invalid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else
          str(e) if isinstance(e, EvalInputError) else f"{meta_file}: unreadable ({e})")
      metadata = None
    if metadata is not None and not _same_rules(metadata, prompts[index]):
      report.mismatched.append(index)
    samples = sub / "samples"
    names = sorted(p.name for p in samples.iterdir() if p.is_file()) if samples.is_dir() else []
    pngs = [samples / n for n in names if _PNG_NAME.fullmatch(n)]
    ignored = [n for n in names if n.lower().endswith(_IMAGE_SUFFIXES)]
    if ignored:
      report.ignored_files[index] = ignored
    if len(pngs) < images_per_prompt:
      report.missing_images[index] = images_per_prompt - len(pngs)
    elif len(pngs) > images_per_prompt:
      report.extra_images[index] = len(pngs) - images_per_prompt
    if metadata is not None and pngs:
      entries.append({"index": index, "metadata": metadata, "images": pngs})
  return report, entries


def check_folder(folder: str | os.PathLike, prompts: Sequence[dict], *,
                 images_per_prompt: int = IMAGES_PER_PROMPT,
                 allow_incomplete: bool = False) -> tuple[FolderReport, list[dict]]:
  """`scan_folder`, refusing an incomplete folder unless `allow_incomplete`.

  Raises:
    EvalInputError: one line naming the folder and what is missing, when incomplete and not
      allowed.
  """
  if isinstance(images_per_prompt, bool) or not isinstance(images_per_prompt, int) \
      or images_per_prompt < 1:
    raise EvalInputError(f"images_per_prompt must be an integer >= 1, got {images_per_prompt!r}")
  report, entries = scan_folder(folder, prompts, images_per_prompt=images_per_prompt)
  if not report.complete and not allow_incomplete:
    problems = "; ".join(report.describe().splitlines()[:4])
    first = next(iter(sorted(report.metadata_errors.items())), None)
    detail = f" (first: {first[1]})" if first else ""
    raise EvalInputError(f"{folder}: incomplete GenEval folder ({len(prompts)} prompts x "
                         f"{images_per_prompt} images expected): {problems}{detail}; pass "
                         f"allow_incomplete=True to score what is there")
  return report, entries


def verify_images(paths: Iterable[str | os.PathLike]) -> None:
  """Checks that every file decodes as an image (Pillow's `verify`: headers and chunk checksums,
  without decoding pixels), so a broken sample is refused before a detector is built.

  Raises:
    EvalInputError: naming the first unreadable file.
  """
  from PIL import Image
  for path in paths:
    try:
      with Image.open(path) as img:
        img.verify()
    except (OSError, ValueError, SyntaxError) as e:   # Pillow raises SyntaxError for broken PNGs
      raise EvalInputError(f"{path}: unreadable image ({_one_line(e)})") from None


def check_inputs(folder: str | os.PathLike, metadata_path: str | os.PathLike, *,
                 images_per_prompt: int = IMAGES_PER_PROMPT,
                 allow_incomplete: bool = False) -> tuple[list[dict], FolderReport, list[dict]]:
  """Everything `score_folder` reads, checked before any detector exists: the prompt file, the
  folder against it (`check_folder`) and every image. Returns (prompts, report, entries).

  Raises:
    EvalInputError: one line naming the file (and line or field) at fault.
  """
  prompts = read_metadata(metadata_path)
  report, entries = check_folder(folder, prompts, images_per_prompt=images_per_prompt,
                                 allow_incomplete=allow_incomplete)
  verify_images(p for e in entries for p in e["images"])
  return prompts, report, entries


def _one_line(err: Exception) -> str:
  return " ".join(str(err).split()) or type(err).__name__


def load_image(path: str | os.PathLike) -> np.ndarray:
  """An image file as RGB uint8 [H, W, 3], EXIF orientation applied (as the official tool)."""
  from PIL import Image, ImageOps
  try:
    with Image.open(path) as img:
      return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), np.uint8)
  except (OSError, ValueError) as e:
    raise EvalInputError(f"{path}: unreadable image ({e})") from None


def score_folder(folder: str | os.PathLike, metadata_path: str | os.PathLike,
                 detector: Detector | Callable[[], Detector], *, out_dir: str | os.PathLike | None = None,
                 images_per_prompt: int = IMAGES_PER_PROMPT, allow_incomplete: bool = False,
                 progress: bool = True, threshold: float = 0.3, counting_threshold: float = 0.9,
                 max_objects: int = 16, max_overlap: float = 1.0,
                 position_threshold: float = 0.1, checked: tuple | None = None) -> dict:
  """Scores a GenEval image folder with `detector` and the official rules.

  The inputs are checked first (`check_inputs`: the prompt file, the folder against it, refused
  when incomplete unless `allow_incomplete`, and every image), before `detector` is called when it
  is a factory (a class or a zero-argument function), so a bad input costs no model load; `checked`
  passes the result of an earlier `check_inputs` on the same arguments. Each image's metadata is the folder's
  own metadata.jsonl, as in the official tool. With `out_dir`, `results.jsonl` is written row by
  row (rows already scored survive a crash), then `summary_scores.txt` and `summary.json`.

  Returns:
    {"results": rows, "summary": summarize(rows) plus "incomplete" (report dict or None),
     "report": FolderReport}.

  Example:
    out = score_folder("gen/geneval", "evaluation_metadata.jsonl", detector, out_dir="scores")
  """
  from tqdm.auto import tqdm
  _, report, entries = checked or check_inputs(folder, metadata_path,
                                               images_per_prompt=images_per_prompt,
                                               allow_incomplete=allow_incomplete)
  if isinstance(detector, type) or not hasattr(detector, "detect"):
    detector = detector()      # a factory: built only now that the inputs are known to be good
  rules = dict(threshold=threshold, counting_threshold=counting_threshold,
               max_objects=max_objects, max_overlap=max_overlap,
               position_threshold=position_threshold)
  jobs = [(e["metadata"], p) for e in entries for p in e["images"]]
  results = []
  sink = None
  if out_dir is not None:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    sink = (Path(out_dir) / "results.jsonl").open("w", encoding="utf-8")
  try:
    # Detectors with `detect_batch` (e.g. `hf`) get `batch_size` images at a time.
    step = max(1, int(getattr(detector, "batch_size", 1))) if hasattr(
        detector, "detect_batch") else 1
    with tqdm(total=len(jobs), desc="GenEval", unit="img", disable=not progress) as bar:
      for start in range(0, len(jobs), step):
        chunk = jobs[start:start + step]
        images = [load_image(path) for _, path in chunk]
        found = detector.detect_batch(images) if step > 1 else [detector.detect(images[0])]
        for (metadata, path), detections in zip(chunk, found):
          row = result_record(path, metadata, detections, **rules)
          results.append(row)
          if sink is not None:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        bar.update(len(chunk))
  finally:
    if sink is not None:
      sink.close()
  if not results:
    raise EvalInputError(f"{folder}: no scorable images ({report.describe() or 'empty folder'})")
  summary = summarize(results)
  summary["incomplete"] = None if report.complete else report.as_dict()
  if out_dir is not None:
    digest = hashlib.sha256(Path(metadata_path).read_bytes()).hexdigest()
    settings = dict(rules, images_per_prompt=images_per_prompt, metadata_file=str(metadata_path),
                    metadata_sha256=digest, folder=str(folder), complete=report.complete)
    write_summary(out_dir, summary, settings)
  return {"results": results, "summary": summary, "report": report}
