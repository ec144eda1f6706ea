"""From a config to the pieces of a run: the TrainState constructor and the mesh (shared by train.py
and evaluate.py, so both build exactly the same state tree)."""
from __future__ import annotations

from typing import Callable

import optax
from flax import nnx

from jaxmodels import sharding
from jaxmodels.errors import ConfigError
from jaxmodels.trainer.optim import make_optimizer, trainable_filter
from jaxmodels.trainer.train_state import TrainState
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified.build import unified_config


def mesh_and_rules(config):
  """The mesh and the logical-axis rules: `config.sharding_rules` is None (defaults), one table
  [(logical, mesh axes), ...], or per-tower tables {"dit": [...], "default": [...]}."""
  try:
    mesh = sharding.make_mesh(config.mesh.to_dict())
  except ValueError as e:
    import jax
    raise ConfigError(f"config.mesh={config.mesh.to_dict()} does not fit the {jax.device_count()} "
                      f"devices: {e}") from None
  rules = config.sharding_rules
  if not rules:
    return mesh, None
  table = lambda t: tuple((name, tuple(a) if isinstance(a, list) else a) for name, a in t)  # noqa: E731
  if hasattr(rules, "items"):
    return mesh, {tower: table(t) for tower, t in rules.items()}
  return mesh, table(rules)


MODEL_TYPES = ("unified", "florence_vl")


def model_type(config) -> str:
  """`config.model.type`: "unified" (default; `UnifiedModel`) or "florence_vl" (`FlorenceVL`)."""
  kind = config.model.get("type", None) or "unified"
  if kind not in MODEL_TYPES:
    raise ConfigError(f"config.model.type={kind!r}: expected one of {MODEL_TYPES}")
  return kind


def model_factory(config) -> Callable[[], nnx.Module]:
  """A constructor of the model named by `config.model.type` (the config is checked here, once)."""
  if model_type(config) == "florence_vl":
    from jaxmodels.unified.florence_vl import FlorenceVL, florence_vl_config
    fcfg = florence_vl_config(config.model, require_prompt_ids=True)
    return lambda: FlorenceVL(fcfg, rngs=nnx.Rngs(config.seed))
  ucfg = unified_config(config.model)
  return lambda: UnifiedModel(ucfg, rngs=nnx.Rngs(config.seed))


def shapes_eval_supported(config, model) -> bool:
  """Whether the ShapesWorld evaluations (Q/A, GenEval) apply to this run: they need a UnifiedModel
  trained on ShapesWorld's own tokenizer. Logs a note when they are skipped."""
  from absl import logging
  data = config.data.get("name", "shapes_world") or "shapes_world"
  if not isinstance(model, UnifiedModel) or data != "shapes_world":
    logging.info("ShapesWorld evaluations skipped: they need a UnifiedModel trained on shapes_world "
                 "(config.model.type=%s, config.data.name=%s)", model_type(config), data)
    return False
  return True


def train_state_factory(config) -> tuple[Callable[[], TrainState], optax.Schedule]:
  """(make_state, lr schedule): `make_state()` builds model + optimizer (+ EMA) from `config`;
  the model is a `UnifiedModel` or, for `config.model.type="florence_vl"`, a `FlorenceVL`."""
  make_model = model_factory(config)
  tx, lr = make_optimizer(config.optim.to_dict(), config.train.total_steps)
  wrt = trainable_filter(config.optim.get("trainable"), config.optim.get("frozen"))

  def make_state() -> TrainState:
    return TrainState(make_model(), tx, wrt=wrt, ema_decay=config.train.ema_decay,
                      ema_path=config.train.ema_path)

  return make_state, lr
