"""A model's answers to the official ColorBench rows, in the official result-file format.

    plan = prepare(out_dir, "ColorBench/data", settings)       # checks; writes nothing
    answer(answer_fn, plan)       # <out>/colorbench_answers.jsonl, one line per answered row
    path = write_result_file(plan)   # <out>/colorbench_results/<model_name>.json

The data is the released parquet (a file, or a folder searched for them; `colorbench.load_colorbench`,
every row checked first: a row without an answer or an image, a missing column is one line naming
the file, row and column). Each row's text is `colorbench.build_prompt` (the instruction, a newline,
the dataset `prompt`: question and lettered options), its image is decoded whatever its mode
(`input_pipeline.sources.decode_image`) and brought to the model's square input the way the run's
real-image training does (`input_pipeline.datasets.prepare_image`: padded to a centred square with
grey, or squashed, per `config.data.image_aspect`, then bicubic-resized); greedy decoding.

The result file is what the official inference scripts write and `evaluation/metrics_eval.py` reads:
one JSON object, row position (as a string) -> the row without its image plus `model_ans` (the
reply). It sits alone in `colorbench_results/`, so that folder is a valid `--result_dir` of the
official script, and `evaluate.py --score_only --colorbench_predictions=<it>` scores it.

Resumable: answers are appended (one JSON line per row, fsynced per batch) to
`<out>/colorbench_answers.jsonl`; a later run keeps every row answered there and asks the model only
the others (a torn last line from a kill is dropped). `<out>/colorbench_generation.json` records the
settings (checkpoint, step, decoding, image preprocessing, instruction, the data files' sha256); a
later run whose settings differ stops with one line instead of mixing two settings in a folder.
The result file and the scores are written atomically once every row is answered.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from jaxmodels.evals import EvalInputError, colorbench
from jaxmodels.evals.output_records import file_sha256, record_matches, write_atomic
from jaxmodels.unified.model_io import UNIFIED_PAD_FILL

SETTINGS_FILE = "colorbench_generation.json"
ANSWERS_FILE = "colorbench_answers.jsonl"
RESULTS_DIR = "colorbench_results"
# colorbench_generation.json keys that must agree between the runs writing one folder.
COMPARED = ("checkpoint", "step", "data_sha256", "instruction", "max_new_tokens", "prompt_len",
            "layout", "image_size", "image_aspect", "match_choices")


def data_sha256(path: str | os.PathLike) -> str | dict:
  """The sha256 of the parquet file, or {relative path: sha256} of a folder's parquet files."""
  path = Path(path)
  if path.is_file():
    return file_sha256(path)
  return {str(f.relative_to(path)): file_sha256(f) for f in colorbench._parquet_files(path)}


def model_name_for(text: str) -> str:
  """A result-file name the official script reads back as the same model name: letters, digits,
  '_' and '-' only (it cuts the name at the first '.')."""
  return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "model"


def model_pixels(data: bytes, size: int, aspect: str, where: str) -> np.ndarray:
  """Encoded image bytes of any size and Pillow mode -> uint8 [size, size, 3]: RGB
  (`decode_image`), then `prepare_image` (pad to a square with a unified model's grey `UNIFIED_PAD_FILL` or squash, bicubic)."""
  from input_pipeline.datasets import prepare_image
  from input_pipeline.sources import CorruptRecord, decode_image
  try:
    rgb = decode_image(data, where)
  except CorruptRecord as e:
    raise EvalInputError(str(e)) from None
  unit = prepare_image(rgb, size, aspect=aspect, fill=UNIFIED_PAD_FILL)
  return np.rint((unit + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


@dataclasses.dataclass
class Plan:
  """What `answer` does: `todo` lists the rows (positions) still without an answer."""
  out_dir: Path
  data: str
  rows: list[dict]             # every row of the data, with its image bytes
  extra: list[dict]            # per row: the other columns of the data (e.g. image_url), no image
  settings: dict
  answers: dict                # idx (str) -> model_ans, those already in the answers file
  todo: list[int]
  torn_tail: int | None        # byte offset of a torn last line to drop before appending
  recorded: bool               # the settings record already exists (a resume)

  @property
  def result_path(self) -> Path:
    return self.out_dir / RESULTS_DIR / f"{self.settings['model_name']}.json"


def _extra_columns(path: Path, count: int) -> list[dict]:
  """Columns of the parquet data outside `colorbench.FIELDS` (the released `image_url`), per row."""
  import pyarrow.parquet as pq
  if not path.exists() or path.suffix == ".json":
    return [{} for _ in range(count)]
  out = []
  for file in colorbench._parquet_files(path):
    names = [n for n in pq.read_schema(file).names if n not in colorbench.FIELDS]
    if names:
      out.extend(pq.read_table(file, columns=names).to_pylist())
    else:
      out.extend({} for _ in range(pq.read_metadata(file).num_rows))
  return out if len(out) == count else [{} for _ in range(count)]


def read_answers(path: Path, known: set[str]) -> tuple[dict, int | None]:
  """({idx: model_ans}, byte offset of a torn last line or None) of an answers file; a later line
  for the same idx wins.

  Raises:
    EvalInputError: a bad line before the last one, or an idx the data does not have ("file:line").
  """
  if not path.exists():
    return {}, None
  data = path.read_bytes()
  answers, offset, torn = {}, 0, None
  lines = data.split(b"\n")
  for lineno, raw in enumerate(lines, 1):
    start, offset = offset, offset + len(raw) + 1
    if not raw.strip():
      continue
    try:
      row = json.loads(raw.decode("utf-8"))
      ok = isinstance(row, dict) and "idx" in row and (row.get("model_ans") is None
                                                      or isinstance(row["model_ans"], str))
    except (UnicodeDecodeError, json.JSONDecodeError):
      ok = False
    if not ok:
      if lineno == len(lines):          # no newline after it: an append cut short by a kill
        torn = start
        break
      raise EvalInputError(f"{path}:{lineno}: not an answer line {{\"idx\": ..., \"model_ans\": ...}}; "
                           f"this folder is not resumable, choose another --out")
    key = str(row["idx"])
    if key not in known:
      raise EvalInputError(f"{path}:{lineno}: idx {row['idx']!r} is not a row of the data")
    answers[key] = row["model_ans"]
  return answers, torn


def prepare(out_dir: str | os.PathLike, data: str | os.PathLike, settings: dict) -> Plan:
  """Reads and checks everything `answer` needs, writing nothing: the data (every row, with its
  image), `settings` against `<out_dir>/colorbench_generation.json` when it exists, the answers
  already there.

  `settings` needs the `COMPARED` keys but `data_sha256` (added here, with `data`), plus
  `batch_size` and `model_name`.

  Raises:
    EvalInputError: one line naming the file (and row, column or setting) at fault.
  """
  out = Path(out_dir)
  rows = colorbench.load_colorbench(data, require_images=True)
  if not rows:
    raise EvalInputError(f"{data}: no ColorBench rows")
  seen = {}
  for i, row in enumerate(rows):
    key = str(row["idx"])
    if key in seen:
      raise EvalInputError(f"{data}: row {i} column 'idx': {row['idx']!r} repeats row {seen[key]}")
    seen[key] = i
  for key in ("batch_size", "max_new_tokens", "prompt_len", "image_size"):
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise EvalInputError(f"ColorBench setting {key}={value!r}: must be an integer >= 1")
  if settings["image_aspect"] not in ("pad", "resize"):
    raise EvalInputError(f"config.data.image_aspect={settings['image_aspect']!r}: expected 'pad' or "
                         f"'resize'")
  settings = dict(settings, model_name=model_name_for(settings["model_name"]),
                  data=str(Path(data).resolve()), data_sha256=data_sha256(data))
  recorded = record_matches(out / SETTINGS_FILE, settings, COMPARED)
  answers_path = out / ANSWERS_FILE
  if not recorded and answers_path.exists():
    raise EvalInputError(f"{answers_path}: answers without {SETTINGS_FILE} (not written by this "
                         f"command); choose another --out")
  answers, torn = read_answers(answers_path, set(seen))
  todo = [i for i, row in enumerate(rows) if str(row["idx"]) not in answers]
  return Plan(out, str(data), rows, _extra_columns(Path(data), len(rows)), settings, answers, todo,
              torn, recorded)


def _append(path: Path, lines: list[dict]) -> None:
  with open(path, "a", encoding="utf-8") as f:
    for line in lines:
      f.write(json.dumps(line, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def answer(answer_fn: Callable | None, plan: Plan, *, progress: bool = True) -> dict:
  """Asks `answer_fn` (images uint8 [B, S, S, 3], texts -> replies; `shapes_eval.model_answer_fn`)
  the rows `plan.todo` lists, a batch at a time (`shapes_colorbench.run_model`), appending each
  batch's answers to the answers file; writes the settings record on a fresh folder. Returns
  {"answered", "kept"}; `plan.answers` then holds every row's answer."""
  from tqdm.auto import tqdm

  from jaxmodels.evals import shapes_colorbench
  s = plan.settings
  plan.out_dir.mkdir(parents=True, exist_ok=True)
  if not plan.recorded:
    record = {"settings": s, "rows": len(plan.rows),
              "answer_rule": "colorbench.extract_choice, or the official parser of --official_route"}
    write_atomic(plan.out_dir / SETTINGS_FILE, (json.dumps(record, indent=1) + "\n").encode())
    plan.recorded = True
  path = plan.out_dir / ANSWERS_FILE
  if plan.torn_tail is not None:
    with open(path, "r+b") as f:
      f.truncate(plan.torn_tail)
    plan.torn_tail = None
  if plan.todo and answer_fn is None:
    raise EvalInputError(f"{plan.out_dir}: {len(plan.todo)} rows to answer but no model given")
  size, aspect = s["image_size"], s["image_aspect"]
  where = {id(r): i for i, r in enumerate(plan.rows)}

  def pixels(row):
    return model_pixels(row["image"], size, aspect, f"{plan.data}: row {where[id(row)]} column 'image'")

  kept, batch = len(plan.rows) - len(plan.todo), s["batch_size"]
  with tqdm(total=len(plan.todo), desc="ColorBench answer", unit="row", disable=not progress) as bar:
    for start in range(0, len(plan.todo), batch):
      chunk = [plan.rows[i] for i in plan.todo[start:start + batch]]
      replies = shapes_colorbench.run_model(chunk, answer_fn, batch_size=batch, text="prompt",
                                            match_choices=s["match_choices"], pixels=pixels,
                                            instruction=s["instruction"])
      lines = [{"idx": r["idx"], "model_ans": replies[r["idx"]]} for r in chunk]
      _append(path, lines)
      plan.answers.update({str(x["idx"]): x["model_ans"] for x in lines})
      bar.update(len(chunk))
  answered = len(plan.todo)
  plan.todo = []
  return {"answered": answered, "kept": kept}


def result_rows(plan: Plan) -> dict:
  """The official result file's content: row position (str) -> the row without its image, with
  every other column of the data, plus `model_ans`."""
  out = {}
  for i, (row, extra) in enumerate(zip(plan.rows, plan.extra)):
    key = str(row["idx"])
    if key not in plan.answers:
      raise EvalInputError(f"{plan.out_dir / ANSWERS_FILE}: row {i} (idx {key}) has no answer yet")
    entry = {k: v for k, v in row.items() if k not in ("image", "image_path")}
    entry.update({k: v for k, v in extra.items() if k not in entry and k != "image"})
    entry["model_ans"] = plan.answers[key]
    out[str(i)] = entry
  return out


def write_result_file(plan: Plan) -> Path:
  """Writes `<out>/colorbench_results/<model_name>.json` (atomically) and returns its path."""
  path = plan.result_path
  path.parent.mkdir(parents=True, exist_ok=True)
  write_atomic(path, (json.dumps(result_rows(plan), indent=1, ensure_ascii=False, default=_plain)
                       + "\n").encode("utf-8"))
  return path


def _plain(value):
  """JSON for parquet values json does not know (numpy scalars, bytes)."""
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (bytes, bytearray)):
    return None
  raise TypeError(f"{type(value).__name__} is not JSON serializable")


def describe_prompts(plan: Plan, tokenizer, room: int) -> tuple[str, bool]:
  """(one line on how the tokenizer takes the rows' texts, whether any was cut): words unknown to
  it, and texts longer than `room` tokens (the prompt length left beside the image tokens), which
  the model runner cuts to their first `room` tokens, losing options at the end."""
  from jaxmodels.evals.geneval_generate import encode_prompts
  texts = [colorbench.build_prompt(r, instruction=plan.settings["instruction"]) for r in plan.rows]
  stats = encode_prompts(tokenizer, texts, max(1, room) + 1)[2]
  text = f"ColorBench prompts: {len(texts)}"
  if stats["unknown_words"]:
    text += (f"; {stats['unknown_words']} words ({stats['distinct_unknown']} distinct) unknown to the "
             f"run's tokenizer (e.g. {', '.join(stats['examples'])})")
  if stats["truncated"]:
    text += (f"; {stats['truncated']} longer than the {room} text tokens a prompt of "
             f"{plan.settings['prompt_len']} has room for are cut to their first {room} tokens "
             f"(raise it with --colorbench_prompt_len=N)")
  return text, bool(stats["unknown_words"] or stats["truncated"])
