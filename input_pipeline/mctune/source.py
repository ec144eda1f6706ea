"""The MCTune training source: instruction data -> control-tagged, tokenized text-only SFT rows
(`config.data.name = "mctune"`), and the prepared split that evaluation shares.

    config.data = dict(name="mctune", path="alpaca_data.json", controls=True, max_tags=5,
                       augmentations=1, tagger="pattern", test_size=1000, max_length=512,
                       tokenizer=None, batch_size=32)
    data = make_mctune_data(config, workdir)       # TrainData(iterator, tokenizer, data_dir)
    batch = next(data.iterator)

Rows (fixed shapes, as the understanding path of `jaxmodels.unified.model` reads them, no image):
  und_ids [T] int32         <bos> prompt tokens, response tokens, <eos>, padding (T = data.max_length)
  und_mask [T] int32        1 on tokens (right-padded)
  und_loss_mask [T] int32   1 on the response tokens and its <eos>

`prepare(config.data, workdir)` reads the file (`data.read_instructions`), measures every output's
controls once (cached in `<workdir>/mctune_controls.json`, keyed by the file's path, size and mtime
and the tagger), drops empty / fkre > 121.22 outputs, holds out `test_size` examples with
`split_seed` and computes the training set's control statistics. `data.corpus="shapes"` (with
`corpus_size`) uses the generated demo corpus of `demo.py` instead of a file. Row i of the source is example
i // augmentations with its own random tag choice (a generator seeded with (config.seed, i)), so a
resumed run sees the same tags. `controls=False` trains the same prompts without tags and with the
plain meta instruction (the baseline: same split, filter and test cases). Plain SFT on GenQA / chat
rows: controls=False and mctune_filter=False (no controls measured, no fkre filter).
Tokenizer: `data.tokenizer` (a local HF tokenizer.json or folder), else the built-in WordTokenizer
over the data's words plus the numbers 0..999 and 00..99 (so every stated tag value is in the
vocabulary), saved to `<workdir>/tokenizer.json`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from input_pipeline.mctune import controls as C
from input_pipeline.mctune import data as D
from input_pipeline.sources import RecordSource
from jaxmodels.config_schema import DATA_SOURCES, data_section
from jaxmodels.errors import ConfigError

# config.data's MCTune options (declared with their defaults in jaxmodels/config_schema.py).
OPTION_KEYS = (*(k for k in DATA_SOURCES["mctune"] if k != "path"), "tokenizer", "worker_count", "data_dir")
NUMBER_WORDS = [str(i) for i in range(1000)] + [f"{i:02d}" for i in range(10)]


@dataclasses.dataclass
class Prepared:
  train: list[D.Example]
  test: list[D.Example]
  stats: dict
  dropped: dict


def data_options(data) -> dict:
  """config.data's MCTune keys with their defaults (unknown keys are left to the rest of the config)."""
  given = data_section(data, also="mctune")
  out = {k: given[k] for k in OPTION_KEYS}
  if isinstance(out["corpus"], str) and out["corpus"].lower() in ("", "none"):
    out["corpus"] = None
  if out["corpus"] not in (None, "shapes"):
    raise ConfigError(f"config.data.corpus={out['corpus']!r}: expected None (read data.path) or 'shapes'")
  if not data.get("path") and out["corpus"] is None:
    raise ConfigError("config.data.path is not set (an instruction file: Alpaca JSON/JSONL, LLaVA / chat "
                      "/ GenQA rows), nor config.data.corpus='shapes' (the generated demo corpus)")
  out["path"] = data.get("path")
  if not isinstance(out["max_tags"], int) or not 1 <= out["max_tags"] <= len(C.TAGS):
    raise ConfigError(f"config.data.max_tags={out['max_tags']!r}: expected 1..{len(C.TAGS)}")
  if out["meta"] not in D.METAS:
    raise ConfigError(f"config.data.meta={out['meta']!r}: expected one of {sorted(D.METAS)}")
  if not isinstance(out["augmentations"], int) or out["augmentations"] < 1:
    raise ConfigError(f"config.data.augmentations={out['augmentations']!r}: expected an integer >= 1")
  return out


def _cache_key(path: str, tagger: str, quirks: str) -> dict:
  if path.startswith("corpus:"):
    return {"path": path, "tagger": tagger, "quirks": quirks}
  st = os.stat(path)
  return {"path": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime, "tagger": tagger,
          "quirks": quirks}


def measured_controls(examples: list[D.Example], path: str, tagger: str, quirks: str,
                      workdir: str | None) -> list[dict]:
  """The controls of every example's output, from `<workdir>/mctune_controls.json` when it was made
  for this file and tagger, else measured (and saved there by process 0)."""
  key = _cache_key(path, tagger, quirks)
  cache = os.path.join(workdir, "mctune_controls.json") if workdir else None
  if cache and os.path.exists(cache):
    with open(cache, encoding="utf-8") as f:
      saved = json.load(f)
    if saved.get("key") == key and len(saved.get("controls", ())) == len(examples):
      return saved["controls"]
  from absl import logging
  logging.info("mctune: measuring the controls of %d outputs with tagger %r", len(examples), tagger)
  tag = C.get_tagger(tagger)
  values = [C.measure(e.output, tag, quirks) if e.output else None for e in examples]
  import jax
  if cache and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(cache + ".tmp", "w", encoding="utf-8") as f:
      json.dump({"key": key, "controls": values}, f)
    os.replace(cache + ".tmp", cache)
  return values


def prepare(data, workdir: str | None) -> Prepared:
  """The measured, filtered, split data of `config.data` (see the module docstring)."""
  o = data_options(data)
  if o["corpus"] == "shapes":
    from input_pipeline.mctune.demo import shapes_descriptions
    key = f"corpus:shapes:{o['corpus_size']}:{o['split_seed']}"
    examples = [D.parse_record(r, f"{key} record {i}")
                for i, r in enumerate(shapes_descriptions(int(o["corpus_size"]), o["split_seed"]))]
  else:
    key = o["path"]
    examples = D.read_instructions(key)
  if not (o["controls"] or o["mctune_filter"]):     # plain SFT: nothing to measure
    kept = [e for e in examples if e.output]
    dropped = {"empty": len(examples) - len(kept), "fkre": 0}
  else:
    values = measured_controls(examples, key, o["tagger"], o["quirks"], workdir)
    examples = [dataclasses.replace(e, controls=v) for e, v in zip(examples, values)]
    kept, dropped = D.measure_examples(examples, o["tagger"], o["quirks"])
  if len(kept) <= o["test_size"]:
    raise ConfigError(f"config.data.test_size={o['test_size']}: {key} has only {len(kept)} usable "
                      f"examples (dropped: {dropped})")
  train, test = D.split(kept, o["test_size"], o["split_seed"])
  return Prepared(train, test, D.tag_stats(train) if train[0].controls is not None else {}, dropped)


class MCTuneSource(RecordSource):
  """Random access over prepared training examples: row i = example i // augmentations with a
  seeded tag choice -> {"prompt": str, "response": str, "tags": JSON str}."""

  def __init__(self, examples: list[D.Example], *, controls: bool = True, max_tags: int = 5,
               augmentations: int = 1, seed: int = 0, meta: str = "paper"):
    super().__init__("raise")
    self.examples, self.controls, self.max_tags, self.meta = examples, controls, max_tags, meta
    self.augmentations, self.seed = augmentations, seed

  def _num_records(self) -> int:
    return len(self.examples) * self.augmentations

  def _read(self, index: int) -> dict[str, Any]:
    ex = self.examples[index // self.augmentations]
    tags = {}
    if self.controls:
      tags = D.training_tags(ex, np.random.default_rng([self.seed, index]), max_tags=self.max_tags)
    return {"prompt": D.prompt(ex, tags, controls=self.controls, meta=self.meta), "response": ex.output,
            "tags": json.dumps(tags)}


class TextSFTPreprocess:
  """{"prompt", "response"} -> und_ids / und_mask / und_loss_mask [max_length] (see the module
  docstring); long rows are cut at max_length, and a row whose whole response is cut off is an
  error (the pipeline's on_error policy: raise, or skip and count). Picklable (Grain workers)."""

  def __init__(self, tokenizer, max_length: int):
    self.tok, self.max_length = tokenizer, int(max_length)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    self.pad_id = int(pad) if pad is not None else 0

  def encode(self, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(ids, loss mask) before padding: bos + prompt (no loss), response + eos (loss)."""
    head = self.tok.encode(prompt, add_bos=self.tok.bos_id is not None)
    tail = self.tok.encode(response) + ([self.tok.eos_id] if self.tok.eos_id is not None else [])
    return head + tail, [0] * len(head) + [1] * len(tail)

  def __call__(self, ex: dict[str, Any]) -> dict[str, np.ndarray]:
    ids, loss = self.encode(str(ex["prompt"]), str(ex["response"]))
    n = min(len(ids), self.max_length)
    if not any(loss[:n]):      # truncation (from the right, as Alpaca's) left nothing to learn
      raise ValueError(f"config.data.max_length={self.max_length}: the prompt has {loss.index(1)} tokens and "
                       f"leaves no room for its response")
    out_ids = np.full((self.max_length,), self.pad_id, np.int32)
    out_ids[:n] = ids[:n]
    out_loss = np.zeros((self.max_length,), np.int32)
    out_loss[:n] = loss[:n]
    return {"und_ids": out_ids, "und_mask": (np.arange(self.max_length) < n).astype(np.int32),
            "und_loss_mask": out_loss}


def text_tokenizer(data, prep: Prepared, workdir: str | None):
  """`data.tokenizer` (a local HF tokenizer), else the run's WordTokenizer (see the module doc)."""
  from input_pipeline.datasets import run_word_tokenizer
  from input_pipeline.tokenizers import WordTokenizer, load_tokenizer
  data = data_section(data, also="mctune")
  if data.tokenizer:
    if not os.path.exists(data.tokenizer):
      raise ConfigError(f"config.data.tokenizer={data.tokenizer!r}: no such file or folder")
    return load_tokenizer(data.tokenizer)

  def build():
    texts = [D.CONTROL_META, D.SHORT_CONTROL_META, D.PLAIN_META, D.prompt(D.Example("", "", "x"), {t: 1 for t in C.TAGS}),
             " ".join(NUMBER_WORDS)]
    for ex in prep.train + prep.test:
      texts += [ex.instruction, ex.input, ex.output]
    return WordTokenizer.from_texts(texts)
  return run_word_tokenizer(workdir, build)


def make_mctune_data(config, workdir: str | None):
  """config.data.name == "mctune" -> TrainData (checkpointable Grain iterator + tokenizer)."""
  import jax
  from input_pipeline import pipeline
  from input_pipeline.datasets import TrainData, default_data_dir
  o = data_options(config.data)
  if int(o["max_length"] or 0) < 8:
    raise ConfigError(f"config.data.max_length={o['max_length']!r}: expected >= 8 tokens")
  prep = prepare(config.data, workdir)
  tok = text_tokenizer(config.data, prep, workdir)
  source = MCTuneSource(prep.train, controls=bool(o["controls"]), max_tags=o["max_tags"],
                        augmentations=o["augmentations"], seed=config.seed, meta=o["meta"])
  ds = pipeline.make_dataset(source, seed=config.seed, batch_size=config.data.batch_size // jax.process_count(),
                             preprocess=TextSFTPreprocess(tok, o["max_length"]),
                             worker_count=o["worker_count"])
  return TrainData(iter(ds), tok, o["data_dir"] or default_data_dir())
