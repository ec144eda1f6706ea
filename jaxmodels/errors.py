"""Project exceptions: errors a user can cause, each with a one-line message naming the culprit."""


class JaxModelsError(Exception):
  """Base class for user-facing errors (bad files, keys, shapes, configs)."""


class CheckpointFormatError(JaxModelsError):
  """A checkpoint directory or file is missing, unsupported or inconsistent."""


class ConfigError(JaxModelsError):
  """A config value is missing or invalid."""


def run_cli(fn, *args, **kwargs):
  """Calls `fn`; a JaxModelsError (a user-caused problem) exits with one line and no traceback."""
  try:
    return fn(*args, **kwargs)
  except JaxModelsError as e:
    raise SystemExit(f"error: {e}") from None
