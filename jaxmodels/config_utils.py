"""Helpers for config files (big_vision style: `get_config(arg)` with a typed argument string)."""
from __future__ import annotations

import ast
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from jaxmodels.errors import ConfigError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "tiny" / "runlocal,steps=100" into a ConfigDict typed like `defaults`.

  A bare word sets a boolean default to True (`:tiny`, `:runlocal`); `key=value` is converted to the
  default's type. Unknown keys raise a ConfigError naming them.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"config argument {key!r} is unknown; known: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if not _:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.strip().lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(value)
    elif isinstance(default, str) or default is None:
      out[key] = value
    else:
      out[key] = ast.literal_eval(value)
  return out


def base_config() -> ml_collections.ConfigDict:
  """Trainer defaults shared by every config file (each file overrides what it needs)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(batch_size=32, worker_count=0))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-4, warmup_steps=100, min_lr_ratio=0.1, schedule="cosine", b1=0.9, b2=0.95,
      eps=1e-8, weight_decay=0.0, clip_norm=1.0, trainable=None, frozen=None))
  c.train = ml_collections.ConfigDict(dict(
      total_steps=1000, accum_steps=1, log_every=50, eval_every=500, ckpt_every=500,
      ema_decay=placeholder(float), ema_path="dit", time_limit_minutes=placeholder(float),
      nonfinite="stop", max_nonfinite=1))   # non-finite loss/grads: "skip" the update or "stop"
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.sharding_rules = None          # None = jaxmodels.sharding.DEFAULT_RULES
  c.checkpoint = ml_collections.ConfigDict(dict(keep=3, async_save=True))
  c.resume = placeholder(str)      # another run's workdir/checkpoints to continue from
  c.init = None                    # dict(hf={"llm": path, ...}) to start from pretrained towers
  c.evals = ml_collections.ConfigDict()
  return c
