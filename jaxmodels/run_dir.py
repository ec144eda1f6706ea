"""A training run's directory as the tools that read one see it (evaluate.py, serving): which folder
`--checkpoint` names, which step to use, and the config the run stored.

    from jaxmodels.run_dir import checkpoint_step, run_workdir, stored_config
    workdir = run_workdir("runs/shapes_tiny/checkpoints")        # -> "runs/shapes_tiny"
    config = stored_config(workdir, checkpoint_step(workdir))
"""
from __future__ import annotations

import json
import os


def run_workdir(path: str) -> str:
  """The training workdir that `--checkpoint=path` names: the workdir itself, or its checkpoints/
  folder. Only looks (a wrong path never creates a checkpoints/ folder as a side effect).

  Raises:
    CheckpointFormatError: no such directory, or one without checkpoints/.
  """
  from jaxmodels.errors import CheckpointFormatError
  if "://" in path:                      # remote storage (gs://...): Orbax checks it on restore
    return path
  if not os.path.isdir(path):
    raise CheckpointFormatError(f"{path}: no such run directory (--checkpoint names a training "
                                f"workdir or its checkpoints/ folder)")
  norm = os.path.normpath(path)
  if os.path.basename(norm) == "checkpoints" and not os.path.isdir(os.path.join(norm, "checkpoints")):
    norm = os.path.dirname(norm) or "."
  if not os.path.isdir(os.path.join(norm, "checkpoints")):
    raise CheckpointFormatError(f"{path}: no checkpoints/ folder (expected a training workdir)")
  return norm


def final_workdir(path: str) -> str:
  """The run directory holding a run's final weights: `run_workdir(path)`, or for a two-phase run
  (train.py with `config.rl.after_supervised`) whose `phases.json` records a finished GRPO phase, its
  `rl/` run (the post-trained policy). evaluate.py, sample.py and serve.py load from here; name
  `<workdir>/rl` or the supervised checkpoints folder `<workdir>/checkpoints` to choose."""
  import json
  workdir = run_workdir(path)
  if "://" in workdir or os.path.basename(os.path.normpath(path)) == "checkpoints":
    return workdir
  record = os.path.join(workdir, "phases.json")
  try:
    with open(record) as f:
      finished = "rl" in json.load(f)
  except (OSError, ValueError):
    return workdir
  rl = os.path.join(workdir, "rl")
  return rl if finished and os.path.isdir(os.path.join(rl, "checkpoints")) else workdir


def checkpoint_step(workdir: str, step: int | None = None) -> int:
  """`step` if the run has a complete checkpoint for it, else (step None) the latest one.

  Raises:
    CheckpointFormatError: no complete checkpoint, or none for `step` (listing the ones there are).
  """
  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.errors import CheckpointFormatError
  directory = os.path.join(workdir, "checkpoints")
  ckpt = Checkpointer(directory, async_save=False)   # directory exists (run_workdir): nothing made
  try:
    steps = ckpt.all_steps()
  finally:
    ckpt.close()
  if not steps:
    raise CheckpointFormatError(f"{directory}: no complete checkpoint to evaluate")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise CheckpointFormatError(f"{directory}: no checkpoint for --step={step} (complete ones: "
                                f"{', '.join(map(str, steps))})")
  return step


def stored_config(workdir: str, step: int):
  """The config of a run as a ConfigDict: the one saved with checkpoint `step` (train.py stores it
  there), else `<workdir>/config.json` (also written by train.py); keys declared since the run was
  written get their defaults (`config_schema.complete`).

  Raises:
    ConfigError: neither exists (the message names both places), or config.json is not JSON.
    CheckpointFormatError: the checkpoint's config item is unreadable.
  """
  import ml_collections

  from jaxmodels.checkpoint import Checkpointer
  from jaxmodels.errors import CheckpointFormatError, ConfigError
  directory = os.path.join(workdir, "checkpoints")
  item = os.path.join(directory, str(step), "config")
  raw = None
  if "://" in workdir or os.path.isdir(item):
    ckpt = Checkpointer(directory, async_save=False)
    try:
      raw = ckpt.restore_config(step)
    except Exception as e:  # pylint: disable=broad-except   (Orbax: many exception types)
      raise CheckpointFormatError(f"{item}: unreadable stored config ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]})") from None
    finally:
      ckpt.close()
  if raw is None:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
      raise ConfigError(f"{workdir}: no stored config (neither {item} nor {path}); pass "
                        f"--config=configs/<exp>.py")
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except (OSError, UnicodeDecodeError) as e:
      raise ConfigError(f"{path}: cannot read the stored config ({e})") from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
  if not isinstance(raw, dict):
    raise ConfigError(f"{workdir}: the stored config is a {type(raw).__name__}, not a JSON object")
  from jaxmodels.config_schema import complete
  return complete(ml_collections.ConfigDict(raw))
