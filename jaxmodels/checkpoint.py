"""Orbax checkpoints holding the train state, the Grain iterator state and the config (as JSON).

One step directory per save (`<workdir>/checkpoints/<step>/{state,data,config}`), a keep-N policy and
asynchronous saves (the next training steps overlap with the write). Restoring takes an *abstract*
target whose leaves carry shardings, so a checkpoint written on one mesh restores onto another.

    ckpt = Checkpointer(f"{workdir}/checkpoints", keep=3)
    ckpt.save(step, state, data_iter=it, config=config.to_dict())
    state = ckpt.restore(ckpt.latest_step(), sharding.abstract_state(state, shardings), data_iter=it)

Evaluation needs only the weights: `restore_params(workdir, abstract)` reads the model (and EMA)
subtrees of the saved state and never touches the optimizer moments (an Orbax partial restore).
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from absl import logging

from jaxmodels.errors import CheckpointFormatError, JaxModelsError


class CheckpointMismatchError(CheckpointFormatError):
  """A readable checkpoint whose tree (keys, shapes) differs from the model: the config's fault, not
  the checkpoint's, so it is never quarantined."""


class CheckpointWriteError(JaxModelsError):
  """A checkpoint could not be written (disk full, quota, permissions); the committed ones are intact."""


_replica_parallel: bool | None = None      # what this module last registered


def set_replica_parallel(enabled: bool):
  """Orbax's replica-parallel saving for this process (its array handler is process-global).

  On: a replicated array's write is split between its replicas, each replica first slicing its part on
  device. Those slices are eager ops compiled per array shape, so the first save of a run pays for
  hundreds of tiny compiles: the runlocal ShapesWorld state (306 arrays) on an 8-device CPU mesh took
  13.4 s to save the first time and 1.3-1.5 s after that, against 0.9 s / 0.6-0.8 s with it off.
  Orbax turns it off on GPU itself. It pays only where many hosts hold large replicated arrays (pure
  data parallelism on a pod), hence `config.checkpoint.replica_parallel`, default False."""
  global _replica_parallel
  if enabled == _replica_parallel:
    return
  _replica_parallel = enabled
  import jax
  try:  # the handler orbax registers by default carries an array-metadata store (no public path)
    from orbax.checkpoint._src.metadata import array_metadata_store
    extra = dict(array_metadata_store=array_metadata_store.Store())
  except ImportError:
    extra = {}
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=enabled, **extra), override=True)


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` with items state / data / config.

  `replica_parallel` sets Orbax's replica-parallel saving for the process (`set_replica_parallel`)."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               replica_parallel: bool = False, cleanup_tmp: bool = False):
    """`cleanup_tmp`: delete the temporary directories of saves that never committed (a killed or
    disk-full save leaves one, holding space); only the run that owns the directory may ask, never a
    reader, which could race a live writer."""
    set_replica_parallel(replica_parallel)
    if int(keep) < 1:
      raise CheckpointFormatError(f"keep={keep}: at least one checkpoint must be kept")
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save,
        preservation_policy=checkpoint_managers.LatestN(int(keep)),
        cleanup_tmp_directories=cleanup_tmp,
        create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "config"))
    self._saving = None       # the step of the last save call (its write may still be in flight)

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return max(steps) if steps else None

  def all_steps(self) -> list[int]:
    """Committed steps. A step directory without `_CHECKPOINT_METADATA` is skipped: a process killed
    while the keep-N policy deleted an old checkpoint leaves such a half-deleted directory behind."""
    return sorted(s for s in self.manager.all_steps() if self._complete(s))

  def _complete(self, step: int) -> bool:
    from etils import epath
    return (epath.Path(self.directory) / str(step) / "_CHECKPOINT_METADATA").exists()

  @property
  def quarantine_directory(self) -> str:
    """Where unusable step directories are moved: `<directory>.quarantine/` (beside, not inside, so
    Orbax never lists them as steps)."""
    return self.directory.rstrip("/") + ".quarantine"

  def quarantine(self, step: int, reason: str) -> str | None:
    """Moves step directory `step` to `quarantine_directory` as `<step>.<reason>.<time>` (renamed, not
    deleted: the user may still want it), logs one line and returns the new path. Process 0 renames;
    every process then re-reads the step list."""
    import time as time_lib

    import jax
    from etils import epath
    src = epath.Path(self.directory) / str(step)
    dst = epath.Path(self.quarantine_directory) / f"{step}.{reason}.{time_lib.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0 and src.exists():
      dst.parent.mkdir(parents=True, exist_ok=True)
      src.rename(dst)
      logging.warning("checkpoint step %d is %s: moved %s to %s", step, reason, src, dst)
    _sync(f"jaxmodels_quarantine_{step}")
    self.manager.reload()
    return str(dst)

  def quarantine_incomplete(self) -> list[int]:
    """Quarantines step directories that never committed or were half deleted (no
    `_CHECKPOINT_METADATA`): left in place, a later save of the same step would fail with Orbax's
    StepAlreadyExistsError on every rerun. Only the run that writes the directory calls this."""
    bad = sorted(s for s in self.manager.all_steps() if not self._complete(s))
    for step in bad:
      self.quarantine(step, "incomplete")
    return bad

  def restore_latest(self, abstract_state: Any, *, data_iter=None) -> tuple[int | None, Any]:
    """(step, state) from the newest step that restores; (None, None) without any step.

    A step that cannot be read (a truncated or bit-flipped data file, unreadable metadata) is skipped
    for the next older one; once an older step restores, the newer unreadable ones are quarantined
    (that they alone fail is the evidence that they, not the setup, are broken). When no step
    restores nothing is moved and the newest step's error is raised. A tree that does not match the
    model raises CheckpointMismatchError at once: that is the config's fault.

    Raises:
      CheckpointMismatchError: the model and the checkpoint differ (naming the first key).
      CheckpointFormatError: there are steps and none of them restores.
    """
    failed = []
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(step, abstract_state, data_iter=data_iter)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # noqa: BLE001 - tensorstore, zarr and OCDBT each raise their own types
        if isinstance(e, (MemoryError, KeyboardInterrupt)):
          raise
        logging.warning("checkpoint step %d cannot be restored (%s: %s)", step, type(e).__name__,
                        _first_line(e))
        failed.append((step, e))
        continue
      for bad, _ in failed:
        self.quarantine(bad, "unreadable")
      return step, state
    if failed:
      step, e = failed[0]
      raise CheckpointFormatError(f"{self.directory}: no step restores (steps {[s for s, _ in failed]}); "
                                  f"step {step}: {type(e).__name__}: {_first_line(e)}") from e
    return None, None

  def save(self, step: int, state: Any, *, data_iter=None, config: dict | None = None,
           force: bool = True) -> bool:
    import grain
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # noqa: BLE001 - a synchronous write (or the previous async one) failed
      pending = self._saving
      failed = pending if pending is not None and pending not in self.all_steps() else step
      raise self.write_error(failed, e) from e
    self._saving = step
    return saved

  def restore(self, step: int, abstract_state: Any, *, data_iter=None) -> Any:
    """Restores the state into `abstract_state`'s shapes/shardings (and the iterator in place)."""
    import grain
    if step not in self.all_steps():
      raise CheckpointFormatError(f"{self.directory}: no checkpoint for step {step} "
                                  f"(complete ones: {self.all_steps()})")
    self.check_tree(step, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None and self._has_item(step, "data"):
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointFormatError(f"{self.directory}/{step}: cannot restore the state "
                                  f"({_first_line(e)})") from e
    return restored["state"]

  def restore_partial(self, step: int, abstract_state: Any) -> Any:
    """Restores only the subtrees present in `abstract_state` (e.g. {"model": ..., "ema": ...}): an
    Orbax partial restore, so the other saved arrays (optimizer moments) are never read."""
    if step not in self.all_steps():
      raise CheckpointFormatError(f"{self.directory}: no checkpoint for step {step} "
                                  f"(complete ones: {self.all_steps()})")
    self.check_tree(step, abstract_state, partial=True)
    args = ocp.args.PyTreeRestore(abstract_state, partial_restore=True,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))
    try:
      with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(os.path.join(self.directory, str(step), "state"), args=args)
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise CheckpointFormatError(f"{self.directory}/{step}: cannot restore the parameters ({e})") from None

  def check_tree(self, step: int, abstract_state: Any, *, partial: bool = False) -> None:
    """Compares the saved tree (keys and shapes, from the metadata) with the target before restoring;
    raises CheckpointFormatError naming the first differing key. `partial`: saved keys outside the
    target's top-level subtrees are ignored."""
    from etils import epath
    path = epath.Path(self.directory) / str(step) / "state"
    try:
      meta = ocp.StandardCheckpointHandler().metadata(path)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
      raise CheckpointFormatError(f"{path}: unreadable checkpoint metadata ({e})") from None
    saved = _shapes(getattr(meta, "item_metadata", meta))
    wanted = _shapes(abstract_state)
    if partial:
      tops = {k.split("/")[0] for k in wanted}
      saved = {k: v for k, v in saved.items() if k.split("/")[0] in tops}
    where = f"{self.directory}/{step}"
    for key in sorted(set(saved) | set(wanted)):
      if key not in saved:
        raise CheckpointMismatchError(f"{where} does not match the model: {key} {wanted[key]} is in the "
                                    f"model but not in the checkpoint")
      if key not in wanted:
        raise CheckpointMismatchError(f"{where} does not match the model: {key} {saved[key]} is in the "
                                    f"checkpoint but not in the model")
      if None not in (saved[key], wanted[key]) and saved[key] != wanted[key]:
        raise CheckpointMismatchError(f"{where} does not match the model: {key} has shape {saved[key]} "
                                    f"in the checkpoint but {wanted[key]} in the model")

  def restore_config(self, step: int) -> dict | None:
    if not self._has_item(step, "config"):
      return None
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def _has_item(self, step: int, name: str) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(step), name))

  def write_error(self, step: int | None, e: BaseException) -> CheckpointWriteError:
    """The one-line error for a save of `step` that failed with `e` (disk full named as such)."""
    import errno
    chain, reason = e, None
    while chain is not None and reason is None:
      if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "no space left on device"
      elif "No space left" in str(chain) or "ENOSPC" in str(chain):
        reason = "no space left on device"
      chain = chain.__cause__ or chain.__context__
    reason = reason or f"{type(e).__name__}: {_first_line(e)}"
    steps = self.all_steps()
    kept = f"latest: step {steps[-1]}" if steps else "none committed yet"
    return CheckpointWriteError(f"checkpoint step {step} could not be written to {self.directory} "
                                f"({reason}); the committed checkpoints are intact ({kept})")

  def wait(self, *, raise_errors: bool = True):
    """Waits for an asynchronous save to commit. A failed write raises CheckpointWriteError (or, with
    `raise_errors=False`, while another error is already on its way out, is logged as one line)."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - whatever the background write raised
      err = self.write_error(self._saving, e)
      if raise_errors:
        raise err from e
      logging.error("%s", err)
    self._saving = None

  def close(self, *, raise_errors: bool = True):
    self.wait(raise_errors=raise_errors)
    try:
      self.manager.close()
    except Exception as e:  # noqa: BLE001
      if raise_errors:
        raise self.write_error(None, e) from e


def restore_params(workdir: str, abstract_state: Any, step: int | None = None) -> Any:
  """Eval-only restore: the model (and EMA) weights of a training checkpoint, no optimizer state.

  Args:
    workdir: a run directory (its `checkpoints/` is used) or a checkpoints directory.
    abstract_state: the train state's abstract target (ShapeDtypeStructs with shardings, e.g.
      `sharding.abstract_state(state, shardings)`) or just its {"model": ..., "ema": ...} part; an
      "optimizer" entry is dropped, so its moments are never read (nor need to fit in memory).
    step: the step to read (default: the latest complete one).

  Returns:
    {"model": restored state, "ema": restored state (when the target has one)} with the target's
    shardings: any mesh or device count, whatever the mesh at save time.

  Raises:
    CheckpointFormatError: no checkpoint, or a tree that does not match (naming the first key).

  Example:
    >>> abstract = sharding.abstract_state(nnx.state(nnx.eval_shape(make_state)), shardings)
    >>> params = restore_params("runs/shapes_tiny", abstract)
    >>> nnx.update(model, params["model"])
  """
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    directory = workdir
  if "://" not in directory and not os.path.isdir(directory):
    raise CheckpointFormatError(f"{workdir}: no such run or checkpoints directory")
  ckpt = Checkpointer(directory, async_save=False)
  try:
    if step is None:
      step = ckpt.latest_step()
      if step is None:
        raise CheckpointFormatError(f"{ckpt.directory}: no complete checkpoint to evaluate")
    target = {k: v for k, v in dict(abstract_state).items()
              if k != "optimizer" and v is not None and len(_leaves(v))}
    return ckpt.restore_partial(step, target)
  finally:
    ckpt.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:300]


def _sync(key: str) -> None:
  """A barrier across processes (no-op on one)."""
  import jax
  if jax.process_count() > 1:
    from orbax.checkpoint import multihost
    multihost.get_barrier_sync_fn()(key=key, timeout_ms=10 * 60 * 1000)


def _leaves(tree: Any) -> list:
  import jax
  return jax.tree.leaves(tree)


def _shapes(tree: Any) -> dict[str, tuple]:
  """{"model/llm/embed/embedding": shape} for every array leaf (an nnx Variable's `value` key dropped;
  PRNG keys map to None, as a key is saved as its raw data)."""
  import jax
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if keys and keys[-1] == "value":
      keys = keys[:-1]
    dtype = getattr(leaf, "dtype", None)
    is_key = dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    out["/".join(keys)] = None if is_key else tuple(getattr(leaf, "shape", ()) or ())   # keys: by path only
  return out
