"""Shared by the ablation configs: the `<arm>[,runlocal][,key=value]` argument and ablation budgets."""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from jaxmodels.config_utils import parse_arg
from jaxmodels.errors import ConfigError

# Long enough that `--minutes` (train.time_limit_minutes) ends a full run; the cosine schedule decays
# over these steps, as in configs/shapes_tiny.py.
TOTAL_STEPS = 2000


def split_arg(arg: str | None, arms: Sequence[str], where: str, **defaults: Any) -> tuple[str, Any]:
  """"decoupled,runlocal" -> ("decoupled", parsed rest). The first item names the arm (default: the
  first arm); the rest is parsed by `parse_arg` against `runlocal=False` and `defaults`."""
  items = [s.strip() for s in (arg or "").split(",") if s.strip()]
  arm = arms[0]
  if items and "=" not in items[0] and items[0] != "runlocal":
    arm = items.pop(0)
  if arm not in arms:
    raise ConfigError(f"{where}: unknown arm {arm!r}; arms: {', '.join(arms)}")
  return arm, parse_arg(",".join(items), runlocal=False, **defaults)


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Seconds per run (`--runlocal`): 3 steps, tiny evaluation sets, no in-loop evaluation."""
  c.data.config = "tiny"
  c.data.batch_size = 8
  c.data.worker_count = 0        # no worker process to start for 3 steps
  c.train.update(total_steps=3, log_every=1, eval_every=10**9, ckpt_every=10**9, time_limit_minutes=None)
  c.optim.warmup_steps = 1
  c.evals.update(qa_per_kind=2, geneval_prompts=4, sample_steps=2, batch_size=8, rover_tasks=2,
                 colorbench_per_task=1, colorbench_seeds=1, loop_samples=4)
  return c


def full(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A real ablation run: the budget is `--minutes` (time limit) or `--steps`; no in-loop evals."""
  c.train.update(total_steps=TOTAL_STEPS, eval_every=10**9, ckpt_every=500)
  return c


# geneval_progress counts of artefacts (shapes_progress.py): fewer is better.
PROGRESS_LOWER_IS_BETTER = ("geneval_progress/speckles_per_image", "geneval_progress/unfit_per_image")
