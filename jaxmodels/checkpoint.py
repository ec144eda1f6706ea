"""Orbax checkpoints holding the train state, the Grain iterator state and the config (as JSON).

One step directory per save (`<workdir>/checkpoints/<step>/{state,data,config}`), a keep-N policy and
asynchronous saves (the next training steps overlap with the write). Restoring takes an *abstract*
target whose leaves carry shardings, so a checkpoint written on one mesh restores onto another.

    ckpt = Checkpointer(f"{workdir}/checkpoints", keep=3)
    ckpt.save(step, state, data_iter=it, config=config.to_dict())
    state = ckpt.restore(ckpt.latest_step(), sharding.abstract_state(state, shardings), data_iter=it)
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jaxmodels.errors import CheckpointFormatError


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items state / data / config."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        preservation_policy=checkpoint_managers.LatestN(keep),
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, *, data_iter=None, config: dict | None = None,
           force: bool = True) -> bool:
    import grain
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, *, data_iter=None) -> Any:
    """Restores the state into `abstract_state`'s shapes/shardings (and the iterator in place)."""
    import grain
    if step not in self.manager.all_steps():
      raise CheckpointFormatError(f"{self.directory}: no checkpoint for step {step} "
                                  f"(have {sorted(self.manager.all_steps())})")
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and self._has_item(step, "data"):
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointFormatError(f"{self.directory}/{step}: cannot restore the state ({e})") from None
    return restored["state"]

  def restore_config(self, step: int) -> dict | None:
    if not self._has_item(step, "config"):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def _has_item(self, step: int, name: str) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), name))

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
