"""jaxmodels.log_filters: library noise is dropped, everything a user must see passes."""
import asyncio
import logging
import os
import sys
import types

from jaxmodels import log_filters
from jaxmodels.log_filters import LibraryLogFilter


def _record(pathname, level=logging.INFO, msg="m", name="absl", exc=False):
  exc_info = None
  if exc:
    try:
      raise ValueError("boom")
    except ValueError:
      exc_info = sys.exc_info()
  return logging.LogRecord(name, level, pathname, 1, msg, (), exc_info)


ORBAX = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")


def test_orbax_info_is_dropped_and_its_errors_keep_one_line():
  f = LibraryLogFilter()
  assert not f.filter(_record(ORBAX, logging.INFO))
  err = _record(ORBAX, logging.ERROR, exc=True)
  assert f.filter(err) and err.exc_info is None
  assert logging.Formatter().format(err) == "m"        # no traceback below the line


def test_project_and_other_records_pass_untouched():
  f = LibraryLogFilter()
  for path in (os.path.join(os.sep, "work", "jaxmodels", "checkpoint.py"),
               os.path.join(os.sep, "site-packages", "orbaxlike", "x.py")):
    rec = _record(path, logging.INFO, exc=True)
    assert f.filter(rec) and rec.exc_info is not None


def test_asyncio_reports_of_a_failed_orbax_write_are_dropped_and_others_kept():
  f = LibraryLogFilter()
  asyncio_py = os.path.join(os.sep, "lib", "asyncio", "base_events.py")
  leftover = _record(asyncio_py, logging.ERROR, name="asyncio",
                     msg="Future exception was never retrieved\nfuture: <Future exception=ValueError("
                         "'writing /run/checkpoints/4.orbax-checkpoint-tmp/state failed')>")
  other = _record(asyncio_py, logging.ERROR, name="asyncio",
                  msg="Future exception was never retrieved\nfuture: <Future exception=KeyError('x')>")
  assert not f.filter(leftover)
  assert f.filter(other)


def _closed_loop_exception():
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    return e
  raise AssertionError("a closed loop accepted a callback")


def test_unraisable_closed_loop_callbacks_are_dropped_and_other_unraisables_kept():
  seen = []
  hook = log_filters._without_closed_loop_callbacks(seen.append)
  closed = _closed_loop_exception()
  # What native code reports: the traceback starts in call_soon_threadsafe (no Python caller).
  tb = closed.__traceback__.tb_next
  hook(types.SimpleNamespace(exc_value=closed, exc_traceback=tb))
  assert seen == []
  hook(types.SimpleNamespace(exc_value=closed, exc_traceback=closed.__traceback__))   # our own caller
  other = RuntimeError("something else")
  hook(types.SimpleNamespace(exc_value=other, exc_traceback=None))
  assert len(seen) == 2


def test_users_can_keep_every_line(monkeypatch):
  monkeypatch.setenv("JAXMODELS_LIBRARY_LOGS", "all")
  assert log_filters.quiet_library_logs() is None
