"""Quiet library logs for the command-line entry points (train.py, evaluate.py, serve.py).

Orbax and Grain log every checkpoint phase at INFO (about 50 lines per save) and, when a background
write fails, log the same exception with its full traceback from three threads before the project
raises its own one-line error (`CheckpointWriteError`); at exit, asyncio then reports each of the
failed write's futures as "exception was never retrieved" (one traceback per array). Through `quiet_library_logs()` records from
those libraries keep WARNING and above, each as its message line only; the project's own records and
every other library's pass unchanged, and asyncio's reports of futures left over from a failed Orbax
write (their message names an `.orbax-checkpoint-tmp` directory) are dropped. While that failed write
winds down, TensorStore's completion callbacks find Orbax's event loop closed and print
`RuntimeError: Event loop is closed` through `sys.unraisablehook`, once per array; the hook installed here
drops exactly that exception when it comes straight from asyncio's `call_soon_threadsafe`. `JAXMODELS_LIBRARY_LOGS=all` keeps everything, as does absl's
`-v 1` or higher.

    from jaxmodels.log_filters import quiet_library_logs
    quiet_library_logs()     # after absl's app.run installed its handler
"""
from __future__ import annotations

import logging
import os
import sys

QUIETED_PACKAGES = ("orbax", "grain")


class LibraryLogFilter(logging.Filter):
  """Drops records below WARNING from `packages` and the tracebacks of the ones it keeps."""

  def __init__(self, packages=QUIETED_PACKAGES):
    super().__init__()
    self._markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def filter(self, record: logging.LogRecord) -> bool:
    if not any(m in (record.pathname or "") for m in self._markers):
      return not _leftover_orbax_future(record)
    if record.levelno < logging.WARNING:
      return False
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


def _leftover_orbax_future(record: logging.LogRecord) -> bool:
  if record.name != "asyncio" or record.levelno < logging.ERROR:
    return False
  try:
    message = record.getMessage()
  except Exception:  # noqa: BLE001 - a record whose arguments do not format is not ours to judge
    return False
  return "never retrieved" in message and ".orbax-checkpoint-tmp" in message


def quiet_library_logs(packages=QUIETED_PACKAGES) -> LibraryLogFilter | None:
  """Installs a LibraryLogFilter on the root logger's handlers (once); returns it, or None when the
  user asked for every log line."""
  if os.environ.get("JAXMODELS_LIBRARY_LOGS", "").lower() == "all":
    return None
  try:
    from absl import logging as absl_logging
    if absl_logging.get_verbosity() >= 1:
      return None
  except ImportError:
    pass
  handlers = logging.getLogger().handlers
  for h in handlers:
    for f in h.filters:
      if isinstance(f, LibraryLogFilter):
        return f
  quiet = LibraryLogFilter(packages)
  for h in handlers:
    h.addFilter(quiet)
  sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)
  return quiet


def _closed_loop_callback(exc: BaseException, tb) -> bool:
  """A callback from native code into an event loop that is already closed: every frame is asyncio's."""
  if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed" or tb is None:
    return False
  frames = []
  while tb is not None:
    frames.append(tb.tb_frame.f_code)
    tb = tb.tb_next
  return (frames[0].co_name == "call_soon_threadsafe"
          and all(f.co_filename.endswith(os.path.join("asyncio", "base_events.py")) for f in frames))


def _without_closed_loop_callbacks(hook):
  def unraisablehook(unraisable):
    if not _closed_loop_callback(unraisable.exc_value, unraisable.exc_traceback):
      hook(unraisable)
  return unraisablehook
