"""Optimizer from config: AdamW with linear warmup + cosine decay, gradient clipping, and a
trainable-parameter filter (frozen parameters get no optimizer state and never change).

    config.optim = dict(lr=3e-4, warmup_steps=100, decay_steps=None, min_lr_ratio=0.1, b1=0.9, b2=0.95,
                        weight_decay=0.05, clip_norm=1.0, trainable=None, frozen=(r"llm/.*",))

`optim.clock="time"` makes the schedule a function of the run's budget rather than of its step count:
each update is told a *virtual step* by the trainer (`tx.update(..., virtual_step=v)`, the larger of
the steps done and `total_steps` × the elapsed fraction of `train.time_limit_minutes`), so a run cut
short by its time limit still warms up and decays to `min_lr_ratio` by its end, on any machine speed
(the time-budgeted schedule of "Cramming", Geiping & Goldstein 2022). See `virtual_step`.
"""
from __future__ import annotations

import re
import time
from typing import Any, Mapping, Sequence

import numpy as np
import optax
from flax import nnx

from jaxmodels.config_schema import section
from jaxmodels.errors import ConfigError


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                           decay_steps: int | None = None, min_lr_ratio: float = 0.0,
                           kind: str = "cosine") -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine (or constant) decay to `lr * min_lr_ratio`."""
  decay_steps = decay_steps or max(total_steps - warmup_steps, 1)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=min_lr_ratio)
  elif kind == "constant":
    decay = optax.constant_schedule(lr)
  else:
    raise ConfigError(f"config.optim.schedule: unknown schedule {kind!r} (cosine or constant)")
  if warmup_steps <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), decay], [warmup_steps])


def virtual_step(step: int, *, start: int, total: int, elapsed_minutes: float,
                 limit_minutes: float | None) -> float:
  """The schedule position of update `step` (1-based, so `step - 1` updates were done before it) under
  the time clock: the larger of `step - 1` and the elapsed fraction of the time limit mapped onto the
  steps this invocation has left (`start` .. `total`). A resumed run anneals over its own budget from
  where its checkpoint stopped; without a limit it is the step clock."""
  done = float(step - 1)
  if not limit_minutes:
    return done
  return max(done, start + (total - start) * min(elapsed_minutes / limit_minutes, 1.0))


class ScheduleClock:
  """The trainer's side of `optim.clock`: `args(step)` is what the compiled step takes after
  (state, batch, rng) — `(virtual_step,)` as f32 under the time clock, `()` under the step clock —
  measured from this object's creation (start it where the time limit starts)."""

  def __init__(self, kind: str, *, start: int, total: int, limit_minutes: float | None):
    if kind not in ("steps", "time"):
      raise ConfigError(f"config.optim.clock: unknown clock {kind!r} (steps or time)")
    self.kind, self.start, self.total, self.limit = kind, start, total, limit_minutes
    self.t0 = time.time()

  def args(self, step: int) -> tuple:
    if self.kind != "time":
      return ()
    return (np.float32(virtual_step(step, start=self.start, total=self.total,
                                    elapsed_minutes=(time.time() - self.t0) / 60, limit_minutes=self.limit)),)


def scale_by_clock(schedule: optax.Schedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies the updates by `schedule(virtual_step)`, the position the trainer passes to each
  update (`tx.update(g, s, p, virtual_step=v)`; stateless: the clock lives on the host)."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, virtual_step, **extra):
    del params, extra
    import jax
    lr = schedule(virtual_step)
    return jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates), state

  return optax.GradientTransformationExtraArgs(init, update)


def _no_decay_mask(params):
  """Weight decay only on matrices (ndim >= 2): norms, biases and scalars are not decayed."""
  import jax
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: Mapping[str, Any] | None, total_steps: int) -> tuple[optax.GradientTransformation,
                                                                               optax.Schedule]:
  """(optax transformation, learning-rate schedule) from `config.optim`; keys it lacks take the
  schema's defaults (config_schema.SECTIONS["optim"], docs/CONFIG.md), an unknown key is a ConfigError."""
  o = section("optim", optim)
  lr = learning_rate_schedule(float(o["lr"]), total_steps, int(o["warmup_steps"]), o["decay_steps"],
                              float(o["min_lr_ratio"]), o["schedule"])
  clock = o["clock"]
  if clock not in ("steps", "time"):
    raise ConfigError(f"config.optim.clock: unknown clock {clock!r} (steps or time)")
  # The time clock: the optimizer's own rule at learning rate 1, scaled by the schedule at the
  # trainer's virtual step (AdamW's decoupled weight decay is scaled by it too, as in optax.adamw).
  rate = lr if clock == "steps" else 1.0
  name = o["name"]
  if name == "adamw":
    tx = optax.adamw(rate, b1=float(o["b1"]), b2=float(o["b2"]), eps=float(o["eps"]),
                     weight_decay=float(o["weight_decay"]), mask=_no_decay_mask)
  elif name == "sgd":
    tx = optax.sgd(rate, momentum=o["momentum"])
  else:
    raise ConfigError(f"config.optim.name: unknown optimizer {name!r} (adamw or sgd)")
  if clock == "time":
    tx = optax.chain(tx, scale_by_clock(lr))
  clip = o["clip_norm"]
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx, lr


def path_string(path: Sequence[Any]) -> str:
  """('llm', 'layers', 'blocks', 0, 'attn') -> 'llm/layers/blocks/0/attn'."""
  return "/".join(str(p) for p in path)


def trainable_filter(trainable: Sequence[str] | None = None, frozen: Sequence[str] | None = None):
  """An NNX filter selecting the Params to train.

  `trainable`: regexes over parameter paths ('a/b/c'); None = every Param. `frozen`: regexes removed
  from that set (BLIP3-o's sequential stage freezes `llm/.*` and the encoders).
  """
  train_re = [re.compile(p) for p in trainable or ()]
  frozen_re = [re.compile(p) for p in frozen or ()]

  def select(path, value) -> bool:
    if not isinstance(value, nnx.Param):
      return False
    s = path_string(path)
    if train_re and not any(r.fullmatch(s) for r in train_re):
      return False
    return not any(r.fullmatch(s) for r in frozen_re)

  return select
