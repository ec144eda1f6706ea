"""A checkpoint directory -> (model, tokenizer, config) for serving.

A training workdir (or a released copy of one) holds `checkpoints/<step>/{state,config}` and the run's
`tokenizer.json` (or, for a Hugging Face tokenizer, its copy in `tokenizer/`). The config is the one
train.py saved next to the weights (JSON), unless one is given (`--config`); the weights come through `trainer.setup.restore_eval_model`, the loader evaluate.py uses
(model + EMA only, EMA swapped in). A folder without checkpoints/ serves a config whose `init` names
released weights (Hugging Face towers, `trainer.setup.initialize`), as train.py would start from them.

    loaded = load_checkpoint("runs/shapes_tiny")
    loaded.model, loaded.tokenizer, loaded.config, loaded.step
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxmodels.errors import CheckpointFormatError, ConfigError


@dataclasses.dataclass
class Loaded:
  """What serving needs from a run: the eval model, its tokenizer, the run config and the step."""
  model: Any
  tokenizer: Any
  config: Any
  step: int
  name: str


def saved_config(workdir: str, step: int | None = None):
  """The config the run stored (`jaxmodels.run_dir.stored_config`: with checkpoint `step`, default the
  latest, else `<workdir>/config.json`) as a ConfigDict."""
  from jaxmodels.run_dir import checkpoint_step, final_workdir, stored_config
  workdir = final_workdir(workdir)
  return stored_config(workdir, checkpoint_step(workdir, step))


def run_tokenizer(workdir: str, config):
  """The run's tokenizer: `<workdir>/tokenizer.json` (the built-in WordTokenizer the data pipeline
  saves there), else the run's copy of its Hugging Face tokenizer in `<workdir>/tokenizer/` (files and
  chat template, written by train.py: `input_pipeline.tokenizers.save_with_run`), else the local
  Hugging Face tokenizer named by `config.data.tokenizer`. `config.data.chat_format`, when set,
  chooses a built-in chat format over the tokenizer's template."""
  from input_pipeline.tokenizers import RUN_TOKENIZER_DIR, load_tokenizer
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.isfile(path):
    return load_tokenizer(path)
  data = config.data if "data" in config else {}
  chat_format = data.get("chat_format") or None
  carried = os.path.join(workdir, RUN_TOKENIZER_DIR)
  if os.path.isfile(os.path.join(carried, "tokenizer.json")):
    return load_tokenizer(carried, chat_format=chat_format)
  named = data.get("tokenizer")
  if named:
    return load_tokenizer(named, chat_format=chat_format)
  raise CheckpointFormatError(f"{path}: missing, no {carried}/, and config.data.tokenizer names no "
                              "tokenizer")


def released_model(config, one_device: bool = False):
  """A model built from `config` with the released weights `config.init` names loaded into it
  (`trainer.setup.initialize`: {"hf": {part: path}} Hugging Face towers, or {"checkpoint": run}
  another run's model), parameters born in their sharded layout on the config's mesh (or, with
  `one_device`, on the first device alone)."""
  import types

  import jax

  from jaxmodels import sharding
  from jaxmodels.trainer.setup import initialize, mesh_and_rules, model_factory
  from jaxmodels.config_utils import init_sources
  init = init_sources(config)
  if not (init.get("hf") or init.get("checkpoint")):
    raise ConfigError("no checkpoints/ folder here, and config.init names no released weights "
                      "(config.init.hf towers or config.init.checkpoint)")
  mesh, rules = mesh_and_rules(config)
  if one_device:
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  model = sharding.create_sharded(model_factory(config), mesh, rules)
  initialize(config, types.SimpleNamespace(model=model, ema=None), mesh, rules)   # no optimizer state
  return model


def load_checkpoint(workdir: str, config=None, step: int | None = None, name: str | None = None,
                    one_device: bool = False) -> Loaded:
  """Restores a run for inference: `workdir` holds checkpoints/ (a training workdir, a copy of one,
  or its checkpoints/ folder itself); `config` a ConfigDict (default: the one saved with the
  weights). Without checkpoints/, `config` must name released weights in `config.init` and
  `workdir` holds (or config.data.tokenizer names) the tokenizer; step is then 0.
  `one_device`: the weights are then copied whole onto the first device (no sharding: for a model
  that fits one device on a host with several, e.g. virtual CPU devices), else they stay on the
  run's mesh."""
  from jaxmodels.trainer.setup import restore_eval_model
  from jaxmodels.unified import UnifiedModel
  if not os.path.isdir(workdir):
    raise CheckpointFormatError(f"{workdir}: no such directory")
  if os.path.basename(os.path.normpath(workdir)) == "checkpoints":   # the run's checkpoints/ itself
    workdir = os.path.dirname(os.path.normpath(workdir))
  if config is not None and not os.path.isdir(os.path.join(workdir, "checkpoints")):
    model, step = released_model(config, one_device), 0
  else:
    config = saved_config(workdir, step) if config is None else config
    model, step = restore_eval_model(config, workdir, step)
  if one_device:
    import jax
    from flax import nnx
    nnx.update(model, jax.device_put(nnx.state(model), jax.devices()[0]))
  if not isinstance(model, UnifiedModel):
    raise ConfigError(f"config.model.type={config.model.get('type')!r}: serving needs a unified model")
  name = name or os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  return Loaded(model, run_tokenizer(workdir, config), config, step, name)
