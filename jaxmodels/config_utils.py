"""Helpers for config files (big_vision style: `get_config(arg)` with a typed argument string)."""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections

from jaxmodels.errors import ConfigError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses "tiny" / "runlocal,steps=100" into a ConfigDict typed like `defaults`.

  A bare word sets a boolean default to True (`:tiny`, `:runlocal`); `key=value` is converted to the
  default's type. Unknown keys raise a ConfigError naming them.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"config argument {key!r} is unknown; known: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if not _:
      if not isinstance(default, bool):
        raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
    elif isinstance(default, bool):
      out[key] = value.strip().lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(value)
    elif isinstance(default, str) or default is None:
      out[key] = value
    else:
      out[key] = ast.literal_eval(value)
  return out


def init_sources(config) -> dict:
  """`config.init` without its unset entries: {"checkpoint": run_dir?, "hf": {part: path}?} (empty: a
  run starts from scratch). Accepts None, a dict or a ConfigDict."""
  init = config.get("init") if hasattr(config, "get") else None
  if not init:
    return {}
  init = init.to_dict() if hasattr(init, "to_dict") else dict(init)
  out = {k: v for k, v in init.items() if k not in ("hf", "checkpoint")}   # unknown keys: reported
  if init.get("checkpoint"):
    out["checkpoint"] = init["checkpoint"]
  hf = {part: path for part, path in (init.get("hf") or {}).items() if path}
  if hf:
    out["hf"] = hf
  return out


############################ Command-line overrides ########################

def override_paths(argv: Sequence[str], name: str = "config") -> list[str]:
  """The dotted keys overridden on a command line: `--config.train.total_steps=3` -> "train.total_steps".

  Example:
    >>> override_paths(["train.py", "--config=c.py", "--config.optim.lr=0.1", "--config.seed", "2"])
    ['optim.lr', 'seed']
  """
  out = []
  for arg in argv:
    for prefix in (f"--{name}.", f"-{name}."):
      if arg.startswith(prefix):
        out.append(arg[len(prefix):].split("=", 1)[0])
        break
  return out


def check_overrides(config: Any, paths: Sequence[str], name: str = "config") -> None:
  """Raises a one-line ConfigError for the first override naming a key the config does not have.

  The message names the whole key and suggests the closest existing one:
  `--config.trian.total_steps: config has no key 'trian' (did you mean 'train'?)`.
  Keys below a non-dict value (a list index, a dataclass, a None placeholder) are not checked.
  """
  for path in paths:
    node, walked = config, name
    for part in path.replace("]", "").replace("[", ".").split("."):
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        break
      keys = [str(k) for k in node.keys()]
      if part not in keys:
        close = difflib.get_close_matches(part, keys, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(keys))})"
        raise ConfigError(f"--{name}.{path}: {walked} has no key {part!r}{hint}")
      node, walked = node[part], f"{walked}.{part}"


def load_config_file(spec: str) -> Any:
  """Loads `path/to/file.py[:arg]` as ml_collections' config flag does: `module.get_config(arg)`."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location("_jaxmodels_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if ":" in spec else module.get_config()


def flags_parser(argv: Sequence[str], name: str = "config") -> list[str]:
  """`app.run(main, flags_parser=flags_parser)`: absl flag parsing whose config mistakes end the
  program with one line (`error: ...`, exit status 1) instead of a traceback: a missing config file,
  an unknown `--config.x` key (with a did-you-mean), a bad `:arg`. Other flag errors keep absl's own
  one-line report."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from jaxmodels.errors import JaxModelsError  # pylint: disable=g-import-not-at-top
  try:
    rest = flags.FLAGS(list(argv))
    if name in flags.FLAGS and flags.FLAGS[name].present:
      flags.FLAGS[name].value.keys()   # a file that failed to load raises on first use: do it here
    return rest
  except flags.Error as e:
    raise SystemExit(f"error: {_one_line(e)}") from None
  except JaxModelsError as e:
    raise SystemExit(f"error: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f"error: {_explain(argv, name, e)}") from None


def _explain(argv: Sequence[str], name: str, err: Exception) -> str:
  """A one-line description of a failure inside ml_collections' config flag."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      spec = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec is not None:
    try:
      config = load_config_file(spec)
      check_overrides(config, override_paths(argv, name), name)
    except ConfigError as e:
      return str(e)
    except Exception as e:  # pylint: disable=broad-except
      return f"--{name}={spec}: {type(e).__name__}: {_one_line(e)}"
  return f"--{name}: {type(err).__name__}: {_one_line(err)}"


def _one_line(err: Exception) -> str:
  text = " ".join(str(err).replace("\\n", " ").split())
  return text if len(text) < 300 else text[:297] + "..."


############################ KEY=VALUE settings (evaluate.py --set) ########

def set_values(config: Any, pairs: Sequence[str], flag: str = "--set") -> Any:
  """Applies `KEY=VALUE` settings (`evals.batch_size=8`, `model.llm.width=64`) to `config` in place.

  VALUE is converted to the type of the value it replaces: bool (true/false/1/0/yes/no), int, float,
  str; lists, tuples and dicts are Python literals; a key holding None takes a Python literal, else
  the text as a string. Returns `config`.

  Raises:
    ConfigError: one line naming the setting: no `=`, a key the config does not have (with a
      did-you-mean), or a value that does not convert to the key's type.

  Example:
    >>> c = ml_collections.ConfigDict({"evals": {"batch_size": 64}})
    >>> set_values(c, ["evals.batch_size=8"]).evals.batch_size
    8
  """
  for pair in pairs:
    key, sep, text = pair.partition("=")
    key = key.strip()
    if not sep or not key:
      raise ConfigError(f"{flag} {pair}: expected KEY=VALUE (e.g. evals.batch_size=8)")
    parts = key.split(".")
    node, walked = config, "config"
    for i, part in enumerate(parts):
      if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise ConfigError(f"{flag} {pair}: {walked} holds a value of type {type(node).__name__}, "
                          f"not keys")
      names = [str(k) for k in node.keys()]
      if part not in names:
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
        hint = (f" (did you mean {close[0]!r}?)" if close else
                f" (known: {', '.join(sorted(names))})" if names else " (it is empty)")
        raise ConfigError(f"{flag} {pair}: {walked} has no key {part!r}{hint}")
      if i < len(parts) - 1:
        node, walked = node[part], f"{walked}.{part}"
    last = parts[-1]
    value = _convert_setting(node[last], text, f"{flag} {pair}")
    try:
      node[last] = value
    except (TypeError, ValueError, AttributeError) as e:
      raise ConfigError(f"{flag} {pair}: cannot set config.{key} ({_one_line(e)})") from None
  return config


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert_setting(current: Any, text: str, where: str) -> Any:
  """`text` as a value of `current`'s type (see `set_values`)."""
  stripped = text.strip()
  if isinstance(current, bool):
    if stripped.lower() in _TRUE:
      return True
    if stripped.lower() in _FALSE:
      return False
    raise ConfigError(f"{where}: expected a boolean (true/false), got {text!r}")
  if isinstance(current, int):
    try:
      return int(stripped)
    except ValueError:
      raise ConfigError(f"{where}: expected an integer, got {text!r}") from None
  if isinstance(current, float):
    try:
      return float(stripped)
    except ValueError:
      raise ConfigError(f"{where}: expected a number, got {text!r}") from None
  if isinstance(current, str):
    return text
  try:
    literal = ast.literal_eval(stripped)
  except (ValueError, SyntaxError):
    if current is None:
      return text                    # an unset string field (e.g. config.resume)
    raise ConfigError(f"{where}: expected a Python literal for a {type(current).__name__}, "
                      f"got {text!r}") from None
  if current is None:
    return literal
  if isinstance(current, (list, tuple)) and isinstance(literal, (list, tuple)):
    return type(current)(literal)
  if isinstance(current, (dict, ml_collections.ConfigDict)) and isinstance(literal, dict):
    return literal
  raise ConfigError(f"{where}: expected a {type(current).__name__}, got {type(literal).__name__} "
                    f"{text!r}")
