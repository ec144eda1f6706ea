"""Training metrics: one stdout line per interval, a JSONL file and TensorBoard events.

    writer = MetricWriter(workdir, total_steps=1000, batch_size=64, tokens_per_example=128)
    writer.write(step, {"loss": 0.3, ...})   # prints step, losses, steps/s, examples/s, tokens/s, MFU, ETA

Throughput excludes the first interval (compilation). MFU = achieved FLOP/s per device / peak, from
the step's XLA cost analysis (`step_flops`) and the device kind's peak (unknown kinds, e.g. CPU: no MFU).
Only process 0 writes files. A resumed run first moves the rows of steps after its checkpoint (a
killed run logged them, then lost them) to `metrics.rolled_back.jsonl`, so `metrics.jsonl` reads as
one run and nothing written is lost.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from jaxmodels.errors import ConfigError, JaxModelsError

# Dense bf16 peak FLOP/s per chip.
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12, "tpu v5p": 459e12, "tpu v5 lite": 197e12,
              "tpu v5e": 197e12, "tpu v6 lite": 918e12, "tpu v6e": 918e12, "tpu v4": 275e12}


def peak_flops_per_device(device=None) -> float | None:
  kind = (device or jax.devices()[0]).device_kind.lower()
  for name, peak in PEAK_FLOPS.items():
    if name in kind:
      return peak
  return None


def step_flops(fn, *args, lowered=None) -> float | None:
  """FLOPs of one call `fn(*args)` of a jitted function, by XLA's cost analysis (`lowered`:
  `fn.lower(*args)` when already at hand).

  The analysis counts a while loop's body once, whatever its trip count, so a step whose layer
  stacks run as looped `lax.scan`s (accelerators, deep stacks: `layers.block.scan_unroll`) would be
  undercounted by about the depth. Such a step is traced once more with every stack unrolled (no
  compile) and that program is counted. jit caches a trace by its Python function, so the retrace
  goes through a new wrapper of `fn`'s function. Loops that are not layer stacks (gradient
  accumulation, samplers) still count once."""
  from jaxmodels.layers import block
  lowered = fn.lower(*args) if lowered is None else lowered
  if "stablehlo.while" in lowered.as_text():
    inner = getattr(fn, "__wrapped__", fn)
    with block.scan_unroll_limit(2**31 - 1):
      lowered = jax.jit(lambda *a: inner(*a)).lower(*args)
  return compiled_flops(lowered)


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (or lowered) function (XLA cost analysis), if the backend reports
  it; a looped scan's body counts once (`step_flops` unrolls layer stacks first)."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops")) if cost and cost.get("flops") else None
  except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
    return None


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricWriter:
  """Writes metrics to stdout, `<workdir>/metrics.jsonl` and TensorBoard (`<workdir>/tb`)."""

  def __init__(self, workdir: str, *, total_steps: int, batch_size: int, tokens_per_example: int = 0,
               flops_per_step: float | None = None, start_step: int = 0, tensorboard: bool = True,
               time_limit_minutes: float | None = None):
    """`time_limit_minutes`: the run stops that long after this writer is made, so the ETA is the
    sooner of the steps left at the measured rate and the time left."""
    self.is_main = jax.process_index() == 0
    self.deadline = None if not time_limit_minutes else time.time() + 60 * time_limit_minutes
    self.total_steps, self.batch_size, self.tokens = total_steps, batch_size, tokens_per_example
    self.flops_per_step = flops_per_step
    self.peak = peak_flops_per_device()
    self._last_time, self._last_step, self._first = time.time(), start_step, True
    self._tb = None
    self._jsonl = None
    if self.is_main:
      os.makedirs(workdir, exist_ok=True)
      self.rolled_back = roll_back_metrics(os.path.join(workdir, "metrics.jsonl"), start_step)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      if tensorboard:
        try:
          from tensorboardX import SummaryWriter
          self._tb = SummaryWriter(os.path.join(workdir, "tb"))
        except ImportError:
          self._tb = None

  def pause(self):
    """Call after evals/checkpoints so their time does not count as training time."""
    self._last_time = time.time()

  def write(self, step: int, metrics: Mapping[str, Any], *, prefix: str = "train") -> dict:
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    if prefix == "train":
      skipped = values.get("nonfinite", 0.0) > 0   # the step left the state unchanged (train.nonfinite)
      for key in ("loss",):
        if key in values and not math.isfinite(values[key]) and not skipped:
          raise FloatingPointError(f"step {step}: {key} is {values[key]}; stopping (NaN/Inf guard)")
      now = time.time()
      steps = step - self._last_step
      if steps > 0 and not self._first:
        dt = (now - self._last_time) / steps
        values["steps_per_sec"] = 1.0 / dt
        values["examples_per_sec"] = self.batch_size / dt
        if self.tokens:
          values["tokens_per_sec"] = self.batch_size * self.tokens / dt
        if self.flops_per_step and self.peak:
          values["mfu"] = self.flops_per_step / dt / (self.peak * jax.device_count())
        values["eta_sec"] = dt * (self.total_steps - step)
        if self.deadline is not None:
          values["eta_sec"] = max(min(values["eta_sec"], self.deadline - now), 0.0)
      if steps > 0:
        self._first = False   # the first interval includes compilation: not reported
      self._last_time, self._last_step = now, step
    row = {"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}
    if self.is_main:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
      if self._tb is not None:
        for k, v in values.items():
          self._tb.add_scalar(f"{prefix}/{k}", v, step)
      print(self._line(step, values, prefix), flush=True)
    return row

  def _line(self, step: int, values: dict, prefix: str) -> str:
    parts = [f"[{prefix}] step {step}/{self.total_steps}"]
    for k, v in values.items():
      if k == "eta_sec":
        continue
      parts.append(f"{k}={v:.4g}")
    if "eta_sec" in values:
      parts.append(f"ETA {format_duration(values['eta_sec'])}")
    return " | ".join(parts)

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def roll_back_metrics(path: str, step: int) -> int:
  """Moves the rows of `path` (a metrics.jsonl) with a step after `step` to `<stem>.rolled_back.jsonl`
  (appended, each marked with `rolled_back_to`) and rewrites `path` atomically with the rest.
  Unparseable lines (a write cut by a kill) go the same way. Returns the number of rows moved."""
  if not os.path.exists(path):
    return 0
  keep, moved = [], []
  with open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        later = int(row.get("step", 0)) > step
      except (ValueError, TypeError, AttributeError):
        row, later = {"unparsed": line.rstrip("\n")}, True
      (moved if later else keep).append((line if line.endswith("\n") else line + "\n", row))
  if not moved:
    return 0
  with open(path[:-len(".jsonl")] + ".rolled_back.jsonl", "a") as f:
    for _, row in moved:
      f.write(json.dumps({**row, "rolled_back_to": step}) + "\n")
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(line for line, _ in keep)
  os.replace(tmp, path)
  logging.info("metrics: %d rows after step %d moved to %s", len(moved), step,
               os.path.basename(path[:-len(".jsonl")] + ".rolled_back.jsonl"))
  return len(moved)


class NonFiniteError(JaxModelsError):
  """Training stopped: too many steps in a row with a non-finite loss or gradients."""


class NonFiniteGuard:
  """Host side of `train.nonfinite`: the compiled step already left the state unchanged on a step
  whose loss or gradients were not finite (`metrics["nonfinite"] == 1`); this counts such steps and,
  in mode "stop", raises after `max_in_a_row` consecutive ones ("skip" only counts)."""

  def __init__(self, mode: str = "stop", max_in_a_row: int = 1):
    if mode not in ("skip", "stop"):
      raise ConfigError(f'config.train.nonfinite={mode!r}: expected "skip" or "stop"')
    if int(max_in_a_row) < 1:
      raise ConfigError(f"config.train.max_nonfinite={max_in_a_row}: expected >= 1")
    self.mode, self.max_in_a_row = mode, int(max_in_a_row)
    self.total, self.streak, self.first_bad = 0, 0, None

  def update(self, step: int, flag, *, last_checkpoint=None) -> bool:
    """`flag`: the step's `metrics["nonfinite"]`; `last_checkpoint`: a step or a callable returning it
    (only called when stopping). Returns True if the step was skipped."""
    if float(np.asarray(flag)) <= 0:
      self.streak, self.first_bad = 0, None
      return False
    self.total += 1
    self.streak += 1
    self.first_bad = step if self.first_bad is None else self.first_bad
    logging.warning("step %d: non-finite loss or gradients; update skipped (%d skipped so far)",
                    step, self.total)
    if self.mode == "stop" and self.streak >= self.max_in_a_row:
      last_checkpoint = last_checkpoint() if callable(last_checkpoint) else last_checkpoint
      kept = (f"the last finite checkpoint is step {last_checkpoint} (a rerun resumes there)"
              if last_checkpoint is not None else "no checkpoint was committed")
      raise NonFiniteError(
          f"non-finite loss or gradients at {self.streak} steps in a row (steps {self.first_bad}-{step}, "
          f"train.max_nonfinite={self.max_in_a_row}); stopping. Those updates were not applied and no "
          f"state from them was saved; {kept}. Lower train.lr, or set train.nonfinite=\"skip\"")
    return True
