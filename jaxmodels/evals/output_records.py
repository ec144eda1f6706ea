"""What the resumable benchmark writers share (geneval_generate, colorbench_generate, rover_generate):
atomic file writes, content hashes of their inputs, PNG checks, and the settings record a rerun must
match before it may add to a folder an earlier run wrote.

    record_matches(out / "generation.json", settings, COMPARED)   # False: first run; raises: mismatch
    write_atomic(out / "00000" / "samples" / "0000.png", encode_png(image))
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

from jaxmodels.evals import EvalInputError


def write_atomic(path: Path, data: bytes) -> None:
  """Writes `data` to a temporary name beside `path`, fsyncs and renames it into place, so a killed
  run never leaves half a file under the name a reader (or the resume check) looks at."""
  tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def file_sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file, read in 4 MiB blocks (data files may be large)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def is_complete_png(path: Path) -> bool:
  """Whether Pillow reads `path` as a whole image (a truncated or corrupt file is not)."""
  from PIL import Image
  try:
    with Image.open(path) as img:
      img.verify()
    return True
  except Exception:  # noqa: BLE001 - any Pillow failure means: not a complete image
    return False


def checkpoint_id(workdir: str) -> str:
  """How a record names the run it came from: the absolute path (remote paths as given)."""
  return os.path.abspath(workdir) if "://" not in workdir else workdir


def sampling_temperatures(ucfg) -> tuple[float | None, float | None]:
  """(temperature, pattern temperature) a UnifiedConfig samples image tokens with; None for the
  flow heads, which sample no tokens."""
  if ucfg.gen_target == "patch_tokens":
    temperature = float(ucfg.patch_tokens.temperature)
    pattern = ucfg.patch_tokens.pattern_temperature
    return temperature, float(pattern) if pattern is not None else temperature
  if ucfg.queries == "image_tokens":
    return 1.0, None             # UnifiedModel.sample_image_tokens' default
  return None, None


def record_matches(path: Path, current: dict, keys: Sequence[str], what: str = "settings") -> bool:
  """False when no record exists yet; True when the record at `path` (`{"settings": {...}}`) agrees
  with `current` on every key in `keys`.

  Raises:
    EvalInputError: the record is unreadable, or differs (the message lists each differing key with
      its recorded and current value).
  """
  if not path.exists():
    return False
  try:
    recorded = json.loads(path.read_text(encoding="utf-8"))["settings"]
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise EvalInputError(f"{path}: unreadable {what} record ({type(e).__name__}); this folder is not "
                         f"resumable, choose another --out") from None
  diff = [f"{k}: recorded {_short(recorded.get(k))}, now {_short(current.get(k))}" for k in keys
          if recorded.get(k) != current.get(k)]
  if diff:
    raise EvalInputError(f"{path}: {what} differ from the run that wrote this folder "
                         f"({'; '.join(diff)}); rerun with the recorded {what} or another --out")
  return True


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + "..."
