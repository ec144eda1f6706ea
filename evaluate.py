r"""Scores a checkpoint, or existing outputs, on the ShapesWorld / official benchmarks.

    # a training run's checkpoint (latest step, or --step): Q/A, ShapesWorld-GenEval, -ColorBench and
    # -ROVER, generated on the fly with the model (--evals picks a subset); the run's stored config
    # (saved with the checkpoint, else <run>/config.json) unless --config is given; --set KEY=VALUE
    # (repeatable) changes one of its values, --config.x.y=... one of a --config file's
    python evaluate.py --checkpoint=runs/shapes_tiny --out=runs/eval --evals=geneval,colorbench,rover \
        --set evals.geneval_prompts=64
    python evaluate.py --config=configs/shapes_tiny.py --checkpoint=runs/shapes_tiny --out=runs/eval
    # the official GenEval prompts instead: images in the official layout under --out (resumable;
    # settings and seeds in DIR/generation.json), then scored (--geneval_detector=shapes | hf, or
    # --geneval_score=False to stop after writing them for the official tool)
    python evaluate.py --checkpoint=runs/shapes_tiny --evals=geneval --out=runs/geneval \
        --geneval_metadata=geneval/prompts/evaluation_metadata.jsonl --images_per_prompt=4
    # the official ColorBench rows (parquet) instead: the model's answers, resumable, in DIR (settings
    # in DIR/colorbench_generation.json), the official result file DIR/colorbench_results/<name>.json
    # and its scores (perception, reasoning, overall, robustness), as --score_only scores it
    python evaluate.py --checkpoint=runs/shapes_tiny --evals=colorbench --out=runs/colorbench \
        --colorbench_data=ColorBench/data/test-00000-of-00001.parquet
    # the official ROVER tasks (parquet) instead: the model's outputs in ROVER's layout DIR/IG/gen_{id}.png
    # (+ .txt; resumable, settings in DIR/IG/rover_generation.json), judged by any OpenAI-compatible
    # endpoint with the local ROVER rubrics (resumable DIR/IG/rover_metrics.jsonl; key from the
    # environment variable --judge_api_key_env), or --rover_dry_run: only count the judge calls
    python evaluate.py --checkpoint=runs/shapes_tiny --evals=rover --rover_data=ROVER --rover_config=IG \
        --out=runs/rover --rover_rubrics=ROVER/prompts.py --base_url=https://api.openai.com/v1 \
        --judge_model=gpt-4.1
    # score-only (no model); the flag groups below combine freely in one call:
    #   GenEval image folder (official layout), shapes detector or --detector=hf on local weights
    python evaluate.py --score_only --out=runs/eval --geneval_dir=DIR --metadata=prompts.jsonl \
        --detector=hf --hf_detector_dir=W/mask2former --hf_clip_dir=W/clip-vit-l-14 --device=cuda
    #   official ColorBench parquet + a model's responses
    python evaluate.py --score_only --out=runs/eval --colorbench_data=ColorBench/data \
        --colorbench_predictions=preds.json
    #   judged ROVER records -> summary; ShapesWorld-ROVER gen_{id} files -> exact scores
    python evaluate.py --score_only --out=runs/eval --rover_metrics=DIR/rover_metrics.jsonl \
        --shapes_rover_dir=runs/eval/rover
    #   ROVER outputs judged by any OpenAI-compatible endpoint, e.g. a local `python serve.py ...`
    python evaluate.py --score_only --out=runs/eval --rover_data=ROVER --rover_outputs=DIR \
        --rover_rubrics=ROVER/prompts.py --base_url=http://127.0.0.1:8000/v1 --judge_model=NAME

Writes the official files of each benchmark, `results.json` with every score, `scores.md` (markdown
tables) and one bar chart `<benchmark>.png` per benchmark, and prints the score table. The checkpoint
mode restores the same state tree that train.py saved (built abstractly, so nothing is allocated
twice) and reads the run's tokenizer.json. Score-only keys: geneval, colorbench, rover_ig /
rover_tg (judged records), shapes_rover_ig / shapes_rover_tg (exact). ColorBench predictions are a
JSON object idx → response text, or the official result file (idx → row with `model_ans`).

Every mistake in the inputs (a config file, key or value, the checkpoint path or step, a missing
stored config or tokenizer, a malformed prompt file, image folder or prediction file) ends the
program with one line `error: <file or key>: <what is wrong>` and exit status 1, before any model
or detector is built.
"""
from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from jaxmodels.evals.score_only import read_predictions, score_only  # noqa: F401 - evaluate.score_only
from jaxmodels.run_dir import checkpoint_step, final_workdir, run_workdir, stored_config  # noqa: F401

EVALS = ("qa", "geneval", "colorbench", "rover")
TEXT_EVALS = ("mctune",)   # text-only runs (model.type="lm"): jaxmodels/evals/mctune.py


def _define_flags():
  """CLI flags, defined only when run as a script (so train.py and evaluate.py import together)."""
  global _CONFIG, _CHECKPOINT, _STEP, _OUT, _SCORE_ONLY, _GENEVAL_DIR, _METADATA
  global _ALLOW_INCOMPLETE, _IMAGES_PER_PROMPT, _EVALS, _CB_DATA, _CB_PREDS, _CB_ROUTE
  global _ROVER_METRICS, _ROVER_CONFIG, _SHAPES_ROVER_DIR, _SHAPES_ROVER_TASKS, _SEED, _IMAGE_SIZE
  global _DETECTOR, _HF_DETECTOR_DIR, _HF_CLIP_DIR, _DEVICE
  global _ROVER_DATA, _ROVER_OUTPUTS, _ROVER_RUBRICS, _BASE_URL, _JUDGE_MODEL, _JUDGE_KEY, _JUDGE_TOKENS
  global _SET, _GENEVAL_METADATA, _GENEVAL_LIMIT, _GENEVAL_SEED, _GENEVAL_SCORE
  global _CB_MODEL_NAME, _CB_PROMPT_LEN, _CB_MAX_NEW_TOKENS, _CB_INSTRUCTION, _CB_MATCH_CHOICES
  global _ROVER_DRY_RUN, _ROVER_REDO, _ROVER_IG_TEXT, _ROVER_TG_IMAGE, _ROVER_TG_ACC, _ROVER_SEED
  global _JUDGE_TIMEOUT, _JUDGE_ATTEMPTS
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A config file[:arg] (checkpoint mode; default: the run's stored config); "
      "--config.x.y=... overrides.", lock_config=True)
  _SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE: sets a value of the config (stored or "
                                   "--config), e.g. --set evals.batch_size=8; repeatable.")
  _CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The run's workdir (holds checkpoints/, "
                                    "tokenizer.json) or its checkpoints/ folder.")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  _OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
  _EVALS = flags.DEFINE_list("evals", list(EVALS), f"Checkpoint mode: benchmarks among {EVALS + TEXT_EVALS}.")
  _SCORE_ONLY = flags.DEFINE_bool("score_only", False, "Score existing outputs without a model.")
  _GENEVAL_DIR = flags.DEFINE_string("geneval_dir", None, "Images in GenEval's layout (score-only mode).")
  _METADATA = flags.DEFINE_string("metadata", None, "GenEval prompt file (evaluation_metadata.jsonl).")
  _ALLOW_INCOMPLETE = flags.DEFINE_bool("allow_incomplete", False, "Score an incomplete image folder.")
  _IMAGES_PER_PROMPT = flags.DEFINE_integer("images_per_prompt", 4, "Images per prompt (GenEval: 4).")
  _DETECTOR = flags.DEFINE_enum("detector", "shapes", ["shapes", "hf"], "GenEval detector (score-only "
                                "and --geneval_metadata).")
  flags.DEFINE_alias("geneval_detector", "detector")
  _GENEVAL_METADATA = flags.DEFINE_string(
      "geneval_metadata", None, "Checkpoint mode with --evals=geneval: generate the images of this "
      "official prompt file (evaluation_metadata.jsonl) into --out in GenEval's layout, then score them.")
  _GENEVAL_LIMIT = flags.DEFINE_integer("geneval_limit", None, "--geneval_metadata: only the first N "
                                        "prompts (scored as an incomplete folder).")
  _GENEVAL_SEED = flags.DEFINE_integer("geneval_seed", 42, "--geneval_metadata: the sampling seed.")
  _GENEVAL_SCORE = flags.DEFINE_bool("geneval_score", True, "--geneval_metadata: score the images "
                                     "(False: stop after writing them, e.g. for the official tool).")
  _HF_DETECTOR_DIR = flags.DEFINE_string("hf_detector_dir", None, "Local Mask2Former weights (--detector=hf).")
  _HF_CLIP_DIR = flags.DEFINE_string("hf_clip_dir", None, "Local CLIP weights (--detector=hf).")
  _DEVICE = flags.DEFINE_string("device", "cpu", "torch device of the hf detector.")
  _CB_DATA = flags.DEFINE_string("colorbench_data", None, "ColorBench parquet file/folder or JSON rows "
                                  "(score-only; or checkpoint mode with --evals=colorbench: the rows "
                                  "the model answers).")
  _CB_MODEL_NAME = flags.DEFINE_string("colorbench_model_name", None, "Checkpoint mode with "
                                       "--colorbench_data: the result file's name (default "
                                       "<run>_step<step>).")
  _CB_PROMPT_LEN = flags.DEFINE_integer("colorbench_prompt_len", None, "--colorbench_data: prompt "
                                        "tokens, image included (default config.data.und_len).")
  _CB_MAX_NEW_TOKENS = flags.DEFINE_integer("colorbench_max_new_tokens", 16, "--colorbench_data: "
                                            "greedy answer tokens.")
  _CB_INSTRUCTION = flags.DEFINE_string("colorbench_instruction", None, "--colorbench_data: the "
                                        "instruction before each prompt (default colorbench."
                                        "DIRECT_INSTRUCTION; e.g. the verbatim upstream string).")
  _CB_MATCH_CHOICES = flags.DEFINE_bool("colorbench_match_choices", False, "--colorbench_data: read a "
                                        "reply that is exactly one option's text as that option.")
  _CB_PREDS = flags.DEFINE_string("colorbench_predictions", None, "ColorBench responses (JSON).")
  _CB_ROUTE = flags.DEFINE_enum("official_route", None, ["open", "api", "cot"],
                                "Mirror the official ColorBench answer parser of this route.")
  _ROVER_METRICS = flags.DEFINE_string("rover_metrics", None, "A judged rover_metrics.jsonl (or its folder).")
  _ROVER_CONFIG = flags.DEFINE_enum("rover_config", "IG", ["IG", "TG"],
                                    "ROVER config of --rover_metrics / --rover_outputs.")
  _ROVER_DATA = flags.DEFINE_string("rover_data", None, "ROVER parquet (file, folder or dataset root; "
                                    "checkpoint mode with --evals=rover: the tasks the model does).")
  _ROVER_DRY_RUN = flags.DEFINE_bool("rover_dry_run", False, "--rover_data: write the outputs, count "
                                     "the judge calls (DIR/<config>/rover_dry_run.json), make none.")
  _ROVER_REDO = flags.DEFINE_bool("rover_redo_missing", False, "--rover_data: ask the judge again for "
                                  "the missing scores of judged tasks (appended lines).")
  _ROVER_IG_TEXT = flags.DEFINE_enum("rover_ig_text", "none", ["none", "model"], "--rover_data IG: "
                                     "the think text gen_{id}.txt: none, or the model's greedy reply.")
  _ROVER_TG_IMAGE = flags.DEFINE_enum("rover_tg_image", "generated", ["generated", "source"],
                                      "--rover_data TG: the image the answer reads (the drawn visual "
                                      "aid, or the task's image).")
  _ROVER_TG_ACC = flags.DEFINE_enum("rover_tg_accuracy", "exact", ["exact", "none"], "--rover_data "
                                    "TG: add exact final-answer accuracy (UNCONFIRMED upstream).")
  _ROVER_SEED = flags.DEFINE_integer("rover_seed", 0, "--rover_data: the sampling seed.")
  _ROVER_OUTPUTS = flags.DEFINE_string("rover_outputs", None, "gen_{id}.png/.txt outputs to judge.")
  _ROVER_RUBRICS = flags.DEFINE_string("rover_rubrics", None, "A local copy of ROVER's prompts.py.")
  _BASE_URL = flags.DEFINE_string("base_url", None, "The ROVER judge's OpenAI-compatible endpoint.")
  _JUDGE_MODEL = flags.DEFINE_string("judge_model", None, "The ROVER judge's model name.")
  _JUDGE_KEY = flags.DEFINE_string("judge_api_key_env", "OPENAI_API_KEY",
                                   "Environment variable of the judge's key ('' for none).")
  _JUDGE_TOKENS = flags.DEFINE_integer("judge_max_tokens", 3000, "The judge's max_tokens per reply.")
  _JUDGE_TIMEOUT = flags.DEFINE_float("judge_timeout", 120.0, "Seconds per judge request.")
  _JUDGE_ATTEMPTS = flags.DEFINE_integer("judge_attempts", 5, "Tries per judge request (timeouts, "
                                         "HTTP errors); a reply without a score is asked 3 times.")
  _SHAPES_ROVER_DIR = flags.DEFINE_string("shapes_rover_dir", None, "ShapesWorld-ROVER outputs (IG/, TG/).")
  _SHAPES_ROVER_TASKS = flags.DEFINE_integer("shapes_rover_tasks", 16, "ShapesWorld-ROVER tasks per config.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the ShapesWorld-ROVER tasks (score-only mode).")
  _IMAGE_SIZE = flags.DEFINE_integer("image_size", 32, "Image size of the ShapesWorld-ROVER tasks.")


def evaluate_checkpoint(config, workdir: str, out: str, step: int | None = None,
                        evals=EVALS, settings=(), *, geneval_metadata: str | None = None,
                        images_per_prompt: int = 4, geneval_limit: int | None = None,
                        geneval_seed: int = 42, detector=None, geneval_score: bool = True,
                        colorbench_data: str | None = None, colorbench_options: dict | None = None,
                        rover_data: str | None = None, rover_options: dict | None = None) -> dict:
  """Scores a run's checkpoint (`workdir`: the run or its checkpoints/ folder; `step`: default the
  latest). `config` None takes the run's stored config (`stored_config`); `settings` are
  `KEY=VALUE` changes to it (`config_utils.set_values`). The run directory, step, config and
  tokenizer are all checked before the model is built.

  With `geneval_metadata` (an official GenEval prompt file; `evals` must be ("geneval",)) the model
  draws that file's prompts instead of ShapesWorld's: `geneval_from_checkpoint`. With
  `colorbench_data` (the official ColorBench parquet; `evals` must be ("colorbench",)) it answers
  those rows instead: `colorbench_from_checkpoint` (`colorbench_options` are its keyword arguments).
  With `rover_data` (the official ROVER parquet; `evals` must be ("rover",)) it does those tasks and
  has them judged: `jaxmodels.evals.rover_generate.from_checkpoint` (`rover_options`)."""
  from input_pipeline.datasets import default_data_dir
  from input_pipeline.tokenizers import WordTokenizer
  from jaxmodels.config_utils import set_values
  from jaxmodels.errors import CheckpointFormatError, ConfigError

  unknown = [e for e in evals if e not in EVALS + TEXT_EVALS]
  if unknown:
    raise ConfigError(f"--evals: unknown benchmark(s) {', '.join(unknown)}; known: "
                      f"{', '.join(EVALS + TEXT_EVALS)}")
  if "mctune" in evals and len(evals) > 1:
    raise ConfigError("--evals=mctune: a text-only evaluation, not combined with the ShapesWorld ones")
  workdir = final_workdir(workdir)   # a two-phase run: its GRPO phase
  step = checkpoint_step(workdir, step) if "://" not in workdir else step
  if config is None:
    config = stored_config(workdir, step)
  set_values(config, settings)
  if geneval_metadata is not None:
    if tuple(evals) != ("geneval",):
      raise ConfigError(f"--geneval_metadata: generates the official GenEval prompts on their own; pass "
                        f"--evals=geneval (got --evals={','.join(evals)})")
    return geneval_from_checkpoint(config, workdir, step, out, geneval_metadata,
                                   images_per_prompt=images_per_prompt, limit=geneval_limit,
                                   seed=geneval_seed, detector=detector, score=geneval_score)
  if colorbench_data is not None:
    if tuple(evals) != ("colorbench",):
      raise ConfigError(f"--colorbench_data: answers the official ColorBench rows on their own; pass "
                        f"--evals=colorbench (got --evals={','.join(evals)})")
    return colorbench_from_checkpoint(config, workdir, step, out, colorbench_data,
                                      **(colorbench_options or {}))
  if rover_data is not None:
    if tuple(evals) != ("rover",):
      raise ConfigError(f"--rover_data: does the official ROVER tasks on their own; pass --evals=rover "
                        f"(got --evals={','.join(evals)})")
    from jaxmodels.evals import rover_generate
    return rover_generate.from_checkpoint(config, workdir, step, out, rover_data,
                                          **(rover_options or {}))
  if "mctune" in evals:          # MCTune: re-measured controls of generated responses
    from jaxmodels.evals import mctune
    return mctune.evaluate_checkpoint(config, workdir, out, step)
  tok_path = os.path.join(workdir, "tokenizer.json")
  if "://" not in workdir and not os.path.exists(tok_path):
    raise CheckpointFormatError(f"{tok_path}: missing (the run's tokenizer is saved there by train.py)")
  from jaxmodels.evals import shapes_eval
  from jaxmodels.trainer.setup import restore_eval_model, run_keys, shapes_eval_supported
  model, step = restore_eval_model(config, workdir, step)   # EMA weights where the run kept an EMA
  if not shapes_eval_supported(config, model):
    raise ConfigError(f"config.model.type={config.model.get('type')!r}: the ShapesWorld evaluations need a "
                      f"unified model")
  scores = shapes_eval.evaluate_model(model, WordTokenizer.load(tok_path), config,
                                      config.data.get("data_dir") or default_data_dir(), out,
                                      rng=run_keys(config.seed)[1], final=True,
                                      evals=tuple(evals))
  return {"step": step, **scores}


def geneval_settings(config, workdir: str, step: int, *, images_per_prompt: int, seed: int) -> dict:
  """What `<out>/generation.json` records of a run's GenEval sampling (compared on resume): the
  checkpoint and step, `config.evals` sample_steps / guidance / batch_size / prompt_template, the
  generation prompt length (`config.data.gen_len`), the model's sampling temperatures, output
  resolution and target, the seed and images per prompt.

  Raises:
    ConfigError: the run is not a unified model that draws images.
  """
  from jaxmodels.config_schema import data_section
  from jaxmodels.errors import ConfigError
  from jaxmodels.evals.output_records import checkpoint_id, sampling_temperatures
  from jaxmodels.trainer.setup import unified_config_of
  ucfg = unified_config_of(config, "--geneval_metadata", "generates images")
  if not ucfg.generates_pixels:
    raise ConfigError(f"config.model.gen_target={ucfg.gen_target!r}: this model does not generate "
                      f"images (no pixel decoder), so it has no GenEval images")
  temperature, pattern_temperature = sampling_temperatures(ucfg)
  ev = config.evals
  return {"checkpoint": checkpoint_id(workdir), "step": int(step),
          "sample_steps": int(ev.sample_steps), "guidance": float(ev.guidance),
          "temperature": temperature, "pattern_temperature": pattern_temperature, "seed": int(seed),
          "batch_size": int(ev.batch_size), "images_per_prompt": images_per_prompt,
          "resolution": int(ucfg.output_image_size), "gen_target": ucfg.gen_target,
          "prompt_template": ev.prompt_template,
          "prompt_len": int(data_section(config.data, also="shapes_world").gen_len)}


def geneval_from_checkpoint(config, workdir: str, step: int, out: str, metadata: str, *,
                            images_per_prompt: int = 4, limit: int | None = None, seed: int = 42,
                            detector=None, score: bool = True, progress: bool = True) -> dict:
  """GenEval from a checkpoint on an official prompt file: writes `<out>/<5-digit>/metadata.jsonl` +
  `samples/NNNN.png` (`jaxmodels.evals.geneval_generate`: resumable, atomic writes, settings and
  seeds in `<out>/generation.json`), with each prompt put through `config.evals.prompt_template`,
  then (`score`) scores the folder as `--score_only` does (`detector`: a detector or a factory of
  one, default `shapes`; results.jsonl and the summary files in `out`). The prompt file, the
  template, the folder against its record and the tokenizer are checked before the model is built;
  a complete folder is scored without building it. Returns {"step", and "geneval" when scored}.

  Raises:
    EvalInputError / ConfigError / CheckpointFormatError: one line naming the file or key.
  """
  from absl import logging

  from jaxmodels.evals import geneval_generate
  from jaxmodels.serving.loader import run_tokenizer
  from jaxmodels.trainer.setup import restore_eval_model
  settings = geneval_settings(config, workdir, step, images_per_prompt=images_per_prompt, seed=seed)
  geneval_generate.check_template(settings["prompt_template"])
  tokenizer = run_tokenizer(workdir, config)
  plan = geneval_generate.prepare(out, metadata, tokenizer, settings, limit=limit)
  (logging.warning if plan.prompt_stats["unknown_words"] else logging.info)(
      "%s", geneval_generate.describe_prompts(plan))
  if plan.broken:
    logging.warning("%d unreadable PNGs in %s are regenerated (first: %s)", len(plan.broken), out,
                    plan.broken[0])
  logging.info("GenEval images in %s: %d kept, %d to generate", out, plan.kept, len(plan.todo))
  if plan.todo:
    model, _ = restore_eval_model(config, workdir, step)   # EMA weights where the run kept an EMA
    geneval_generate.generate(model, plan, progress=progress)
  else:
    geneval_generate.generate(None, plan, progress=False)  # only the metadata files, if any missing
  result = {"step": step}
  if not score:
    logging.info("GenEval images written to %s (not scored: --geneval_score=False)", out)
    return result
  result.update(score_only(out, metadata, out, images_per_prompt=images_per_prompt,
                           allow_incomplete=plan.limit < len(plan.prompts), detector=detector))
  return result


def colorbench_settings(config, workdir: str, step: int, *, prompt_len: int | None = None,
                        max_new_tokens: int = 16, instruction: str | None = None,
                        match_choices: bool = False, model_name: str | None = None) -> dict:
  """What `<out>/colorbench_generation.json` records of a run's ColorBench answers (the
  `colorbench_generate.COMPARED` keys are compared on resume): the checkpoint and step, greedy
  decoding (`max_new_tokens`, the prompt length: default `config.data.und_len`, the prompt layout
  `config.data.und_layout`), the model's image side and `config.data.image_aspect`, the instruction,
  `config.evals.batch_size`, and the result file's model name (default `<run>_step<step>`).

  Raises:
    ConfigError: the run is not a unified model that reads images.
  """
  from jaxmodels.config_schema import data_section
  from jaxmodels.errors import ConfigError
  from jaxmodels.evals import colorbench
  from jaxmodels.evals.output_records import checkpoint_id
  from jaxmodels.trainer.setup import unified_config_of
  ucfg = unified_config_of(config, "--colorbench_data", "reads images")
  if ucfg.und_encoder is None:
    raise ConfigError("config.model.und_encoder is None: this model reads no images, so it has no "
                      "ColorBench answers")
  run = os.path.basename(os.path.normpath(workdir.rstrip("/"))) or "run"
  data = data_section(config.data, also="shapes_world")
  return {"checkpoint": checkpoint_id(workdir), "step": int(step),
          "decoding": "greedy", "max_new_tokens": max_new_tokens,
          "prompt_len": int(prompt_len if prompt_len is not None else data.und_len),
          "layout": data.und_layout,
          "image_size": int(ucfg.und_encoder.image_size),
          "image_aspect": data.image_aspect,
          "instruction": colorbench.DIRECT_INSTRUCTION if instruction is None else instruction,
          "match_choices": bool(match_choices), "batch_size": int(config.evals.batch_size),
          "model_name": model_name or f"{run}_step{int(step)}"}


def colorbench_from_checkpoint(config, workdir: str, step: int, out: str, data: str, *,
                               prompt_len: int | None = None, max_new_tokens: int = 16,
                               instruction: str | None = None, match_choices: bool = False,
                               model_name: str | None = None, official_route: str | None = None,
                               progress: bool = True) -> dict:
  """ColorBench from a checkpoint on the official rows (`data`: the parquet file or a folder of
  them): the model's greedy answers to `colorbench.build_prompt` (instruction + the dataset prompt)
  and each row's image (any size or mode; `colorbench_generate.model_pixels`), appended to
  `<out>/colorbench_answers.jsonl` (resumable: answered rows are kept; settings in
  `<out>/colorbench_generation.json`, a mismatch refused), then the official result file
  `<out>/colorbench_results/<model_name>.json`, scored as `--score_only` scores it
  (`official_route`: the official parser of that route instead of `colorbench.extract_choice`;
  `<out>/colorbench_scores.json`). The data (every row and column), the settings against the record
  and the tokenizer are checked before the model is built; a complete folder is scored without
  building it. Returns {"step", "colorbench": the official table row}.

  Raises:
    EvalInputError / ConfigError / CheckpointFormatError: one line naming the file or key.
  """
  from absl import logging

  from jaxmodels.errors import ConfigError
  from jaxmodels.evals import colorbench_generate
  from jaxmodels.serving.loader import run_tokenizer
  from jaxmodels.trainer.setup import restore_eval_model
  settings = colorbench_settings(config, workdir, step, prompt_len=prompt_len,
                                 max_new_tokens=max_new_tokens, instruction=instruction,
                                 match_choices=match_choices, model_name=model_name)
  tokenizer = run_tokenizer(workdir, config)
  if getattr(tokenizer, "image_id", None) is None:
    raise ConfigError(f"{workdir}: the run's tokenizer has no image token; the understanding prompt "
                      f"(input_pipeline.shapes_tasks.und_prompt) needs the built-in WordTokenizer's")
  plan = colorbench_generate.prepare(out, data, settings)
  logging.info("ColorBench rows of %s: %d kept, %d to answer", data, len(plan.rows) - len(plan.todo),
               len(plan.todo))
  if plan.todo:
    from jaxmodels.evals.shapes_eval import model_answer_fn
    model, _ = restore_eval_model(config, workdir, step)   # EMA weights where the run kept an EMA
    room = settings["prompt_len"] - 1 - model.num_image_tokens
    line, warn = colorbench_generate.describe_prompts(plan, tokenizer, room)
    (logging.warning if warn else logging.info)("%s", line)
    answer_fn = model_answer_fn(model, tokenizer, batch_size=settings["batch_size"],
                                prompt_len=settings["prompt_len"],
                                max_new_tokens=settings["max_new_tokens"], layout=settings["layout"])
    colorbench_generate.answer(answer_fn, plan, progress=progress)
  else:
    colorbench_generate.answer(None, plan, progress=False)   # the record, if it is missing
  path = colorbench_generate.write_result_file(plan)
  logging.info("ColorBench result file: %s", path)
  result = {"step": step}
  result.update(score_only(None, None, out, colorbench_data=data, colorbench_predictions=str(path),
                           official_route=official_route))
  return result


def write_outputs(out: str, scores: dict) -> None:
  """`results.json`, `scores.md` and one bar chart per benchmark in `out`."""
  from jaxmodels.evals import reports
  reports.write_json(os.path.join(out, "results.json"), scores)
  reports.write_score_reports(out, {k: v for k, v in scores.items() if isinstance(v, dict)})


def main(argv):
  del argv
  from jaxmodels import host_devices
  from jaxmodels.errors import run_cli
  from jaxmodels.log_filters import quiet_library_logs
  host_devices.ensure_collective_threads()   # before the first computation (virtual CPU devices)
  quiet_library_logs()
  run_cli(_run)


def _detector_factory():
  """The GenEval detector the flags choose: None (the `shapes` default) or, for --detector=hf
  (alias --geneval_detector), a factory of it; its weight folders are checked now, the detector is
  built by the scorer once every input has passed its checks."""
  from jaxmodels.errors import ConfigError
  if _DETECTOR.value != "hf":
    return None
  from jaxmodels.evals.detectors import make_detector
  if not (_HF_DETECTOR_DIR.value and _HF_CLIP_DIR.value):
    raise ConfigError("--detector=hf needs --hf_detector_dir and --hf_clip_dir")
  for flag, path in (("--hf_detector_dir", _HF_DETECTOR_DIR.value), ("--hf_clip_dir", _HF_CLIP_DIR.value)):
    if not os.path.isdir(path):
      raise ConfigError(f"{flag}={path}: no such directory")

  def detector():
    return make_detector("hf", detector_dir=_HF_DETECTOR_DIR.value, clip_dir=_HF_CLIP_DIR.value,
                         device=_DEVICE.value)
  return detector


def _judge():
  """The ROVER judge the flags name (--base_url, --judge_model; key from the environment variable
  --judge_api_key_env, checked now), or None without --base_url."""
  from jaxmodels.errors import ConfigError
  if not _BASE_URL.value:
    return None
  from jaxmodels.evals.judges import OpenAIJudge
  if not _JUDGE_MODEL.value:
    raise ConfigError("--base_url needs --judge_model")
  if _JUDGE_ATTEMPTS.value < 1 or not _JUDGE_TIMEOUT.value > 0:
    raise ConfigError("--judge_attempts must be >= 1 and --judge_timeout > 0")
  return OpenAIJudge(_BASE_URL.value, _JUDGE_MODEL.value, api_key_env=_JUDGE_KEY.value or None,
                     max_tokens=_JUDGE_TOKENS.value, timeout=_JUDGE_TIMEOUT.value,
                     api_attempts=_JUDGE_ATTEMPTS.value)


def _run():
  from jaxmodels.errors import ConfigError
  from jaxmodels.evals import shapes_eval
  os.makedirs(_OUT.value, exist_ok=True)
  if _SCORE_ONLY.value:
    if _CONFIG.value is not None or _CHECKPOINT.value or _SET.value:
      raise ConfigError("--score_only scores saved outputs: --config, --checkpoint and --set "
                        "belong to checkpoint mode")
    if _GENEVAL_METADATA.value or _GENEVAL_LIMIT.value is not None:
      raise ConfigError("--geneval_metadata / --geneval_limit generate images from a checkpoint; "
                        "score-only mode takes --geneval_dir and --metadata")
    if _CB_MODEL_NAME.value or _CB_PROMPT_LEN.value is not None or _CB_INSTRUCTION.value is not None \
        or _CB_MATCH_CHOICES.value:
      raise ConfigError("--colorbench_model_name / _prompt_len / _instruction / _match_choices "
                        "answer ColorBench from a checkpoint; score-only mode takes "
                        "--colorbench_data and --colorbench_predictions")
    if _ROVER_DRY_RUN.value or _ROVER_REDO.value:
      raise ConfigError("--rover_dry_run / --rover_redo_missing belong to checkpoint mode with "
                        "--rover_data")
    detector = _detector_factory()
    judge = _judge()
    scores = score_only(_GENEVAL_DIR.value, _METADATA.value, _OUT.value,
                        allow_incomplete=_ALLOW_INCOMPLETE.value,
                        images_per_prompt=_IMAGES_PER_PROMPT.value,
                        colorbench_data=_CB_DATA.value, colorbench_predictions=_CB_PREDS.value,
                        official_route=_CB_ROUTE.value, rover_metrics=_ROVER_METRICS.value,
                        rover_config=_ROVER_CONFIG.value, shapes_rover_dir=_SHAPES_ROVER_DIR.value,
                        shapes_rover_tasks=_SHAPES_ROVER_TASKS.value, seed=_SEED.value,
                        image_size=_IMAGE_SIZE.value, detector=detector,
                        rover_data=_ROVER_DATA.value, rover_outputs=_ROVER_OUTPUTS.value,
                        rover_rubrics=_ROVER_RUBRICS.value, judge=judge)
  else:
    if not _CHECKPOINT.value:
      raise ConfigError("checkpoint mode needs --checkpoint=RUN (a training workdir; or use "
                        "--score_only)")
    if _GENEVAL_LIMIT.value is not None and not _GENEVAL_METADATA.value:
      raise ConfigError("--geneval_limit needs --geneval_metadata")
    if _CB_PREDS.value:
      raise ConfigError("--colorbench_predictions is scored with --score_only; in checkpoint mode "
                        "--colorbench_data names the rows the model answers")
    if _ROVER_OUTPUTS.value or _ROVER_METRICS.value:
      raise ConfigError("--rover_outputs / --rover_metrics are scored with --score_only; in checkpoint "
                        "mode --rover_data names the tasks the model does")
    if (_ROVER_DRY_RUN.value or _BASE_URL.value) and not _ROVER_DATA.value:
      raise ConfigError("--rover_dry_run / --base_url in checkpoint mode judge the outputs of "
                        "--rover_data (the official ROVER parquet)")
    scores = evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, _OUT.value, _STEP.value,
                                 evals=_EVALS.value, settings=_SET.value,
                                 geneval_metadata=_GENEVAL_METADATA.value,
                                 images_per_prompt=_IMAGES_PER_PROMPT.value,
                                 geneval_limit=_GENEVAL_LIMIT.value, geneval_seed=_GENEVAL_SEED.value,
                                 detector=_detector_factory() if _GENEVAL_METADATA.value else None,
                                 geneval_score=_GENEVAL_SCORE.value,
                                 colorbench_data=_CB_DATA.value,
                                 colorbench_options=dict(
                                     prompt_len=_CB_PROMPT_LEN.value,
                                     max_new_tokens=_CB_MAX_NEW_TOKENS.value,
                                     instruction=_CB_INSTRUCTION.value,
                                     match_choices=_CB_MATCH_CHOICES.value,
                                     model_name=_CB_MODEL_NAME.value,
                                     official_route=_CB_ROUTE.value),
                                 rover_data=_ROVER_DATA.value,
                                 rover_options=dict(
                                     rover_config=_ROVER_CONFIG.value, rubrics=_ROVER_RUBRICS.value,
                                     judge=_judge() if _ROVER_DATA.value and not _ROVER_DRY_RUN.value
                                     else None, api_attempts=_JUDGE_ATTEMPTS.value,
                                     dry_run=_ROVER_DRY_RUN.value, redo_missing=_ROVER_REDO.value,
                                     tg_accuracy_rule=_ROVER_TG_ACC.value, seed=_ROVER_SEED.value,
                                     ig_text=_ROVER_IG_TEXT.value, tg_image=_ROVER_TG_IMAGE.value))
  write_outputs(_OUT.value, scores)
  shapes_eval.print_scores({k: v for k, v in scores.items() if isinstance(v, dict)})


if __name__ == "__main__":
  from jaxmodels import host_malloc
  host_malloc.reexec_for_xla_cpu()   # first: glibc reads its malloc settings at start-up
  from jaxmodels.config_utils import flags_parser
  _define_flags()
  app.run(main, flags_parser=flags_parser)   # config mistakes: one line, no traceback (as train.py)
