"""ROVER-style scoring (cheryyunl/ROVER; shared/spec/evals.md §3): data, output layout, judged
metrics with a resumable `rover_metrics.jsonl`, and the official summary.

Data: the HF parquet of config ROVER-IG (id, dimension, reasoning_type, prompt, target_description,
keywords, image, optional target_image) or ROVER-TG (id, image, optional image2, problem_type,
prompt, reasoning_image a.k.a. refer_image, answer), read from a local path (`load_rover`).
Model outputs: one flat folder with `gen_{id}.png` (required) and `gen_{id}.txt` (IG: the
reasoning text; TG: the answer text) (`write_output`).

IG metrics, one judge call each, score 1–5: RP reasoning_process, RV reasoning_visual, RA
reasoning_alignment, VC visual_consistency, IQ image_quality. Scores map to (s − 1) × 25; each
metric is averaged over tasks where it is not missing; AVG pools every non-missing metric score
(as the official summary does, so metrics with more scores weigh more); the leaderboard number is
the mean of RV, IQ and VC. TG (beta upstream, experimental here): IR interleaved_reasoning and RA
reasoning_alignment.

The rubric texts are the official ones, read at run time from a local copy of ROVER's
`prompts.py` (`load_rubrics`; nothing is executed), or any dict of the same names.

Example:
  tasks = load_rover("ROVER/ROVER-IG", "IG")
  judge = judges.OpenAIJudge("https://api.openai.com/v1", "gpt-4.1")
  summary = evaluate(tasks, "outputs/rover", judge, load_rubrics("ROVER/prompts.py"), "scores")
  summary["overall"]["AVG"], summary["leaderboard"]["value"]
"""
from __future__ import annotations

import ast
import concurrent.futures
import io
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from jaxmodels.evals import EvalInputError, reports
from jaxmodels.evals.judges import Judge

IG_METRICS = ("reasoning_process", "reasoning_visual", "reasoning_alignment",
              "visual_consistency", "image_quality")
TG_METRICS = ("interleaved_reasoning", "reasoning_alignment")
SHORT = {"IG": {"reasoning_process": "RP", "reasoning_visual": "RV", "reasoning_alignment": "RA",
                "visual_consistency": "VC", "image_quality": "IQ"},
         "TG": {"interleaved_reasoning": "IR", "reasoning_alignment": "RA"}}
DIMENSIONS = ("science", "culture", "common_sense", "logic")
REASONING_TYPES = ("temporal", "spatial", "quantitative", "causal", "imaginative", "logical",
                   "mathematical", "abstract")
PROBLEM_TYPES = ("physical", "embodied", "logical", "jigsaw", "multi-view")
LEADERBOARD_METRICS = ("reasoning_visual", "image_quality", "visual_consistency")
NO_THINK_TEXT = "No think output available"  # what the official IG evaluator fills in
NO_ANSWER_TEXT = "No answer text available"  # what the official TG evaluator fills in
_REQUIRED = {"IG": ("id", "dimension", "reasoning_type", "prompt", "target_description",
                    "keywords", "image"),
             "TG": ("id", "image", "problem_type", "prompt", "answer")}


def parse_task_id(task_id: str) -> tuple[str | None, str | None]:
  """(dimension, reasoning_type) from an IG id "{dimension}_{reasoning_type}_{n}", as the
  official summary: "common_sense_causal_1" → ("common_sense", "causal"), "logic_math_3" →
  ("logic", "mathematical"); (None, None) when the id has no underscore."""
  parts = str(task_id).split("_")
  if len(parts) >= 3 and parts[:2] == ["common", "sense"]:
    dimension, kind = "common_sense", parts[2]
  elif len(parts) >= 2:
    dimension, kind = parts[0], parts[1]
  else:
    return None, None
  return dimension, "mathematical" if kind == "math" else kind


# --------------------------------------------------------------------------- data and outputs

def _class_names(schema) -> dict[str, list[str]]:
  """ClassLabel names per column from the HF metadata stored in a parquet schema."""
  try:
    info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
    features = info.get("info", {}).get("features", {})
  except (json.JSONDecodeError, AttributeError):
    return {}
  return {k: v["names"] for k, v in features.items()
          if isinstance(v, dict) and v.get("_type") == "ClassLabel" and "names" in v}


def load_rover(path: str | os.PathLike, config: str = "IG") -> list[dict]:
  """Reads ROVER tasks from local parquet: a file, a folder of parquet files, or the dataset root
  holding a `ROVER-IG` / `ROVER-TG` folder. Images stay encoded bytes; a ClassLabel `dimension`
  becomes its name; TG `refer_image` is renamed `reasoning_image`; IG `keywords` lists are joined.

  Raises:
    EvalInputError: unknown config, no parquet, or a missing column (naming the file).
  """
  import pyarrow.parquet as pq
  if config not in _REQUIRED:
    raise EvalInputError(f"ROVER config must be 'IG' or 'TG', got {config!r}")
  path = Path(path)
  if (path / f"ROVER-{config}").is_dir():
    path = path / f"ROVER-{config}"
  files = [path] if path.is_file() else sorted(path.rglob("*.parquet")) if path.is_dir() else []
  if not files:
    raise EvalInputError(f"{path}: no ROVER-{config} parquet found")
  tasks = []
  for file in files:
    schema = pq.read_schema(file)
    names = set(schema.names) | ({"reasoning_image"} if "refer_image" in schema.names else set())
    missing = [f for f in _REQUIRED[config] if f not in names]
    if missing:
      raise EvalInputError(f"{file}: missing column(s) {', '.join(missing)} for ROVER-{config}")
    labels = _class_names(schema)
    for row in pq.read_table(file).to_pylist():
      for key, value in list(row.items()):
        if isinstance(value, dict) and "bytes" in value:
          row[key] = value["bytes"]
        if key in labels and isinstance(value, int):
          row[key] = labels[key][value]
      if "refer_image" in row and row.get("reasoning_image") is None:
        row["reasoning_image"] = row.pop("refer_image")
      if config == "IG":
        if isinstance(row.get("dimension"), int):
          row["dimension"] = parse_task_id(row["id"])[0]
        if isinstance(row.get("keywords"), (list, tuple)):
          row["keywords"] = ", ".join(map(str, row["keywords"]))
      row["id"] = str(row["id"])
      tasks.append(row)
  return tasks


def output_paths(gen_dir: str | os.PathLike, task_id: str) -> tuple[Path, Path]:
  """(`gen_{id}.png`, `gen_{id}.txt`) in the flat output folder."""
  return Path(gen_dir) / f"gen_{task_id}.png", Path(gen_dir) / f"gen_{task_id}.txt"


def write_output(gen_dir: str | os.PathLike, task_id: str, image: Any,
                 text: str | None = None) -> Path:
  """Writes `gen_{id}.png` (uint8 [H, W, 3] array, PIL image or encoded bytes; re-encoded as
  PNG) and, when given, `gen_{id}.txt` (IG: reasoning text; TG: answer text)."""
  import numpy as np
  from PIL import Image
  png, txt = output_paths(gen_dir, task_id)
  png.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(image, (bytes, bytearray)):
    image = Image.open(io.BytesIO(image))
  elif not isinstance(image, Image.Image):
    image = Image.fromarray(np.asarray(image, np.uint8))
  image.convert("RGB").save(png, format="PNG")
  if text is not None:
    txt.write_text(text, encoding="utf-8")
  return png


def _read_text(path: Path) -> str | None:
  if path.is_file():
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    return text or None
  return None


# --------------------------------------------------------------------------- rubrics

def load_rubrics(prompts_py: str | os.PathLike) -> dict[str, str]:
  """The rubric strings of a ROVER `prompts.py` (module-level `name = "..."` assignments, plain
  or concatenated literals), read with `ast` without running the file."""
  path = Path(prompts_py)
  try:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  except (OSError, SyntaxError) as e:
    raise EvalInputError(f"{path}: cannot read rubric file ({e})") from None

  def literal(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
      left, right = literal(node.left), literal(node.right)
      return left + right if left is not None and right is not None else None
    return None

  rubrics = {}
  for node in tree.body:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
        node.targets[0], ast.Name):
      text = literal(node.value)
      if text is not None:
        rubrics[node.targets[0].id] = text
  if not rubrics:
    raise EvalInputError(f"{path}: no rubric strings found")
  return rubrics


def rubric_name(config: str, metric: str, kind: str) -> str:
  """The `prompts.py` variable for a metric; `kind` is the IG reasoning type or TG problem type
  (logical / mathematical / abstract share the logical rubrics; embodied RA uses physical)."""
  if config == "IG":
    if metric in ("reasoning_process", "reasoning_visual"):
      family = "logical" if kind in ("logical", "mathematical", "abstract") else kind
      return f"prompt_{metric}_{family}"
    return f"prompt_{metric}"
  kind = kind.replace("-", "_")
  if metric == "reasoning_alignment" and kind == "embodied":
    kind = "physical"
  return f"prompt_{metric}_{kind}"


def _render(rubrics: Mapping[str, str], name: str, fields: dict | None, task_id: str) -> str:
  if name not in rubrics:
    raise EvalInputError(f"task {task_id}: no rubric named {name!r} in the rubrics")
  if fields is None:  # the official image-quality rubric is sent unformatted
    return rubrics[name]
  try:
    return rubrics[name].format(**fields)
  except (KeyError, IndexError, ValueError) as e:
    raise EvalInputError(f"task {task_id}: rubric {name} cannot be filled ({e!r})") from None


def judge_requests(task: dict, config: str, generated: bytes, text: str | None,
                   rubrics: Mapping[str, str], metrics: Sequence[str]) -> list[tuple]:
  """(metric, rubric text, images in rubric order) per metric. Orders follow evals.md §3.3 /
  §3.4; optional images (IG target, TG second view) are left out when absent, as upstream. The
  images are None (the metric is then missing) when a required one is absent: the IG original
  image, or the TG ground-truth image for interleaved reasoning (except multi-view)."""
  original, target = task.get("image"), task.get("target_image")
  requests = []
  if config == "IG":
    kind = task["reasoning_type"]
    fields = {"prompt": task["prompt"], "dimension": task["dimension"],
              "keywords": task.get("keywords") or "",
              "target_description": task.get("target_description") or "",
              "think_output": text or NO_THINK_TEXT}
    images = {"reasoning_process": [original],
              "reasoning_visual": [original, generated] + ([target] if target else []),
              "reasoning_alignment": [original, generated],
              "visual_consistency": [original, generated], "image_quality": [generated]}
    for metric in metrics:
      name = rubric_name("IG", metric, kind)
      filled = _render(rubrics, name, None if metric == "image_quality" else fields, task["id"])
      requests.append((metric, filled, images[metric] if original is not None else None))
    return requests
  kind, gt, second = task["problem_type"], task.get("reasoning_image"), task.get("image2")
  fields = {"prompt": task["prompt"], "answer": task.get("answer") or "",
            "model_answer": text or NO_ANSWER_TEXT}
  ir = {"logical": [original, gt, generated], "physical": [original, gt, generated],
        "embodied": [gt, generated], "jigsaw": [gt, generated],
        "multi-view": [original, second, generated]}
  ra = {"logical": [original, gt, generated], "jigsaw": [original, generated],
        "multi-view": [original, second, generated]}
  if kind not in ir:
    raise EvalInputError(f"ROVER-TG task {task['id']}: unknown problem_type {kind!r}")
  for metric in metrics:
    if metric == "interleaved_reasoning":  # needs the GT image where the official one does
      imgs = None if gt is None and kind != "multi-view" else ir[kind]
    else:
      imgs = ra.get(kind, [original, generated])
    imgs = None if imgs is None else [i for i in imgs if i is not None]  # others are optional
    name = rubric_name("TG", metric, kind)
    requests.append((metric, _render(rubrics, name, fields, task["id"]), imgs))
  return requests


# --------------------------------------------------------------------------- records and summary

def read_records(path: str | os.PathLike) -> list[dict]:
  """`rover_metrics.jsonl` rows ({"key", "result"}); [] when the file does not exist yet. A
  truncated last line (interrupted append) is ignored."""
  if not Path(path).is_file():
    return []
  rows = reports.read_jsonl(path, skip_bad_last_line=True)
  for i, row in enumerate(rows):
    if "key" not in row or not isinstance(row.get("result"), dict):
      raise EvalInputError(f"{path}: row {i + 1} needs 'key' and an object 'result'")
  return rows


def _mapped(value: Any, zero_as_missing: bool) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  if value == 0 and not zero_as_missing:
    return -25.0  # the official summary's treatment of the evaluator's error value
  if not float(value).is_integer() or not 1 <= value <= 5:
    return None
  return (float(value) - 1) * 25


def _means(scores: dict[str, list[float]], short: dict[str, str]) -> dict:
  out, pooled = {}, []
  for metric, values in scores.items():
    if values:
      out[short.get(metric, metric)] = sum(values) / len(values)
      pooled += values
  if pooled:
    out["AVG"] = sum(pooled) / len(pooled)
  return out


def summarize(records: Iterable[Mapping], *, config: str = "IG",
              metrics: Sequence[str] | None = None,
              groups: Mapping[str, Mapping[str, str]] | None = None,
              zero_as_missing: bool = True) -> dict:
  """Summary of judged records, pure (evals.md §3.3 aggregation).

  Records with the same key are merged in order (later fields win). Per metric, scores 1–5 map
  to (s − 1) × 25 and are averaged over the tasks where present; a None, a 0 (the official
  evaluator's error value) or anything outside 1–5 is *missing*. `zero_as_missing=False`
  reproduces the official summary, where a 0 counts as −25.

  Args:
    records: {"key": task id, "result": {"<metric>_score": int | None, ...}}.
    config: "IG" or "TG" (metric names and short names).
    metrics: metrics to report (default: all of the config).
    groups: task id → {field: value} for breakdowns (default IG: dimension and reasoning type
      parsed from the id; ids that do not parse count only in the overall numbers).
    zero_as_missing: see above.

  Returns:
    {"task_count", "overall": {"RP": .., ..., "AVG": ..}, "counts" / "missing": per short name,
     "failures": per short name, the missing scores whose reasoning is a judge error ("error: ..."
     : a request that failed or a reply without a valid score, after the judge's retries),
     "<field>s": {value: same shape as overall} per group field (e.g. "dimensions"),
     "leaderboard": {"value", "by_dimension"} (IG: mean of RV, IQ, VC per dimension, then the
     unweighted mean over dimensions; None when those metrics are absent)}.

  Example:
    summarize([{"key": "science_temporal_1", "result": {"reasoning_visual_score": 5,
                                                        "image_quality_score": 3}}])
    # overall: RV 100, IQ 50, AVG 75
  """
  metrics = tuple(metrics or (IG_METRICS if config == "IG" else TG_METRICS))
  short = SHORT.get(config, {})
  merged: dict[str, dict] = {}
  for row in records:
    merged.setdefault(str(row["key"]), {}).update(row["result"])
  overall = {m: [] for m in metrics}
  grouped: dict[str, dict[str, dict[str, list]]] = {}
  missing = {short.get(m, m): 0 for m in metrics}
  failures = {short.get(m, m): 0 for m in metrics}
  for key, result in merged.items():
    if groups is not None:
      fields = dict(groups.get(key, {}))
    else:
      dimension, kind = parse_task_id(key) if config == "IG" else (None, None)
      fields = {"dimension": dimension, "reasoning_type": kind} if dimension else {}
    for metric in metrics:
      value = _mapped(result.get(f"{metric}_score"), zero_as_missing)
      if value is None:
        missing[short.get(metric, metric)] += 1
        why = result.get(f"{metric}_reasoning")
        failures[short.get(metric, metric)] += isinstance(why, str) and why.startswith("error")
        continue
      overall[metric].append(value)
      for field, group in fields.items():
        bucket = grouped.setdefault(field, {}).setdefault(group, {m: [] for m in metrics})
        bucket[metric].append(value)
  order = {"dimension": DIMENSIONS, "reasoning_type": REASONING_TYPES,
           "problem_type": PROBLEM_TYPES}
  summary = {"task_count": len(merged), "overall": _means(overall, short),
             "counts": {short.get(m, m): len(overall[m]) for m in metrics}, "missing": missing,
             "failures": failures}
  for field, buckets in grouped.items():
    known = order.get(field, ())
    keys = [k for k in known if k in buckets] + sorted(k for k in buckets if k not in known)
    summary[f"{field}s"] = {k: _means(buckets[k], short) for k in keys}
  summary["leaderboard"] = _leaderboard(grouped.get("dimension", {}), metrics)
  return summary


def _leaderboard(by_dimension: dict, metrics: Sequence[str]) -> dict:
  """Mean of the RV, IQ and VC means per dimension, then the unweighted mean over dimensions
  (project-page definition; UNCONFIRMED that the live leaderboard still uses it)."""
  if not all(m in metrics for m in LEADERBOARD_METRICS):
    return {"value": None, "by_dimension": {}}
  per_dim = {}
  for dim, scores in by_dimension.items():
    means = [sum(scores[m]) / len(scores[m]) for m in LEADERBOARD_METRICS if scores[m]]
    if means:
      per_dim[dim] = sum(means) / len(means)
  value = sum(per_dim.values()) / len(per_dim) if per_dim else None
  return {"value": value, "by_dimension": per_dim}


# --------------------------------------------------------------------------- driver

def merged_records(path: str | os.PathLike) -> dict[str, dict]:
  """Task id -> its merged result (later lines win) of a `rover_metrics.jsonl`; {} when absent."""
  state: dict[str, dict] = {}
  for row in read_records(path):
    state.setdefault(str(row["key"]), {}).update(row["result"])
  return state


def pending(tasks: Sequence[dict], state: Mapping[str, Mapping], metrics: Sequence[str], *,
            redo_missing: bool = False, skip: set | frozenset = frozenset()) -> list[tuple]:
  """(task, metrics to judge) for each task `evaluate` would judge given the merged records
  `state`: every task without a record, and with `redo_missing` the missing metrics of the others;
  ids in `skip` are left out."""
  jobs = []
  for task in tasks:
    if str(task["id"]) in skip:
      continue
    done = state.get(str(task["id"]))
    if done is None:
      jobs.append((task, tuple(metrics)))
    elif redo_missing:
      todo = tuple(m for m in metrics if _mapped(done.get(f"{m}_score"), True) is None)
      if todo:
        jobs.append((task, todo))
  return jobs


def _drop_torn_tail(path: Path) -> None:
  """Cuts a last line without its newline (an append killed midway; `read_records` ignores it),
  so the next append starts a line of its own instead of gluing onto it."""
  if not path.is_file():
    return
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    with open(path, "r+b") as f:
      f.truncate(data.rfind(b"\n") + 1)


def evaluate(tasks: Sequence[dict], gen_dir: str | os.PathLike, judge: Judge,
             rubrics: Mapping[str, str], out_dir: str | os.PathLike, *, config: str = "IG",
             metrics: Sequence[str] | None = None, force: bool = False,
             redo_missing: bool = False, allow_incomplete: bool = False,
             max_tasks: int | None = None, workers: int = 1, progress: bool = True) -> dict:
  """Judges every task's outputs and writes `rover_metrics.jsonl` and `rover_summary.json`.

  `rover_metrics.jsonl` in `out_dir` is append-only, one {"key", "result"} line per finished
  task, so an interrupted run resumes: tasks already present are skipped (even with missing
  metrics, as the official tool), unless `force` (judge all again) or `redo_missing` (judge
  again only the metrics that are missing); new lines are appended and win when merged. A judge
  failure is a None score, never 0. Tasks whose `gen_{id}.png` is absent are refused before any
  judge call unless `allow_incomplete` (then skipped and listed under "missing_outputs").

  Returns:
    `summarize` of the whole file, plus "missing_outputs", "judge" (its settings, no secrets)
    and "newly_judged".
  """
  from tqdm.auto import tqdm
  metrics = tuple(metrics or (IG_METRICS if config == "IG" else TG_METRICS))
  unknown = [m for m in metrics if m not in SHORT.get(config, {})]
  if unknown:
    raise EvalInputError(f"ROVER-{config}: unknown metric(s) {', '.join(unknown)}")
  tasks = list(tasks)[:max_tasks] if max_tasks else list(tasks)
  absent = [str(t["id"]) for t in tasks if not output_paths(gen_dir, t["id"])[0].is_file()]
  if absent and not allow_incomplete:
    raise EvalInputError(f"{gen_dir}: {len(absent)} of {len(tasks)} tasks have no gen_{{id}}.png "
                         f"(first: {', '.join(absent[:5])}); pass allow_incomplete=True to "
                         f"score the rest")
  out = Path(out_dir)
  path = out / "rover_metrics.jsonl"
  state = merged_records(path) if not force else {}
  jobs = pending(tasks, state, metrics, redo_missing=redo_missing, skip=set(absent))
  _drop_torn_tail(path)
  lock = threading.Lock()

  def run(task: dict, todo: Sequence[str]) -> None:
    png, txt = output_paths(gen_dir, task["id"])
    result = {}
    for metric, text, images in judge_requests(task, config, png.read_bytes(), _read_text(txt),
                                               rubrics, todo):
      if images is None:
        result[f"{metric}_score"], result[f"{metric}_reasoning"] = None, "reference image absent"
        continue
      try:
        reply = judge.judge(text, images, f"{metric}_score")
        why = reply.reasoning or (f"error: {reply.error}" if reply.error else None)
        score = reply.score
      except Exception as e:  # a judge that raises still yields a missing score, never 0
        score, why = None, f"error: {type(e).__name__}"
      result[f"{metric}_score"], result[f"{metric}_reasoning"] = score, why
    with lock:
      reports.append_jsonl(path, {"key": str(task["id"]), "result": result})

  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
    futures = [pool.submit(run, task, todo) for task, todo in jobs]
    try:
      for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                         desc=f"ROVER-{config}", unit="task", disable=not progress):
        future.result()
    except BaseException:
      for future in futures:  # stop queued tasks; lines already appended are kept
        future.cancel()
      raise
  groups = None
  if config == "TG":
    groups = {str(t["id"]): {"problem_type": t["problem_type"]} for t in tasks}
  summary = summarize(read_records(path), config=config, metrics=metrics, groups=groups)
  describe = getattr(judge, "describe", None)
  summary.update(missing_outputs=absent, newly_judged=len(jobs),
                 judge=describe() if callable(describe) else type(judge).__name__)
  reports.write_json(out / "rover_summary.json", {"summary": summary, "config": config})
  return summary
