"""From a config to the pieces of a run: the TrainState constructor and the mesh (shared by train.py
and evaluate.py, so both build exactly the same state tree)."""
from __future__ import annotations

from typing import Callable

import jax
import optax
from flax import nnx

from jaxmodels import sharding
from jaxmodels.config_schema import data_section
from jaxmodels.errors import ConfigError
from jaxmodels.trainer.optim import make_optimizer, trainable_filter
from jaxmodels.trainer.train_state import TrainState
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified.build import unified_config
from jaxmodels.unified.model_io import model_type


def no_remat_on_multiprocess_cpu(config):
  """Returns (config, paths): on JAX's CPU backend with several processes, a copy of `config` with
  every `remat` under `config.model` set to "none" (and the dotted paths it changed); else `config`
  unchanged. Remat never changes the math, only the backward's schedule: with it, XLA:CPU started two
  collectives of one step at once on a gloo communicator and the processes aborted ("Received data
  size doesn't match expected size" in tests/test_multihost.py with remat "dots", never with
  "none"): XLA:CPU orders a program's collectives only by their start (BENCHMARKS.md, embedded
  default)."""
  import copy

  if jax.process_count() == 1 or jax.default_backend() != "cpu" or "model" not in config:
    return config, []
  config, changed = copy.deepcopy(config), []

  def walk(node, prefix):
    for key in list(node.keys()):
      value = node[key]
      if key == "remat" and value not in (None, "none"):
        node[key] = "none"
        changed.append(f"{prefix}.{key}")
      elif hasattr(value, "keys"):
        walk(value, f"{prefix}.{key}")

  walk(config.model, "model")
  return config, changed


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(step key, evaluation key) of a run with `config.seed`. train.py folds the step into the first
  for each step's randomness, and evaluates with the second (folded with the step for the periodic
  evaluations, as is for the final one); evaluate.py scores a checkpoint with that same final key, so
  its generation-based scores (GenEval, ROVER) reproduce the run's final ones."""
  step_key, eval_key = jax.random.split(jax.random.key(seed))
  return step_key, eval_key


def check_run_settings(config) -> None:
  """Checks the loop and checkpoint settings before anything is built or written: every
  `config.train.*_every`, `total_steps` and `accum_steps` an integer >= 1, `checkpoint.keep` >= 1
  (keep=0 would delete each checkpoint as it is written), `time_limit_minutes` None or > 0.

  Raises:
    ConfigError: naming the first bad key and its value.
  """
  def positive_int(path, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f"config.{path}={value!r}: expected an integer >= 1")

  train = config.train
  for key in sorted(train.keys()):
    if key.endswith("_every") or key in ("total_steps", "accum_steps"):
      positive_int(f"train.{key}", train[key])
  positive_int("checkpoint.keep", config.checkpoint.keep)
  limit = train.time_limit_minutes
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
    raise ConfigError(f"config.train.time_limit_minutes={limit!r}: expected None or a number > 0")


def gen_every_of(config) -> int:
  """`config.train.gen_every`, checked: steps k, 2k, ... train on the whole batch, the
  others on its understanding inputs only (`trains_generation`, `understanding_inputs`)."""
  k = config.train.gen_every
  if not isinstance(k, int) or isinstance(k, bool) or k < 1:
    raise ConfigError(f"config.train.gen_every={k!r}: expected an integer >= 1")
  return k


def trains_generation(step: int, gen_every: int) -> bool:
  """Whether step `step` (counted from 1) trains on the whole batch: every `gen_every`-th step."""
  return step % gen_every == 0


def understanding_inputs(batch: dict, gen_every: int) -> dict:
  """The batch without its generation inputs (`gen_*`), for the understanding-only steps of
  `train.gen_every` > 1 (a clear error when there is nothing to split)."""
  und = {k: v for k, v in batch.items() if not k.startswith("gen_")}
  if len(und) in (0, len(batch)):
    raise ConfigError(f"config.train.gen_every={gen_every}: expected 1, or k > 1 for batches with both "
                      f"understanding and generation inputs (this batch has {sorted(batch)})")
  return und


def mesh_and_rules(config):
  """The mesh and the logical-axis rules of a run.

  `config.mesh`: {axis: size} with any axis names (one -1 fills the devices; the order is
  `sharding.mesh_axis_order`, as a ConfigDict keeps its keys sorted), e.g. an added `sequence` or
  `dcn_data` axis. `config.sharding_rules`: None (`sharding.default_rules` of the mesh), one table
  [(logical, mesh axes), ...], or per-tower tables {"dit": [...], "default": [...]}; a rule naming a
  mesh axis the mesh lacks is a ConfigError naming the rule. With per-tower tables the EMA copy
  (`config.train.ema_path`, e.g. "dit") follows its tower's table, as its optimizer moments do.
  """
  try:
    mesh = sharding.make_mesh(config.mesh.to_dict())
  except ValueError as e:
    raise ConfigError(f"config.mesh={config.mesh.to_dict()} does not fit the {jax.device_count()} "
                      f"devices: {e}") from None
  rules = sharding.rules_from_config(config.sharding_rules, mesh.axis_names)
  if isinstance(rules, dict) and "ema" not in rules:
    ema_path = config.train.ema_path or ""
    tower = next((part for part in ema_path.split("/") if part in rules), None)
    if tower is not None:
      rules["ema"] = rules[tower]
  return mesh, rules


def unified_config_of(config, purpose: str, needs: str):
  """The run's UnifiedConfig, for a tool (`purpose`, e.g. "--rover_data") that needs a unified model
  (`needs`: what it must do, for the message); a ConfigError names config.model.type otherwise."""
  if model_type(config.model) != "unified":
    raise ConfigError(f"config.model.type={model_type(config.model)!r}: {purpose} needs a unified model "
                      f"that {needs}")
  from jaxmodels.unified.build import unified_config
  return unified_config(config.model)


def model_factory(config, *, resolve_inputs: bool = True) -> Callable[[], nnx.Module]:
  """A constructor of the model `config.model` describes (checked here, once): a `TextLM` for
  type "lm", else a `UnifiedModel` (type "florence_vl" written in Florence-VL's terms).
  `resolve_inputs=False` skips what only running the model needs (Florence-VL's prompt tokenisation),
  for tools that count or plan abstractly."""
  kind = model_type(config.model)
  if kind == "lm":
    from jaxmodels.text_lm import TextLM, text_lm_config
    lcfg = text_lm_config(config.model)
    return lambda: TextLM(lcfg, rngs=nnx.Rngs(config.seed))
  if kind == "florence_vl":
    from jaxmodels.unified.florence_vl import florence_vl_config
    ucfg = florence_vl_config(config.model, require_prompt_ids=resolve_inputs)
  else:
    ucfg = unified_config(config.model)
  return lambda: UnifiedModel(ucfg, rngs=nnx.Rngs(config.seed))


def shapes_eval_supported(config, model) -> bool:
  """Whether the ShapesWorld evaluations (Q/A, GenEval) apply to this run: they need a UnifiedModel
  trained on ShapesWorld's own tokenizer. Logs a note when they are skipped."""
  from absl import logging
  data = data_section(config.data).name
  if not isinstance(model, UnifiedModel) or data != "shapes_world":
    logging.info("ShapesWorld evaluations skipped: they need a UnifiedModel trained on shapes_world "
                 "(config.model.type=%s, config.data.name=%s)", model_type(config.model), data)
    return False
  return True


def train_state_factory(config) -> tuple[Callable[[], TrainState], optax.Schedule]:
  """(make_state, lr schedule): `make_state()` builds model + optimizer (+ EMA) from `config`;
  the model is `model_factory`'s."""
  make_model = model_factory(config)
  tx, lr = make_optimizer(config.optim.to_dict(), config.train.total_steps)
  wrt = trainable_filter(config.optim.trainable, config.optim.frozen)

  def make_state() -> TrainState:
    return TrainState(make_model(), tx, wrt=wrt, ema_decay=config.train.ema_decay,
                      ema_path=config.train.ema_path)

  return make_state, lr


def initialize(config, ts: TrainState, mesh, rules) -> None:
  """Applies `config.init` to a freshly built state (only when there is nothing to resume).

  config.init = {"hf": {"llm": path, "und_encoder": path, ...}}: Hugging Face towers (jaxmodels.hf)
  loaded into those parts of the model; {"checkpoint": run_dir}: another run's model parameters from
  its latest checkpoint — not its optimizer state, data position or step (e.g. stage 2 of BLIP3-o's
  sequential training starts from stage 1's weights with a new optimizer over the unfrozen part).
  The EMA, if any, starts from the loaded weights.
  """
  import jax
  import jax.numpy as jnp

  from jaxmodels.trainer.train_state import get_submodule
  from jaxmodels.config_utils import init_sources
  init = init_sources(config)
  unknown = sorted(set(init) - {"hf", "checkpoint"})
  if unknown:
    raise ConfigError(f"config.init.{unknown[0]}: unknown key (known: checkpoint, hf)")
  for part, path in (init.get("hf") or {}).items():
    from jaxmodels import hf
    tower = getattr(ts.model, part, None)
    if not isinstance(tower, nnx.Module):
      raise ConfigError(f"config.init.hf.{part}: the model has no part {part!r}")
    loaded = hf.from_pretrained(path, dtype=jax.tree.leaves(nnx.state(tower, nnx.Param))[0].dtype,
                                module=type(tower))    # e.g. the vision tower of a full Qwen2.5-VL
    # The tower's own table of per-tower rules (its paths here start below the tower's name).
    table = sharding.rules_for_path([part], rules)
    nnx.update(tower, jax.device_put(nnx.state(loaded), sharding.state_shardings(nnx.state(tower), mesh, table)))
  if init.get("checkpoint"):
    from jaxmodels.checkpoint import restore_params
    state = nnx.state(ts.model)
    target = {"model": sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))}
    nnx.update(ts.model, restore_params(init["checkpoint"], target)["model"])
  if ts.ema is not None and init:
    start = nnx.state(get_submodule(ts.model, ts.ema_path))
    nnx.update(ts.ema, jax.tree.map(jnp.copy, start))


def is_grpo_run(config) -> bool:
  """Whether `config` is a GRPO post-training run (`config.rl`), whose state is a policy + reference
  (`trainer.grpo`), and not a two-phase run (`config.rl.after_supervised`) whose own state is the
  supervised model's."""
  return bool(config.get("rl")) and not config.rl.get("after_supervised")


def restore_eval_model(config, workdir: str, step: int | None = None):
  """(model, step): the model of a run's checkpoint (`workdir`/checkpoints, latest step or `step`) for
  inference: the state tree train.py saved is built abstractly (nothing allocated twice), only the
  model and EMA weights are read (never the optimizer moments), placed on this run's mesh, and the
  EMA weights are swapped in where the run kept an EMA (`TrainState.eval_model`); of a GRPO run
  (`config.rl`), the trained policy. Shared by evaluate.py and serve.py."""
  import os

  from jaxmodels.checkpoint import Checkpointer, restore_params
  from jaxmodels.errors import CheckpointFormatError
  mesh, rules = mesh_and_rules(config)
  grpo = is_grpo_run(config)
  if grpo:
    from jaxmodels.trainer.grpo import grpo_state_factory
    make_state, _ = grpo_state_factory(config)
  else:
    make_state, _ = train_state_factory(config)
  abstract = nnx.eval_shape(make_state)
  graphdef, state = nnx.split(abstract)
  target = sharding.abstract_state(state, sharding.state_shardings(state, mesh, rules))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  step = ckpt.latest_step() if step is None else step
  ckpt.close()
  if step is None:
    raise CheckpointFormatError(f"{ckpt.directory}: no checkpoint to restore")
  params = restore_params(workdir, {k: v for k, v in dict(target).items() if k in ("model", "ema")}, step)
  ts = nnx.merge(graphdef, state)
  nnx.update(ts.model, params["model"])
  if ts.ema is not None:
    nnx.update(ts.ema, params["ema"])
  return (ts.eval_model().policy if grpo else ts.eval_model()), step
