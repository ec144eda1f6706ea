"""ROVER from a checkpoint: a unified model's outputs for the official ROVER-IG / ROVER-TG tasks, in
the layout ROVER's judge reads, then judged (evals.md §3; `rover.evaluate`).

    plan = prepare(out, "ROVER", "IG", settings, rubrics="ROVER/prompts.py")   # checks; writes nothing
    generate(model, tokenizer, plan)          # <out>/IG/gen_{id}.png (+ gen_{id}.txt)
    count_judge_calls(plan)                   # what judging would cost (the dry run)
    judge_outputs(plan, judge)                # <out>/IG/rover_metrics.jsonl, rover_summary.json

Data: the released parquet (`rover.load_rover`: a file, a folder, or the dataset root holding
`ROVER-IG` / `ROVER-TG`), every task checked before any model is built: a missing column or field,
an id that cannot name a file, an image (source, target, reference, second view) that does not
decode, an unknown TG problem type, or a rubric the tasks need that the local `prompts.py` lacks is
one line naming the file and task.

What the model does (it writes no interleaved text, and reads one image per question):
  IG: the source image (padded or squashed to the model's input as its training did,
      `colorbench_generate.model_pixels`) and the instruction (`prompt`, first `text_len` tokens) go
      through the edit path (`shapes_eval.model_edit_fn`); the edited image is `gen_{id}.png`.
      `ig_text` (ROVER's think text): "none" (default: no `gen_{id}.txt`, so the judge gets the
      official placeholder and RP is 1 by the rubric) or "model" (the model's greedy reply to the
      instruction over the source image, as `gen_{id}.txt`).
  TG: the model first draws the visual aid the same way (`gen_{id}.png`), then answers the prompt
      greedily through the understanding path (`shapes_eval.model_answer_fn`), the reply verbatim as
      `gen_{id}.txt`, as the official pipeline writes "... Final Answer: X". Which image the answer
      reads is not fixed by the released code for a model that cannot interleave: `tg_image`
      "generated" (default: the visual aid, the point of TG) or "source" (the task's image). A second
      view (`image2`) and an embodied `example_image` are not shown to the model; the judge still
      gets them where its rubric asks.
  TG accuracy is UNCONFIRMED upstream (the released beta code judges only IR and RA): with
  `tg_accuracy="exact"` (default) the summary adds "accuracy", 0..100, the share of replies whose
  final answer (the text after the last "answer:", e.g. "Final Answer: B") equals the task's
  `answer` up to case and punctuation (`shapes_rover.tg_answer`); "none" leaves it out.

Layout: `<out>/<IG|TG>/` is the official flat output folder (ROVER_GEN_DIR), holding
`gen_{id}.png` and `gen_{id}.txt`, and the judge's `rover_metrics.jsonl` / `rover_summary.json`
(the files `rover.evaluate` and the official evaluator read and write; as ShapesWorld-ROVER's
`<workdir>/rover/<IG|TG>/`). Beside them: `rover_generation.json` (the settings: checkpoint, step,
sampling, prompt lengths, image preprocessing, the options above, the data files' sha256),
`rover_judge.json` (the judge's model, decoding and the rubric file's sha256) and, after a dry run,
`rover_dry_run.json`.

Resumable twice over. Outputs: a task whose `gen_{id}.png` verifies (and whose `gen_{id}.txt` exists
where one is written) is kept; only the others are generated. Every file is written under a
temporary name and renamed into place, the text before the image, so a kill leaves no half file
under a name the judge reads. Batch b of the tasks (in data order, `config.evals.batch_size` a
batch) is drawn with `jax.random.fold_in(jax.random.key(seed), b)`, so a regenerated output is the
one an uninterrupted run draws and judged records stay valid. Judging: `rover_metrics.jsonl` is
append-only; a task judged there is kept (as the official tool; `redo_missing` re-asks only its
missing metrics). A settings or judge record that differs from this run's is refused in one line,
so one folder never mixes two models or two judges.

Judge failures: a request that times out or fails is retried by the judge (`judges.OpenAIJudge`:
`api_attempts`, backoff), a reply without a valid 1–5 score is asked again (`parse_attempts`); what
still fails is a missing score with reasoning "error: ...", counted per metric under "failures" in
the summary, never a crash and never a rewritten line. `dry_run` counts the judge calls a run would
make (and their bound with every retry) and makes none.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmodels.shapes_world.render import encode_png
from jaxmodels.evals import EvalInputError, rover
from jaxmodels.evals.output_records import (checkpoint_id, file_sha256, is_complete_png, record_matches,
                                            sampling_temperatures, write_atomic)

SETTINGS_FILE = "rover_generation.json"
JUDGE_FILE = "rover_judge.json"
DRY_RUN_FILE = "rover_dry_run.json"
# rover_generation.json keys that must agree between the runs writing one folder.
COMPARED = ("checkpoint", "step", "config", "data_sha256", "sample_steps", "guidance",
            "image_guidance", "temperature", "pattern_temperature", "seed", "batch_size", "text_len",
            "prompt_len", "answer_tokens", "layout", "image_size", "image_aspect", "output_size",
            "gen_target", "ig_text", "tg_image")
# rover_judge.json keys that must agree between the runs judging one folder (not the endpoint: the
# same model behind another gateway is the same judge).
JUDGE_COMPARED = ("model", "temperature", "max_tokens", "rubrics_sha256", "metrics")
IG_TEXT = ("none", "model")
TG_IMAGE = ("generated", "source")
TG_ACCURACY = ("exact", "none")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_TMP = re.compile(r"\.gen_.+\.tmp\.\d+")
_IMAGE_FIELDS = ("image", "target_image", "reasoning_image", "image2", "example_image")


def data_files(path: str | os.PathLike, config: str) -> list[Path]:
  """The parquet files `rover.load_rover` reads for `config`, in its order."""
  path = Path(path)
  if (path / f"ROVER-{config}").is_dir():
    path = path / f"ROVER-{config}"
  return [path] if path.is_file() else sorted(path.rglob("*.parquet")) if path.is_dir() else []


def data_sha256(path: str | os.PathLike, config: str) -> dict:
  """{file name relative to the data path: sha256} of the data files."""
  root = Path(path)
  return {str(f.relative_to(root)) if f != root else f.name: file_sha256(f)
          for f in data_files(path, config)}


def check_tasks(tasks: Sequence[dict], config: str, data: str) -> None:
  """Every field the generation and the judge need, per task (see the module docstring).

  Raises:
    EvalInputError: "<data>: task <id>: <what>", the first problem found.
  """
  from input_pipeline.sources import CorruptRecord, decode_image
  if not tasks:
    raise EvalInputError(f"{data}: no ROVER-{config} tasks")
  required = rover._REQUIRED[config]
  seen = set()
  for n, task in enumerate(tasks):
    tid = task.get("id")
    if not tid or not _SAFE_ID.fullmatch(tid) or tid in (".", ".."):
      raise EvalInputError(f"{data}: task {n}: id {tid!r} cannot name gen_{{id}}.png (letters, "
                           f"digits, '_', '-', '.')")
    if tid in seen:
      raise EvalInputError(f"{data}: task {tid}: id repeats an earlier task")
    seen.add(tid)
    for field in required:
      value = task.get(field)
      if field in _IMAGE_FIELDS:
        continue
      if not isinstance(value, str) or (field in ("prompt", "problem_type", "reasoning_type")
                                        and not value.strip()):
        raise EvalInputError(f"{data}: task {tid}: field {field!r} is {_kind(value)}, not text")
    if config == "TG" and task["problem_type"] not in rover.PROBLEM_TYPES:
      raise EvalInputError(f"{data}: task {tid}: problem_type {task['problem_type']!r} is not one of "
                           f"{', '.join(rover.PROBLEM_TYPES)}")
    for field in _IMAGE_FIELDS:
      value = task.get(field)
      if value is None and field != "image":
        continue
      if not isinstance(value, (bytes, bytearray)) or not value:
        raise EvalInputError(f"{data}: task {tid}: field {field!r} holds no image bytes")
      try:
        decode_image(bytes(value), f"{data}: task {tid} field {field!r}")
      except CorruptRecord:
        raise EvalInputError(f"{data}: task {tid}: field {field!r} is not a readable image") from None


def _kind(value) -> str:
  return "missing" if value is None else f"a {type(value).__name__}"


@dataclasses.dataclass
class Plan:
  """What `generate` writes and `judge_outputs` judges; `todo`: positions of the tasks without
  complete outputs."""
  out_dir: Path                # <out>/<IG|TG>: outputs and judge records
  data: str
  config: str
  tasks: list[dict]
  settings: dict
  rubrics: dict | None         # the rubric strings of the local prompts.py (None: not judged)
  rubrics_sha256: str | None
  todo: list[int]
  kept: int
  broken: list[str]            # gen_{id}.png files there that do not verify (regenerated)
  recorded: bool               # rover_generation.json already exists (a resume)

  @property
  def writes_text(self) -> bool:
    return self.config == "TG" or self.settings["ig_text"] == "model"


def prepare(out: str | os.PathLike, data: str | os.PathLike, config: str, settings: dict, *,
            rubrics: str | os.PathLike | None = None) -> Plan:
  """Reads and checks everything `generate` (and, with `rubrics`, the judge) needs, writing
  nothing: the tasks (`check_tasks`), every rubric they need filled with their fields, `settings`
  against `<out>/<config>/rover_generation.json` when it exists, and which outputs are missing.

  `settings` needs the `COMPARED` keys but `config` and `data_sha256` (added here).

  Raises:
    EvalInputError: one line naming the file (and task, field or setting) at fault.
  """
  if config not in ("IG", "TG"):
    raise EvalInputError(f"--rover_config={config!r}: expected IG or TG")
  for key, allowed in (("ig_text", IG_TEXT), ("tg_image", TG_IMAGE)):
    if settings[key] not in allowed:
      raise EvalInputError(f"ROVER setting {key}={settings[key]!r}: expected one of {allowed}")
  for key in ("batch_size", "text_len", "prompt_len", "answer_tokens", "image_size"):
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise EvalInputError(f"ROVER setting {key}={value!r}: must be an integer >= 1")
  if settings["image_aspect"] not in ("pad", "resize"):
    raise EvalInputError(f"config.data.image_aspect={settings['image_aspect']!r}: expected 'pad' or "
                         f"'resize'")
  tasks = rover.load_rover(data, config)
  check_tasks(tasks, config, str(data))
  rubric_texts = sha = None
  if rubrics is not None:
    rubric_texts = rover.load_rubrics(rubrics)
    metrics = rover.IG_METRICS if config == "IG" else rover.TG_METRICS
    for task in tasks:            # every rubric present and fillable, before any model or judge
      rover.judge_requests(task, config, b"", None, rubric_texts, metrics)
    sha = file_sha256(rubrics)
  settings = dict(settings, config=config, data=str(Path(data).resolve()),
                  data_sha256=data_sha256(data, config))
  gen_dir = Path(out) / config
  recorded = record_matches(gen_dir / SETTINGS_FILE, settings, COMPARED, "settings")
  if not recorded and gen_dir.is_dir():
    foreign = sorted(p.name for p in gen_dir.glob("gen_*.png"))
    if foreign:
      raise EvalInputError(f"{gen_dir}: holds {foreign[0]} (and {len(foreign) - 1} more) but no "
                           f"{SETTINGS_FILE}: not written by this command; choose another --out")
  plan = Plan(gen_dir, str(data), config, tasks, settings, rubric_texts, sha, [], 0, [], recorded)
  for i, task in enumerate(tasks):
    png, txt = rover.output_paths(gen_dir, task["id"])
    if png.exists() and is_complete_png(png) and (txt.exists() or not plan.writes_text):
      plan.kept += 1
      continue
    if png.exists() and not is_complete_png(png):
      plan.broken.append(str(png))
    plan.todo.append(i)
  return plan


def generate(model, tokenizer, plan: Plan, *, progress: bool = True) -> dict:
  """Writes what `plan` says is missing: rover_generation.json (on a fresh folder), then the
  outputs of every batch holding a missing task (the other tasks of a batch are drawn too, for
  the seeds, but their files are kept). Returns {"generated", "kept", "replaced_broken",
  "batches"}."""
  import jax
  from tqdm.auto import tqdm

  from jaxmodels.evals.colorbench_generate import model_pixels
  from jaxmodels.evals.shapes_eval import model_answer_fn, model_edit_fn
  s = plan.settings
  plan.out_dir.mkdir(parents=True, exist_ok=True)
  if not plan.recorded:
    record = {"settings": s, "tasks": len(plan.tasks),
              "seed_rule": "tasks in data order cut into batches of batch_size; batch b is drawn "
                           "with jax.random.fold_in(jax.random.key(seed), b)"}
    write_atomic(plan.out_dir / SETTINGS_FILE, (json.dumps(record, indent=1) + "\n").encode())
    plan.recorded = True
  for stale in plan.out_dir.iterdir():          # temporary files of a killed run
    if _TMP.fullmatch(stale.name):
      stale.unlink()
  if plan.todo and model is None:
    raise EvalInputError(f"{plan.out_dir}: {len(plan.todo)} tasks to generate but no model given")
  size, batch = s["image_size"], s["batch_size"]
  todo = set(plan.todo)
  batches = sorted({i // batch for i in todo})
  answer = None
  if plan.writes_text and batches:
    answer = model_answer_fn(model, tokenizer, batch_size=batch, prompt_len=s["prompt_len"],
                             max_new_tokens=s["answer_tokens"], layout=s["layout"])
  base = jax.random.key(s["seed"])
  with tqdm(total=len(todo), desc=f"ROVER-{plan.config} generate", unit="task",
            disable=not progress) as bar:
    for b in batches:
      chunk = plan.tasks[b * batch:(b + 1) * batch]
      sources = np.stack([model_pixels(t["image"], size, s["image_aspect"],
                                       f"{plan.data}: task {t['id']} field 'image'") for t in chunk])
      prompts = [t["prompt"] for t in chunk]
      edit = model_edit_fn(model, tokenizer, rng=jax.random.fold_in(base, b),
                           num_steps=s["sample_steps"], guidance=s["guidance"],
                           image_guidance=s["image_guidance"], batch_size=batch,
                           text_len=s["text_len"], layout=s.get("edit_layout", "image_first"))
      images, _ = edit(sources, prompts)
      texts = [None] * len(chunk)
      if answer is not None:
        shown = images if plan.config == "TG" and s["tg_image"] == "generated" else sources
        texts = answer(shown, prompts)
      for k, (task, image, text) in enumerate(zip(chunk, images, texts)):
        if b * batch + k not in todo:
          continue
        png, txt = rover.output_paths(plan.out_dir, task["id"])
        if text is not None:
          write_atomic(txt, text.encode("utf-8"))
        write_atomic(png, encode_png(image))
        bar.update(1)
  generated = len(todo)
  plan.kept += generated
  plan.todo = []
  return {"generated": generated, "kept": plan.kept - generated, "replaced_broken": len(plan.broken),
          "batches": len(batches)}


def _metrics(config: str) -> tuple[str, ...]:
  return rover.IG_METRICS if config == "IG" else rover.TG_METRICS


def count_judge_calls(plan: Plan, *, redo_missing: bool = False, api_attempts: int = 5,
                      parse_attempts: int = 3) -> dict:
  """What judging the folder now would cost, with no request made: the tasks still to judge (as
  `rover.evaluate` picks them: not yet in rover_metrics.jsonl, or with `redo_missing` their
  missing metrics), the judge calls (one per metric whose images exist) and the most HTTP requests
  they can take with every retry (calls × api_attempts × parse_attempts)."""
  if plan.rubrics is None:
    raise EvalInputError("a ROVER judge dry run needs --rover_rubrics (the local ROVER prompts.py)")
  state = rover.merged_records(plan.out_dir / "rover_metrics.jsonl")
  jobs = rover.pending(plan.tasks, state, _metrics(plan.config), redo_missing=redo_missing)
  calls = 0
  for task, todo in jobs:
    requests = rover.judge_requests(task, plan.config, b"", None, plan.rubrics, todo)
    calls += sum(images is not None for _, _, images in requests)
  return {"tasks": len(plan.tasks), "already_judged": len(state), "tasks_to_judge": len(jobs),
          "judge_calls": calls, "max_http_requests": calls * api_attempts * parse_attempts}


def judge_record(plan: Plan, judge) -> dict:
  """The `rover_judge.json` settings of `judge` on this plan (`describe()`, no secrets, plus the
  rubric file's sha256 and the metrics)."""
  describe = getattr(judge, "describe", None)
  info = dict(describe()) if callable(describe) else {"type": type(judge).__name__}
  info.setdefault("model", info.get("type"))
  return dict(info, rubrics_sha256=plan.rubrics_sha256, metrics=list(_metrics(plan.config)))


def check_judge(plan: Plan, judge) -> bool:
  """Whether a judge record exists and agrees with `judge` (`JUDGE_COMPARED`).

  Raises:
    EvalInputError: the folder was judged with another judge, other decoding or other rubrics.
  """
  return record_matches(plan.out_dir / JUDGE_FILE, judge_record(plan, judge), JUDGE_COMPARED,
                       "judge settings")


def judge_outputs(plan: Plan, judge, *, redo_missing: bool = False, workers: int = 1,
                  progress: bool = True) -> dict:
  """Judges the folder (`rover.evaluate`: resumable, append-only rover_metrics.jsonl, summary with
  per-metric "failures"), writing rover_judge.json first on a fresh folder."""
  if plan.rubrics is None:
    raise EvalInputError("judging ROVER outputs needs --rover_rubrics (the local ROVER prompts.py)")
  if plan.todo:
    raise EvalInputError(f"{plan.out_dir}: {len(plan.todo)} tasks have no outputs yet")
  if not check_judge(plan, judge):
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(plan.out_dir / JUDGE_FILE,
                  (json.dumps({"settings": judge_record(plan, judge)}, indent=1) + "\n").encode())
  return rover.evaluate(plan.tasks, plan.out_dir, judge, plan.rubrics, plan.out_dir,
                        config=plan.config, redo_missing=redo_missing, workers=workers,
                        progress=progress)


def tg_accuracy(plan: Plan) -> float | None:
  """0..100: the share of TG replies (`gen_{id}.txt`) whose final answer equals the task's
  `answer` up to case and punctuation (see the module docstring); None with no tasks."""
  from jaxmodels.evals import shapes_rover
  right = 0
  for task in plan.tasks:
    txt = rover.output_paths(plan.out_dir, task["id"])[1]
    text = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else ""
    right += shapes_rover.tg_answer(text) == shapes_rover._normalize(task["answer"])
  return 100.0 * right / len(plan.tasks) if plan.tasks else None


# --------------------------------------------------------------------------- from a checkpoint

def settings_for(config, workdir: str, step: int, *, seed: int = 0, ig_text: str = "none",
                 tg_image: str = "generated", answer_tokens: int = 16, text_len: int = 32,
                 image_guidance: float = 1.5) -> dict:
  """What `rover_generation.json` records of a run's ROVER outputs: the checkpoint and step,
  `config.evals` sample_steps / guidance / batch_size, the image guidance, the model's sampling
  temperatures, the seed, the edit prompt's text tokens (`text_len`), the answer prompt length
  (`config.data.und_len`), layout and greedy `answer_tokens`, the model's input side and
  `config.data.image_aspect`, its output side and target, and the IG / TG options.

  Raises:
    ConfigError: the run is not a unified model that reads images and draws them from a prompt.
  """
  from jaxmodels.config_schema import data_section
  from jaxmodels.errors import ConfigError
  from jaxmodels.trainer.setup import unified_config_of
  ucfg = unified_config_of(config, "--rover_data", "reads and draws images")
  if ucfg.und_encoder is None or not ucfg.generates_pixels or ucfg.queries == "image_tokens":
    raise ConfigError("--rover_data: this model cannot edit an image (it needs an understanding "
                      "encoder, a pixel output and a prompt-conditioned generator, not "
                      "queries='image_tokens')")
  temperature, pattern_temperature = sampling_temperatures(ucfg)
  ev, data = config.evals, data_section(config.data, also="shapes_world")
  return {"checkpoint": checkpoint_id(workdir),
          "step": int(step), "sample_steps": int(ev.sample_steps), "guidance": float(ev.guidance),
          "image_guidance": float(image_guidance), "temperature": temperature,
          "pattern_temperature": pattern_temperature, "seed": int(seed),
          "batch_size": int(ev.batch_size), "text_len": text_len,
          "prompt_len": int(data.und_len), "answer_tokens": answer_tokens,
          "layout": data.und_layout,
          "image_size": int(ucfg.und_encoder.image_size),
          "image_aspect": data.image_aspect,
          "output_size": int(ucfg.output_image_size), "gen_target": ucfg.gen_target,
          "ig_text": ig_text, "tg_image": tg_image,
          # recorded only when set, so records written before the option still resume
          **({"edit_layout": data.edit_layout} if data.edit_layout != "image_first" else {})}


def from_checkpoint(config, workdir: str, step: int, out: str, data: str, *, rover_config: str = "IG",
                    rubrics: str | None = None, judge=None, dry_run: bool = False,
                    redo_missing: bool = False, tg_accuracy_rule: str = "exact", seed: int = 0,
                    ig_text: str = "none", tg_image: str = "generated", answer_tokens: int = 16,
                    text_len: int = 32, image_guidance: float = 1.5, api_attempts: int = 5,
                    progress: bool = True) -> dict:
  """`evaluate.py --evals=rover --rover_data`: the outputs of a run's checkpoint for the ROVER tasks
  of `data` in `<out>/<rover_config>/` (resumable), then judged by `judge` with the rubrics of the
  local `prompts.py` (resumable), or with `dry_run` only counted. The data, rubrics, settings and
  judge records and the tokenizer are all checked before the model is built; a complete folder is
  judged without building it; a dry run needs no judge (`api_attempts`: the bound it reports when
  none is given, else the judge's own). Returns {"step", "rover_<ig|tg>": overall scores (plus the
  leaderboard value, the judge failures and, for TG, accuracy)} or, dry, "rover_<ig|tg>_dry_run".

  Raises:
    EvalInputError / ConfigError / CheckpointFormatError: one line naming the file or key.
  """
  from absl import logging

  from jaxmodels.errors import ConfigError
  from jaxmodels.serving.loader import run_tokenizer
  from jaxmodels.trainer.setup import restore_eval_model
  if tg_accuracy_rule not in TG_ACCURACY:
    raise ConfigError(f"--rover_tg_accuracy={tg_accuracy_rule!r}: expected one of {TG_ACCURACY}")
  if (judge is not None or dry_run) and not rubrics:
    raise ConfigError("judging ROVER outputs (--base_url, or --rover_dry_run) needs --rover_rubrics: "
                      "the local copy of ROVER's prompts.py")
  settings = settings_for(config, workdir, step, seed=seed, ig_text=ig_text, tg_image=tg_image,
                          answer_tokens=answer_tokens, text_len=text_len,
                          image_guidance=image_guidance)
  tokenizer = run_tokenizer(workdir, config)
  if getattr(tokenizer, "image_id", None) is None:
    raise ConfigError(f"{workdir}: the run's tokenizer has no image token; ROVER's edit and answer "
                      f"prompts need the built-in WordTokenizer's")
  plan = prepare(out, data, rover_config, settings, rubrics=rubrics)
  if judge is not None and not dry_run:
    check_judge(plan, judge)
  if plan.broken:
    logging.warning("%d unreadable outputs in %s are regenerated (first: %s)", len(plan.broken),
                    plan.out_dir, plan.broken[0])
  logging.info("ROVER-%s outputs in %s: %d kept, %d to generate", rover_config, plan.out_dir,
               plan.kept, len(plan.todo))
  if plan.todo:
    model, _ = restore_eval_model(config, workdir, step)   # EMA weights where the run kept an EMA
    generate(model, tokenizer, plan, progress=progress)
  else:
    generate(None, tokenizer, plan, progress=False)         # the record, if it is missing
  key = f"rover_{rover_config.lower()}"
  result: dict = {"step": step}
  if dry_run:
    attempts = (getattr(judge, "api_attempts", api_attempts), getattr(judge, "parse_attempts", 3))
    count = count_judge_calls(plan, redo_missing=redo_missing, api_attempts=attempts[0],
                              parse_attempts=attempts[1])
    from jaxmodels.evals import reports
    reports.write_json(plan.out_dir / DRY_RUN_FILE, dict(count, config=rover_config))
    print(f"ROVER-{rover_config} dry run: {count['judge_calls']} judge calls for "
          f"{count['tasks_to_judge']} of {count['tasks']} tasks ({count['already_judged']} already "
          f"judged; at most {count['max_http_requests']} requests with every retry); none made")
    result[f"{key}_dry_run"] = count
    return result
  scores: dict = {}
  if judge is not None:
    summary = judge_outputs(plan, judge, redo_missing=redo_missing, progress=progress)
    scores.update(summary["overall"])
    if summary["leaderboard"]["value"] is not None:
      scores["leaderboard"] = summary["leaderboard"]["value"]
    scores["judge_failures"] = sum(summary["failures"].values())
    if scores["judge_failures"]:
      logging.warning("ROVER-%s: %d judge calls failed after their retries (missing scores; %s)",
                      rover_config, scores["judge_failures"], summary["failures"])
  else:
    logging.info("ROVER-%s outputs written to %s (not judged: no --base_url)", rover_config,
                 plan.out_dir)
  if rover_config == "TG" and tg_accuracy_rule == "exact":
    scores["accuracy"] = tg_accuracy(plan)
  if scores:
    result[key] = scores
  return result
