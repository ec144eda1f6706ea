"""How a tower runs, as opposed to what it computes: the execution settings tower configs share.

Every tower config (LLMConfig, VisionConfig, LuminaConfig, SanaConfig, DCAEConfig, UNetConfig, ...)
carries the subset of these fields it implements, flat, next to its architecture fields. They never
change the function a tower computes (up to floating-point rounding), so they are not part of a
checkpoint's config.json (`checkpoint_fields`), and a unified model's `config.model.execution` block
sets them for every tower at once (`apply_execution`):

    python train.py --config=configs/blip3o_8b.py --config.model.execution.remat=full \
        --config.model.execution.dtype=bfloat16
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxmodels.errors import ConfigError

# name -> (allowed values or None for any, meaning)
EXECUTION_FIELDS: dict[str, tuple[tuple | None, str]] = {
    "scan_layers": ((True, False), "the repeated blocks as one lax.scan over stacked [num_layers, ...] "
                    "parameters (one compiled block: faster compiles, same function)"),
    "remat": (("none", "full", "dots"), "per-block rematerialisation (layers.block.REMAT_POLICIES): "
              "'full' saves nothing, 'dots' saves the matmul outputs"),
    "attention_impl": (("einsum", "xla", "cudnn"), "the attention kernel (layers.dot_product_attention): "
                       "'einsum' portable, 'xla' / 'cudnn' jax.nn.dot_product_attention"),
    "dtype": (("float32", "bfloat16", "float16"), "the compute (activation) dtype"),
    "param_dtype": (("float32", "bfloat16", "float16"), "the dtype parameters are stored in"),
}


def checkpoint_fields(config_cls) -> tuple[str, ...]:
  """The fields of a tower config dataclass that describe the function (what config.json holds):
  all but the execution settings."""
  return tuple(f.name for f in dataclasses.fields(config_cls) if f.name not in EXECUTION_FIELDS)


def check_execution(settings: Mapping[str, Any] | None, where: str = "config.model.execution") -> dict:
  """The settings that are set (not None) as a dict, checked: known names, allowed values (a one-line
  ConfigError otherwise)."""
  out = {k: v for k, v in dict(settings or {}).items() if v is not None}   # None: the towers' own
  for name, value in out.items():
    if name not in EXECUTION_FIELDS:
      raise ConfigError(f"{where}.{name}: not an execution setting (known: {', '.join(EXECUTION_FIELDS)})")
    allowed = EXECUTION_FIELDS[name][0]
    if allowed is not None and value not in allowed:
      raise ConfigError(f"{where}.{name}={value!r}: expected one of {', '.join(map(repr, allowed))}")
  return out


def apply_execution(config, settings: Mapping[str, Any]):
  """`config` (a tower config dataclass) with each execution setting it has taken from `settings`."""
  names = {f.name for f in dataclasses.fields(config)}
  update = {k: v for k, v in settings.items() if k in names}
  return dataclasses.replace(config, **update) if update else config
