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


def train_state_factory(config) -> tuple[Callable[[], TrainState], optax.Schedule]:
  """(make_state, lr schedule): `make_state()` builds model + optimizer (+ EMA) from `config`."""
  ucfg = unified_config(config.model)
  tx, lr = make_optimizer(config.optim.to_dict(), config.train.total_steps)
  wrt = trainable_filter(config.optim.get("trainable"), config.optim.get("frozen"))

  def make_state() -> TrainState:
    model = UnifiedModel(ucfg, rngs=nnx.Rngs(config.seed))
    return TrainState(model, tx, wrt=wrt, ema_decay=config.train.ema_decay, ema_path=config.train.ema_path)

  return make_state, lr
