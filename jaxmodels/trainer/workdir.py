"""The run directory: writable check, the one-run-per-workdir lock and the stored config.

    check_writable(workdir)                  # a read-only or misspelt path: one ConfigError line
    with WorkdirLock(workdir):               # a second train.py on the same workdir refuses at once
      write_config(workdir, config)          # after the restore check: logs what changed since last time
      ...

The lock is `<workdir>/.lock`, held with an advisory `flock` for the life of the process, so the OS
releases it when the process dies however it dies (kill -9 included). The file also records who holds
it (pid, host, start time, command) for the refusal message and for stale-lock detection where
`flock` is not shared between hosts (some network file systems): a record left by a process on this
host that no longer runs is taken over with one logged line; a record from another host that was never
released is refused, naming the host, because its process cannot be checked from here. Remote
workdirs (`gs://...`) are not locked: object stores have no such primitive.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from typing import Any

from absl import logging

from jaxmodels.errors import ConfigError

LOCK_NAME = ".lock"


class WorkdirBusyError(ConfigError):
  """Another run holds the workdir."""


def check_writable(workdir: str) -> None:
  """Creates `workdir` and writes a probe file: a read-only or misspelt path fails here, in one line."""
  if "://" in workdir:          # gs:// and friends: Orbax and the writers report their own errors
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable ({e.strerror or e})") from None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:    # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """Holds `<workdir>/.lock` while a run writes to `workdir` (see the module docstring).

  Args:
    workdir: the run directory (created by `check_writable` first).
    enabled: False makes the lock a no-op (processes other than 0 of a multi-host run: one process
      takes it for the whole run).

  Raises (from `acquire`):
    WorkdirBusyError: another live run holds it; the message names its pid, host and start time.
  """

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_NAME)
    self.enabled = enabled and "://" not in workdir
    self._fd = None

  def _holder(self) -> dict[str, Any]:
    try:
      with open(self.path) as f:
        text = f.read().strip()
      return json.loads(text) if text else {}
    except (OSError, ValueError):
      return {}

  @staticmethod
  def _describe(holder: dict) -> str:
    if not holder:
      return "another process"
    return (f"pid {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}: "
            f"{holder.get('command', '?')})")

  def acquire(self) -> "WorkdirLock":
    if not self.enabled or self._fd is not None:
      return self
    import fcntl
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirBusyError(f"workdir {os.path.dirname(self.path)} is in use by {self._describe(self._holder())}; "
                             f"wait for that run to end or pass another --workdir") from None
    holder, host = self._holder(), socket.gethostname()
    if holder and not holder.get("released"):
      if holder.get("host") != host:
        os.close(fd)
        raise WorkdirBusyError(
            f"workdir {os.path.dirname(self.path)} is held by {self._describe(holder)}, which cannot be "
            f"checked from {host}; if that run is gone, delete {self.path}")
      if holder.get("pid") != os.getpid():
        state = "no longer runs" if not _alive(int(holder.get("pid", 0) or 0)) else "does not hold the lock"
        logging.warning("taking over the stale lock %s of pid %s, which %s", self.path, holder.get("pid"), state)
    record = {"pid": os.getpid(), "host": host,
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    """Marks the record released and drops the `flock` (the file stays: deleting it would race a
    process that has opened it and is waiting)."""
    if self._fd is None:
      return
    import fcntl
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps({"released": True}).encode(), 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_changes(old: dict, new: dict) -> list[str]:
  """["train.lr: 0.001 -> 0.0003", "data.batch_size: (absent) -> 32"] between two config dicts."""
  a, b = _flatten(old), _flatten(new)
  show = lambda d, k: json.dumps(d[k]) if k in d else "(absent)"  # noqa: E731
  return [f"{k}: {show(a, k)} -> {show(b, k)}" for k in sorted(set(a) | set(b)) if a.get(k, ()) != b.get(k, ())]


def write_config(workdir: str, config) -> list[str]:
  """Writes `<workdir>/config.json` (atomically: a partial write never replaces the old file) and
  returns the changes against the config stored there before, each logged (a resumed run whose
  overrides differ says so). Call it after the restore check, so a config the checkpoint rejects
  never replaces the run's own."""
  path = os.path.join(workdir, "config.json")
  text = config.to_json_best_effort(indent=2)
  changes = []
  if os.path.exists(path):
    try:
      with open(path) as f:
        changes = config_changes(json.load(f), json.loads(text))
    except (OSError, ValueError):
      changes = []
    if changes:
      logging.warning("config differs from the one stored in %s: %s", path, "; ".join(changes))
  write_text_atomic(path, text)
  return changes


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` under a temporary name beside `path`, then renames it into place: a reader (or a
  killed run's next start) sees the old file or the new one, never half of one."""
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_atomic_json(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path`, atomically (`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=2))
