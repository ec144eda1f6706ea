"""Project exceptions: errors a user can cause, each with a one-line message naming the culprit."""


class JaxModelsError(Exception):
  """Base class for user-facing errors (bad files, keys, shapes, configs)."""


class CheckpointFormatError(JaxModelsError):
  """A checkpoint directory or file is missing, unsupported or inconsistent."""


class ConfigError(JaxModelsError):
  """A config value is missing or invalid."""
