"""ColorBench scoring (tianyi-lab/ColorBench @ 3079d46; shared/spec/evals.md §2).

Rows follow the released data (HF `umd-zhou-lab/ColorBench`, split `test`): idx, id, type
(Perception / Reasoning / Robustness), task, filename, image, prompt, question, choices, answer
("(C)"). `prompt` already holds the question and the lettered options; the model input is an
instruction, a newline, then `prompt` (`build_prompt`), decoded greedily.

Answers are read with one rule for every model (`extract_choice`, documented there). To reproduce
published numbers, `score(..., official_route="open" | "api" | "cot")` mirrors the official
parser instead, quirks included (`official_answer`).

Metrics (`score`): accuracy per task; Perception, Reasoning and Overall (P&R) as micro averages
(pooled counts); Color Robustness = seed groups whose original image *and every* recoloured
variant are answered correctly, over all seed groups (a wrong original counts as not robust).

Example:
  rows = load_colorbench("ColorBench/data")                  # parquet file or folder
  texts = {r["idx"]: build_prompt(r) for r in rows}
  responses = {idx: my_model(text, image) for idx, text in texts.items()}
  result = score(rows, responses)
  result["overall"]["accuracy"], result["robustness"]["accuracy"]
"""
from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from jaxmodels.evals import EvalInputError

FIELDS = ("idx", "id", "type", "task", "filename", "image", "prompt", "question", "choices",
          "answer")
PR_TASKS = ("Color Recognition", "Color Extraction", "Object Recognition", "Color Proportion",
            "Color Comparison", "Color Counting", "Object Counting", "Color Illusion",
            "Color Mimicry", "Color Blindness")
LETTERS = "ABCDEF"

# Our wording of the official instructions (evals.md §2.3): the direct one asks to pick the
# correct option, not explain, answer with only the option letter and not repeat the answer;
# the CoT one asks to think step by step and end with the letter in parentheses like (X).
# The upstream strings (model/qwen.py at 3079d46) differ in wording: pass them as `instruction`
# to `build_prompt` to reproduce published numbers byte for byte.
DIRECT_INSTRUCTION = ("You are shown an image, an instruction and a few options; choose the "
                      "correct option. Give no explanation. Reply with only the letter of the "
                      "correct option and do not repeat the option's text.")
COT_INSTRUCTION = ("You are shown an image, an instruction and a few options; choose the correct "
                   "option. Think step by step before you answer, then finish with the letter of "
                   "the correct option inside parentheses, like (X). Use parentheses nowhere "
                   "else in your reply.")


# --------------------------------------------------------------------------- data

def _normalize_row(row: dict, where: str, position: int) -> dict:
  row = dict(row)
  row.setdefault("idx", position)
  for field in ("type", "task", "filename", "prompt", "answer"):
    if not isinstance(row.get(field), str):
      raise EvalInputError(f"{where}: row {position} has no string field '{field}'")
  choices = row.get("choices")
  if isinstance(choices, str):
    try:
      choices = json.loads(choices)
    except json.JSONDecodeError:
      choices = None
  if not isinstance(choices, (list, tuple)) or not choices:
    raise EvalInputError(f"{where}: row {position} field 'choices' must be a non-empty list")
  row["choices"] = list(choices)
  if answer_letter(row["answer"]) is None or LETTERS.index(answer_letter(row["answer"])) >= len(
      row["choices"]):
    raise EvalInputError(f"{where}: row {position} field 'answer' is {row['answer']!r}, not a "
                         f"letter among {len(row['choices'])} choices like '(A)'")
  return row


def _parquet_files(path: Path) -> list[Path]:
  if path.is_file():
    return [path]
  files = sorted(path.rglob("*.parquet"))
  if not files:
    raise EvalInputError(f"{path}: no .parquet files found")
  return files


def _check_image(data: Any, where: str, position: int) -> None:
  """One line naming the row and column when a row's image is absent or not an image file."""
  from PIL import Image
  if not isinstance(data, (bytes, bytearray)) or not data:
    raise EvalInputError(f"{where}: row {position} has no image in column 'image'")
  try:
    with Image.open(io.BytesIO(data)):   # the header only: cheap, decoded later
      pass
  except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad input
    raise EvalInputError(f"{where}: row {position} column 'image' is not a readable image "
                         f"({type(e).__name__})") from None


def load_colorbench(path: str | os.PathLike, *, with_images: bool = True,
                    require_images: bool = False) -> list[dict]:
  """Loads ColorBench rows from a local copy of the data.

  Args:
    path: a parquet file, a folder searched recursively for parquet files (e.g. the HF snapshot
      with data/test-00000-of-00001.parquet), or a JSON list of rows (the official `all_data.json`
      or `SampleCase.json` style), whose images are files named by `filename` beside it.
    with_images: keep the encoded image bytes in row["image"] (parquet) / the file path in
      row["image_path"] (JSON). Use `row_image` to decode either.
    require_images: (with `with_images`) every row must have an image: an `image` column whose
      bytes open as an image file (parquet), or an image file beside the JSON.

  Returns:
    Rows with the fields of `FIELDS` (a missing `idx` becomes the row's position; `choices` a
    list).

  Raises:
    EvalInputError: missing path or a missing/malformed field, naming the file (and the row and
      column).
  """
  path = Path(path)
  if not path.exists():
    raise EvalInputError(f"{path}: ColorBench data not found")
  if path.suffix == ".json":
    try:
      raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
      raise EvalInputError(f"{path}: invalid JSON ({e.msg})") from None
    if isinstance(raw, dict):
      raw = list(raw.values())
    rows = []
    for i, r in enumerate(raw):
      row = _normalize_row(r, str(path), i)
      if with_images:
        row["image_path"] = str(path.parent / row["filename"])
        if require_images and not os.path.isfile(row["image_path"]):
          raise EvalInputError(f"{path}: row {i} column 'filename': no image file "
                               f"{row['image_path']}")
      rows.append(row)
    return rows
  import pyarrow.parquet as pq
  rows = []
  for file in _parquet_files(path):
    names = pq.read_schema(file).names
    optional = ("idx",) if with_images and require_images else ("idx", "image")
    missing = [f for f in FIELDS if f not in names and f not in optional]
    if missing:
      raise EvalInputError(f"{file}: missing column(s) {', '.join(missing)}")
    columns = [f for f in FIELDS if f in names and (with_images or f != "image")]
    for r in pq.read_table(file, columns=columns).to_pylist():
      if isinstance(r.get("image"), dict):
        r["image"] = r["image"].get("bytes")
      if with_images and require_images:
        _check_image(r.get("image"), str(file), len(rows))
      rows.append(_normalize_row(r, str(file), len(rows)))
  return rows


def row_image(row: dict):
  """The row's image as an RGB PIL image (from parquet bytes or an image file)."""
  from PIL import Image
  try:
    if row.get("image") is not None:
      return Image.open(io.BytesIO(row["image"])).convert("RGB")
    if row.get("image_path"):
      with Image.open(row["image_path"]) as img:
        return img.convert("RGB")
  except OSError as e:
    raise EvalInputError(f"ColorBench row {row.get('idx')} ({row.get('filename')}): unreadable "
                         f"image ({e})") from None
  raise EvalInputError(f"ColorBench row {row.get('idx')}: no image (loaded with_images=False?)")


def build_prompt(row: Mapping[str, Any], *, cot: bool = False, instruction: str | None = None
                 ) -> str:
  """The model's text input: instruction, a newline, then the dataset `prompt` unchanged.

  Args:
    row: a ColorBench row.
    cot: use the chain-of-thought instruction (answer ends with "(X)").
    instruction: replaces the default instruction (e.g. the verbatim upstream string).

  Example:
    build_prompt({"prompt": "What color is the sky? Select from the following choices. "
                            "(A) Red (B) Blue"})
    # -> DIRECT_INSTRUCTION + "\\n" + "What color is the sky? ..."
  """
  if instruction is None:
    instruction = COT_INSTRUCTION if cot else DIRECT_INSTRUCTION
  return f"{instruction}\n{row['prompt']}"


# --------------------------------------------------------------------------- answer extraction

def answer_letter(answer: str) -> str | None:
  """The ground-truth letter of an answer like "(C)" (upper case), or None."""
  m = re.fullmatch(r"\s*\(?\s*([A-Fa-f])\s*\)?\s*", answer or "")
  return m.group(1).upper() if m else None


_LETTER_AFTER_CUE = (r"\s*(?:is|would\s+be|should\s+be|[:：=\-])?\s*[:：]?\s*"
                     r"(?:\(([A-Za-z])\)|\[([A-Za-z])\]|([A-Z])(?![A-Za-z0-9'’]))")
_STRONG_CUE = re.compile(r"(?:answer|correct\s+option|correct\s+choice)" + _LETTER_AFTER_CUE,
                         re.IGNORECASE)
_WEAK_CUE = re.compile(r"(?:option|choice)" + _LETTER_AFTER_CUE, re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{\s*\(?([A-Za-z])\)?\s*\}")


def _cue_letters(pattern: re.Pattern, text: str) -> list[tuple[int, str]]:
  """(position, letter) committed to after a cue. A bare lower-case letter counts only at the end
  of a sentence ("answer: e."); an "A" followed by a lower-case word is the article."""
  out = []
  for m in pattern.finditer(text):
    bare, rest = m.group(3), text[m.end():]
    if bare is not None and bare.islower() and not re.match(r"\s*(?:[.,;!)]|$)", rest):
      continue
    if bare == "A" and re.match(r"\s+[a-z]", rest):
      continue
    out.append((m.start(), (m.group(1) or m.group(2) or m.group(3)).upper()))
  return out


def extract_choice(response: str | None, num_choices: int) -> str | None:
  """The option letter a free-form response commits to, or None; one rule for every model.

  Letters are A.. up to `num_choices`; a letter outside that range never counts. Markdown
  emphasis (`*`, `` ` ``) is removed first, then the first step that yields a letter decides:

  1. Bare answer: the whole reply is one letter, optionally in ( ) or [ ] and/or followed by
     ".", ":" or ")" — "C", "(c)", "C.", "[B]", "b)" (case-insensitive).
  2. Answer cue: the last "answer" / "correct option" / "correct choice" (optionally followed by
     "is", ":" or "=") then a letter in ( ) or [ ], a standalone capital letter, or a lower-case
     letter ending the sentence — "The answer is (B)", "Answer: C", "Final answer: d." — or the
     last "\\boxed{X}". An "A" or "a" followed by a lower-case word is the article: "the answer
     is a blue car" commits to nothing.
  3. Leading letter: the reply starts with a capital letter followed by ".", ")", ":" or " -" —
     "C. Blue", "B) Green", "D: Yellow".
  4. Parenthesised letters: the last "(x)" — CoT style "(A) is black, (B) is yellow, so (B)".
  5. Option cue: as step 2 after "option" / "choice" — "I pick option B".
  6. Trailing letter: the reply ends with a capital letter after ",", ";", ":", "(" or after
     "so / thus / therefore / hence / is / be", optionally followed by "." — "Blue, so B."
  Anything else is None (unanswered, scored as wrong). Option texts are never matched.

  Example:
    extract_choice("**Answer:** (C) Blue", 4)   # -> "C"
    extract_choice("Green", 4)                  # -> None
  """
  if not response:
    return None
  valid = LETTERS[:max(0, min(num_choices, len(LETTERS)))]
  text = re.sub(r"[*`]", "", response).strip()

  def last_valid(letters: list[str]) -> str | None:
    letters = [x.upper() for x in letters if x and x.upper() in valid]
    return letters[-1] if letters else None

  m = re.fullmatch(r"[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.:)]?", text)
  if m:
    return last_valid([m.group(1)])
  boxed = [(m.start(), m.group(1).upper()) for m in _BOXED.finditer(text)]
  lead = re.match(r"([A-Z])(?:[.):]|\s+-)", text)
  steps = [
      lambda: [x for _, x in sorted(boxed + _cue_letters(_STRONG_CUE, text))],
      lambda: [lead.group(1)] if lead else [],
      lambda: re.findall(r"\(([A-Za-z])\)", text),
      lambda: [x for _, x in _cue_letters(_WEAK_CUE, text)],
      lambda: re.findall(r"(?:[,;:(]|\b(?:so|thus|therefore|hence|is|be))\s*([A-Z])\.?\s*$", text),
  ]
  for step in steps:
    letter = last_valid(step())
    if letter:
      return letter
  return None


OFFICIAL_ROUTES = ("open", "api", "cot")


def official_route_for(model_name: str) -> str:
  """The route the official metrics script picks from a result-file name: "cot" if the name
  contains "cot", else "api" if it contains "gpt" or "gemini", else "open"."""
  name = model_name.lower()
  if "cot" in name:
    return "cot"
  if "gpt" in name or "gemini" in name:
    return "api"
  return "open"


def official_answer(response: str, route: str) -> str:
  """The lower-case answer the official parser derives (not always a letter), per route:

  - "cot": the last "(x)" letter anywhere in the reply ("" if none);
  - "api": the last alphabetic character of the reply ("(C) Blue" gives "e");
  - "open": drop all parentheses and lower-case; if that is not a bare a–f, the first
    "(a)"–"(f)" in the reply; if still not, the letter x of the first "x) <digit>"; otherwise
    the text as is (so "C." stays "c." and is wrong).
  Correct means equal to the ground-truth letter, lower-cased.
  """
  response = response or ""
  if route == "cot":
    found = re.findall(r"\(([A-Za-z])\)", response.strip())
    return found[-1].lower() if found else ""
  if route == "api":
    found = re.findall(r"[A-Za-z]", response.strip())
    return found[-1].lower() if found else ""
  if route != "open":
    raise EvalInputError(f"official_route must be one of {OFFICIAL_ROUTES}, got {route!r}")
  text = response.strip()
  bare = text.replace("(", "").replace(")", "").lower()
  if bare not in tuple("abcdef"):
    m = re.search(r"\(([a-f])\)", text.lower())
    if m:
      bare = m.group(1)
  if bare not in tuple("abcdef"):
    m = re.search(r"([a-z])\) \d+", text.lower())
    if m:
      bare = m.group(1)
  return bare


# --------------------------------------------------------------------------- metrics

def _group_of(filename: str) -> tuple[str, bool]:
  """Robustness grouping from the file name: (seed id, is_original). "12.png" is seed 12's
  original; "12_3.png" one of its recoloured variants."""
  stem = filename.replace("\\", "/").split("/")[-1].split(".")[0]
  return stem.split("_")[0], "_" not in stem


def _count(correct: int, total: int) -> dict:
  return {"correct": correct, "total": total, "accuracy": correct / total if total else None}


def score(rows: Iterable[Mapping[str, Any]], predictions: Mapping[Any, str | None], *,
          official_route: str | None = None, allow_missing: bool = False) -> dict:
  """ColorBench metrics from model responses.

  Args:
    rows: ColorBench rows (at least idx, type, task, filename, choices, answer).
    predictions: row idx (int or str) → the model's raw response text.
    official_route: None for `extract_choice`; "open", "api" or "cot" to mirror the official
      parser (`official_route_for(model_name)` picks it as the official script does).
    allow_missing: count rows without a prediction as wrong instead of raising.

  Returns:
    {"tasks": {task: {"correct", "total", "accuracy"}} (non-robustness tasks, first-seen order),
     "perception", "reasoning", "overall": micro averages over the P&R rows, same shape,
     "robustness": {"robust", "seeds", "accuracy", "seeds_without_original"},
     "unanswered": rows whose response gave no letter, "missing": rows without a prediction,
     "per_row": {idx: {"answer", "correct"}}, "rule": "extract_choice" or "official:<route>"}.

  Raises:
    EvalInputError: predictions missing for some rows (unless `allow_missing`), or an unknown
      route.
  """
  if official_route is not None and official_route not in OFFICIAL_ROUTES:
    raise EvalInputError(f"official_route must be one of {OFFICIAL_ROUTES}, got {official_route!r}")
  preds = {str(k): v for k, v in predictions.items()}
  tasks: dict[str, list[int]] = {}
  cats = {"perception": [0, 0], "reasoning": [0, 0], "overall": [0, 0]}
  groups: dict[str, dict] = {}
  per_row, missing, unanswered = {}, [], 0
  for row in rows:
    key = str(row["idx"])
    truth = answer_letter(row["answer"])
    if key not in preds:
      missing.append(key)
      response = None
    else:
      response = preds[key]
    if official_route is None:
      letter = extract_choice(response, len(row["choices"]))
      correct = letter is not None and letter == truth
      unanswered += response is not None and letter is None
    else:
      letter = official_answer(response or "", official_route)
      correct = truth is not None and letter == truth.lower()
    per_row[row["idx"]] = {"answer": letter, "correct": bool(correct)}
    kind = str(row["type"]).lower()
    if kind == "robustness":
      seed, original = _group_of(row["filename"])
      g = groups.setdefault(seed, {"original": None, "variants": []})
      if original:
        g["original"] = bool(correct)
      else:
        g["variants"].append(bool(correct))
      continue
    counts = tasks.setdefault(row["task"], [0, 0])
    counts[0] += correct
    counts[1] += 1
    for cat in ("overall",) + ((kind,) if kind in cats else ()):
      cats[cat][0] += correct
      cats[cat][1] += 1
  if missing and not allow_missing:
    raise EvalInputError(f"ColorBench predictions: {len(missing)} rows have no prediction "
                         f"(first idx: {', '.join(missing[:5])}); pass allow_missing=True to "
                         f"count them as wrong")
  robust = sum(1 for g in groups.values() if g["original"] and all(g["variants"]))
  result = {"tasks": {t: _count(c, n) for t, (c, n) in tasks.items()}}
  result.update({cat: _count(c, n) for cat, (c, n) in cats.items()})
  result["robustness"] = {
      "robust": robust, "seeds": len(groups),
      "accuracy": robust / len(groups) if groups else None,
      "seeds_without_original": sum(1 for g in groups.values() if g["original"] is None)}
  result.update(unanswered=unanswered, missing=len(missing), per_row=per_row,
                rule="extract_choice" if official_route is None else f"official:{official_route}")
  return result


def table_row(result: dict) -> dict:
  """The official `inference.csv` columns for one model: the 10 P&R task accuracies (None when a
  task is absent), Perception Acc, Reasoning Acc, Overall Acc and Color Robustness."""
  row = {t: result["tasks"].get(t, {}).get("accuracy") for t in PR_TASKS}
  row.update({"Perception Acc": result["perception"]["accuracy"],
              "Reasoning Acc": result["reasoning"]["accuracy"],
              "Overall Acc": result["overall"]["accuracy"],
              "Color Robustness": result["robustness"]["accuracy"]})
  return row
