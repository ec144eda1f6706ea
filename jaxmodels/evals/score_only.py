"""Scoring outputs someone already produced, with no model: GenEval image folders, ColorBench
prediction files, ROVER metric records or outputs (judged), ShapesWorld-ROVER folders.

Every input is read and checked before anything is scored, so a malformed one is refused (one
`EvalInputError` naming the file and line or field) before a detector is built, a judge is asked or
an output is written. `evaluate.py --score_only` is the command line of `score_only`.

    from jaxmodels.evals.score_only import score_only
    scores = score_only("geneval_images/", "evaluation_metadata.jsonl", out="runs/eval")
"""
from __future__ import annotations

import json
import os


def geneval_scores(summary: dict) -> dict:
  """The score-table row of a GenEval summary: overall and each tag's accuracy."""
  return {"overall": summary["overall"], **{t: v["accuracy"] for t, v in summary["tags"].items()}}


def read_predictions(path: str) -> dict:
  """ColorBench responses from JSON: {idx: text} or the official {idx: row with model_ans}."""
  from jaxmodels.evals import EvalInputError
  try:
    with open(path, encoding="utf-8") as f:
      raw = json.load(f)
  except OSError as e:
    raise EvalInputError(f"{path}: cannot read predictions ({e.strerror})") from None
  except json.JSONDecodeError as e:
    raise EvalInputError(f"{path}: invalid JSON ({e.msg})") from None
  if not isinstance(raw, dict):
    raise EvalInputError(f"{path}: expected a JSON object idx -> response")
  out = {}
  for key, value in raw.items():
    if isinstance(value, dict):
      if "model_ans" not in value:
        raise EvalInputError(f"{path}: entry {key} has no field 'model_ans'")
      key, value = value.get("idx", key), value["model_ans"]
    if value is not None and not isinstance(value, str):
      raise EvalInputError(f"{path}: entry {key} is not a response string")
    out[str(key)] = value
  return out


def score_only(geneval_dir: str | None, metadata: str | None, out: str, *,
               allow_incomplete: bool = False, images_per_prompt: int = 4,
               colorbench_data: str | None = None, colorbench_predictions: str | None = None,
               official_route: str | None = None, rover_metrics: str | None = None,
               rover_config: str = "IG", shapes_rover_dir: str | None = None,
               shapes_rover_tasks: int = 16, seed: int = 0, image_size: int = 32,
               detector=None, rover_data: str | None = None, rover_outputs: str | None = None,
               rover_rubrics: str | None = None, judge=None) -> dict:
  """Scores whatever outputs are given (see the module docstring); no model. `detector` is the
  GenEval detector, or a zero-argument factory of one called only once every input has passed its
  checks (default: the `shapes` one); `judge` the ROVER judge of `rover_outputs` (e.g.
  `judges.OpenAIJudge(base_url, model)`).

  Raises:
    EvalInputError: a missing or malformed input, naming the file and the line or field, before
      any scoring starts.
  """
  from jaxmodels.evals import EvalInputError
  # Every input is read and checked first, so a malformed one is refused before a detector (or a
  # judge's first request) costs anything and before any output is written.
  if not (geneval_dir or metadata or colorbench_data or colorbench_predictions or rover_metrics
          or rover_outputs or shapes_rover_dir):
    raise EvalInputError("score-only mode: nothing to score (give --geneval_dir/--metadata, "
                         "--colorbench_data/--colorbench_predictions, --rover_metrics, "
                         "--rover_outputs or --shapes_rover_dir)")
  geneval_checked = cb_rows = cb_preds = rover_records = rover_tasks = rover_rubric = None
  shapes_tasks = None
  if geneval_dir or metadata:
    if not (geneval_dir and metadata):
      raise EvalInputError("GenEval scoring needs both --geneval_dir and --metadata")
    from jaxmodels.evals import geneval
    geneval_checked = geneval.check_inputs(geneval_dir, metadata, images_per_prompt=images_per_prompt,
                                           allow_incomplete=allow_incomplete)
  if colorbench_data or colorbench_predictions:
    if not (colorbench_data and colorbench_predictions):
      raise EvalInputError("ColorBench scoring needs --colorbench_data and --colorbench_predictions")
    from jaxmodels.evals import colorbench
    cb_rows = colorbench.load_colorbench(colorbench_data, with_images=False)
    cb_preds = read_predictions(colorbench_predictions)
  if rover_metrics:
    from jaxmodels.evals import rover
    path = os.path.join(rover_metrics, "rover_metrics.jsonl") if os.path.isdir(rover_metrics) \
        else rover_metrics
    if not os.path.isfile(path):
      raise EvalInputError(f"{path}: no rover_metrics.jsonl here")
    rover_records = rover.read_records(path)
  if rover_outputs:
    if not (rover_data and rover_rubrics and judge is not None):
      raise EvalInputError("judging ROVER outputs needs --rover_data, --rover_rubrics and a judge "
                           "(--base_url and --judge_model)")
    from jaxmodels.evals import rover
    if not os.path.isdir(rover_outputs):
      raise EvalInputError(f"{rover_outputs}: ROVER outputs folder not found")
    rover_tasks = rover.load_rover(rover_data, rover_config)
    rover_rubric = rover.load_rubrics(rover_rubrics)
  if shapes_rover_dir:
    from jaxmodels.evals import shapes_rover
    if not os.path.isdir(shapes_rover_dir):
      raise EvalInputError(f"{shapes_rover_dir}: ShapesWorld-ROVER outputs folder not found")
    present = [c for c in ("IG", "TG") if os.path.isdir(os.path.join(shapes_rover_dir, c))]
    if not present:
      raise EvalInputError(f"{shapes_rover_dir}: no IG/ or TG/ folder of gen_{{id}}.png files")
    tasks = shapes_rover.make_tasks(seed=seed, num_ig=shapes_rover_tasks,
                                    num_tg=shapes_rover_tasks, image_size=image_size)
    shapes_tasks = {c: t for c, t in tasks.items() if c in present}

  scores = {}
  if geneval_checked is not None:
    from jaxmodels.evals import geneval
    if detector is None:
      from jaxmodels.evals.detectors import ShapesDetector
      detector = ShapesDetector
    summary = geneval.score_folder(geneval_dir, metadata, detector, out_dir=out,
                                   allow_incomplete=allow_incomplete,
                                   images_per_prompt=images_per_prompt,
                                   checked=geneval_checked)["summary"]
    scores["geneval"] = geneval_scores(summary)
  if cb_rows is not None:
    from jaxmodels.evals import colorbench, reports
    result = colorbench.score(cb_rows, cb_preds, official_route=official_route)
    reports.write_json(os.path.join(out, "colorbench_scores.json"),
                       {k: v for k, v in result.items() if k != "per_row"})
    scores["colorbench"] = {k: v for k, v in colorbench.table_row(result).items() if v is not None}
  if rover_records is not None:
    from jaxmodels.evals import reports, rover
    summary = rover.summarize(rover_records, config=rover_config)
    reports.write_json(os.path.join(out, "rover_summary.json"),
                       {"summary": summary, "config": rover_config})
    scores[f"rover_{rover_config.lower()}"] = dict(summary["overall"])
  if rover_tasks is not None:
    from jaxmodels.evals import rover
    summary = rover.evaluate(rover_tasks, rover_outputs, judge, rover_rubric, out,
                             config=rover_config, progress=False)
    scores[f"rover_{rover_config.lower()}"] = dict(summary["overall"])
  if shapes_tasks is not None:
    from jaxmodels.evals import shapes_rover
    result = shapes_rover.score_folder(shapes_tasks, shapes_rover_dir)
    for config in shapes_tasks:
      scores[f"shapes_rover_{config.lower()}"] = {k: v for k, v in result[config]["exact"].items()
                                           if v is not None}
  return scores
