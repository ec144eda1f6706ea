"""Training data by name (`config.data.name`), as Grain iterators of per-process batches.

    data = make_train_data(config, workdir, num_image_tokens=16)
    batch = next(data.iterator)            # dict of numpy arrays [B_process, ...]

Only "shapes_world" is wired into the trainer so far; the real-world readers of `sources.py`
(TFDS, ArrayRecord, WebDataset, LLaVA JSON) plug in the same way once their preprocessors exist.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import jax

from jaxmodels.errors import ConfigError


@dataclasses.dataclass
class TrainData:
  iterator: Iterator[dict[str, Any]]   # checkpointable Grain iterator
  tokenizer: Any
  data_dir: str


def default_data_dir() -> str:
  return os.environ.get("JAXMODELS_DATA_DIR", os.path.expanduser("~/.cache/jaxmodels/tfds"))


def shapes_world_tokenizer(data_dir: str, config_name: str, workdir: str | None):
  """The run's tokenizer: reused from `<workdir>/tokenizer.json`, else built from the train split."""
  from input_pipeline import shapes_world as sw
  from input_pipeline.shapes_tasks import shapes_tokenizer
  from input_pipeline.tokenizers import WordTokenizer
  path = os.path.join(workdir, "tokenizer.json") if workdir else None
  if path and os.path.exists(path):
    return WordTokenizer.load(path)
  tok = shapes_tokenizer(list(sw.load_split(data_dir, "train", config_name)) +
                         list(sw.load_split(data_dir, "validation", config_name)))
  if path and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tok.save(path)
  return tok


def make_train_data(config, workdir: str | None, *, num_image_tokens: int) -> TrainData:
  from input_pipeline import pipeline
  data = config.data
  name = data.get("name", "shapes_world")
  if name != "shapes_world":
    raise ConfigError(f"config.data.name={name!r}: train.py reads 'shapes_world' so far")
  from input_pipeline import shapes_world as sw
  from input_pipeline.shapes_tasks import ShapesTaskSource
  data_dir = data.get("data_dir") or default_data_dir()
  cfg_name = data.get("config", "res32")
  tok = shapes_world_tokenizer(data_dir, cfg_name, workdir)
  model = config.model
  source = ShapesTaskSource(
      sw.load_split(data_dir, "train", cfg_name, decode=True), tok, num_image_tokens=num_image_tokens,
      und_len=data.get("und_len", 48), gen_len=data.get("gen_len", 16),
      und_image_size=model.und_encoder.image_size if model.get("und_encoder") else 32,
      gen_image_size=(model.gen_encoder.image_size if model.get("gen_encoder")
                      else model.get("gen_image_size", 32)),
      questions_per_scene=data.get("questions_per_scene", 4))
  ds = pipeline.make_dataset(source, seed=config.seed, batch_size=data.batch_size // jax.process_count(),
                             worker_count=data.get("worker_count", 0))
  return TrainData(iter(ds), tok, data_dir)
