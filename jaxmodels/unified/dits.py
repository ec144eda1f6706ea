"""The flow heads a unified model can carry, chosen by the type of `config.model.dit`:

  LuminaConfig  LuminaNextDiT  (BLIP3-o, Pisces, shapes_tiny's flow variants)
  SanaConfig    SanaTransformer (MetaQuery, BLIP3o-NEXT)
  LatteConfig   LatteFlow      (LaTtE-Flow's layerwise generation stack)

Each has `velocity(x [B, h, w, C], σ [B], cond [B, N, C] or [B, L, T, D], cond_mask)`; a new head
registers its config class here.

    dit = build_dit(config.dit, rngs=nnx.Rngs(0))
"""
from __future__ import annotations

from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.flow.lumina import LuminaConfig, LuminaNextDiT
from jaxmodels.flow.sana import SanaConfig, SanaTransformer
from jaxmodels.unified.latte_flow import LatteConfig, LatteFlow

DITS = {LuminaConfig: LuminaNextDiT, SanaConfig: SanaTransformer, LatteConfig: LatteFlow}


def build_dit(config, *, rngs: nnx.Rngs):
  """The flow head of `config` (None: the model has none)."""
  if config is None:
    return None
  cls = DITS.get(type(config))
  if cls is None:
    raise ConfigError(f"config.model.dit: a {type(config).__name__} is not a flow head; expected one of "
                      f"{sorted(k.__name__ for k in DITS)}")
  return cls(config, rngs=rngs)
