"""Checks shared by the UNet and autoencoder configs (frozen dataclasses filled from config.json)."""
from __future__ import annotations

import dataclasses

from jaxmodels.errors import ConfigError


def _tuple(value):
  return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def freeze_lists(config) -> None:
  """Replaces every list field (as json gives them) by nested tuples, so the config stays hashable."""
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if isinstance(value, list):
      object.__setattr__(config, f.name, _tuple(value))


def check_block_types(config, down_known: tuple[str, ...], up_known: tuple[str, ...]) -> None:
  """One known down and up block type per entry of `block_out_channels`, else a ConfigError."""
  n, name = len(config.block_out_channels), type(config).__name__
  for field, known in (("down_block_types", down_known), ("up_block_types", up_known)):
    types = getattr(config, field)
    if len(types) != n:
      raise ConfigError(f"{name}.{field} has {len(types)} entries for {n} block_out_channels")
    for t in types:
      if t not in known:
        raise ConfigError(f"{name}.{field}: block type {t!r} is not supported ({', '.join(known)})")
