"""Machinery shared by the released-layout loaders (one file per paper in this package).

A released directory is read through a `Checkpoint`: its config.json (with the caller's `overrides`
applied on top), and its safetensors behind `Weights`, which

  * reads the stored tensors lazily (one file or shards listed in `model.safetensors.index.json`),
  * adds *views*: tensors derived from a stored one (a vocabulary whose rows are reordered, a slice),
    so a tower's key map can name them like stored tensors,
  * *mounts* another directory's tensors under a key prefix (e.g. a sub-folder holding one part),
  * records which stored tensors a load read, so what the model left unused can be reported.

Pickle files (.bin, .pt, .pth, .ckpt, .pkl) are never opened: unpickling runs code. A directory whose
weights exist only as pickles raises a one-line error naming the file.

Whole-model key maps are the towers' own key maps (jaxmodels/hf/*_family.py) placed at the model's
parameter paths by `nest`, with each checkpoint key prefixed or renamed; `jaxmodels.hf.keymap.load_into`
then fills every parameter (a missing or mis-shaped tensor is a one-line error naming the file and key).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable

import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import CheckpointFormatError, ConfigError
from jaxmodels.hf import _convert_config
from jaxmodels.hf import keymap as keymap_lib
from jaxmodels.hf.safetensors_io import SafetensorsReader, read_config

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def refuse_pickles(path: str) -> None:
  """Raises if `path` (a directory) holds a pickle weights file: jaxmodels never unpickles."""
  names = sorted(n for n in os.listdir(path) if n.endswith(PICKLE_SUFFIXES)) if os.path.isdir(path) else []
  if names:
    raise CheckpointFormatError(
        f"{os.path.join(path, names[0])}: a pickle weights file, which jaxmodels never opens (unpickling "
        f"runs code); convert it to safetensors (e.g. with safetensors.torch.save_file in a trusted "
        f"environment) and place it beside as model.safetensors")


def open_safetensors(path: str) -> SafetensorsReader:
  """The safetensors of a directory; a directory with only pickle weights raises naming the file."""
  try:
    return SafetensorsReader(path)
  except CheckpointFormatError:
    refuse_pickles(path)
    raise


class Weights:
  """Stored tensors + views + mounted directories, with a record of the stored tensors read (see the
  module docstring). Quacks like the readers `keymap.load_into` takes."""

  def __init__(self, reader: SafetensorsReader):
    self.path = reader.path
    self._readers: list[tuple[str, SafetensorsReader]] = [("", reader)]
    self._views: dict[str, tuple[str, Callable]] = {}
    self.used: set[str] = set()

  def mount(self, prefix: str, reader: SafetensorsReader) -> None:
    """Exposes `reader`'s tensors as `prefix + key`."""
    self._readers.append((prefix, reader))

  def view(self, name: str, source: str, fn: Callable) -> None:
    """`name` reads as fn(stored tensor `source`); `name` may equal `source` (then it replaces it)."""
    self._views[name] = (source, fn)

  def _locate(self, key: str):
    for prefix, reader in reversed(self._readers):
      if key.startswith(prefix) and key[len(prefix):] in reader:
        return reader, key[len(prefix):]
    return None, None

  def stored(self, key: str) -> bool:
    return self._locate(key)[0] is not None

  def __contains__(self, key: str) -> bool:
    return self.stored(self._views[key][0] if key in self._views else key)

  def keys(self) -> list[str]:
    return [prefix + k for prefix, reader in self._readers for k in reader.keys()]

  def shape(self, key: str) -> tuple[int, ...]:
    reader, name = self._locate(self._views[key][0] if key in self._views else key)
    if reader is None:
      raise CheckpointFormatError(f"{self.path}: tensor {key!r} not found in the checkpoint")
    return reader.shape(name)

  def file_of(self, key: str) -> str:
    reader, name = self._locate(self._views[key][0] if key in self._views else key)
    return self.path if reader is None else reader.file_of(name)

  def get(self, key: str):
    source, fn = self._views.get(key, (key, None))
    reader, name = self._locate(source)
    if reader is None:
      raise CheckpointFormatError(f"{self.path}: tensor {source!r} not found in the checkpoint")
    self.used.add(source)
    value = reader.get(name)
    return value if fn is None else fn(value)

  def unused(self) -> tuple[str, ...]:
    """Groups of stored tensors no parameter read: each key without its weight / bias suffix, cut before
    its first numeric part and after six parts, e.g. 'model.vision_tower.vision_tower.decoder.encoder.*'."""
    groups = set()
    for key in self.keys():
      if key in self.used:
        continue
      parts = key.split(".")
      parts = parts[:-1] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts
      cut = next((i for i, p in enumerate(parts) if p.isdigit()), len(parts))
      groups.add(".".join(parts[:min(cut, 6)]) + ".*")
    return tuple(sorted(groups))


@dataclasses.dataclass
class Checkpoint:
  """A released directory: `config` is config.json with `overrides` applied; `weights` its tensors."""
  path: str
  config: dict
  weights: Weights
  kind: str = ""

  @property
  def config_file(self) -> str:
    return os.path.join(self.path, "config.json")

  def require(self, key: str):
    if key not in self.config:
      raise CheckpointFormatError(f"{self.config_file}: missing key {key!r} (needed by the {self.kind} loader)")
    return self.config[key]

  def local_dir(self, value: Any) -> str | None:
    """`value` (a config.json entry naming another model) as a local directory: absolute, or relative
    to the checkpoint; None when it is not one (e.g. a hub id)."""
    if not isinstance(value, str) or not value:
      return None
    for candidate in (value, os.path.join(self.path, value)):
      if os.path.isdir(candidate):
        return candidate
    return None

  def subdir(self, name: str) -> str | None:
    path = os.path.join(self.path, name)
    return path if os.path.isdir(path) else None


def tokenizer_dir(*dirs: str | None) -> str | None:
  """The first of `dirs` holding tokenizer.json or tokenizer_config.json."""
  for d in dirs:
    if d and any(os.path.exists(os.path.join(d, f)) for f in TOKENIZER_FILES):
      return d
  return None


def nest(keymap: keymap_lib.KeyMap, at: tuple, prefix: str = "",
         rename: Callable[[str], str] | None = None) -> keymap_lib.KeyMap:
  """A tower's key map placed at parameter path `at` of the whole model, each checkpoint key renamed by
  `rename` (if given) and then prefixed with `prefix`."""
  return {at + path: dataclasses.replace(src, key=prefix + (rename(src.key) if rename else src.key))
          for path, src in keymap.items()}


def regex_renamer(rules: tuple[tuple[str, str], ...]) -> Callable[[str], str]:
  """A key renamer applying `(pattern, replacement)` substitutions in order."""
  compiled = [(re.compile(p), r) for p, r in rules]

  def rename(key: str) -> str:
    for pattern, repl in compiled:
      key = pattern.sub(repl, key)
    return key
  return rename


def family(name: str):
  """The registered jaxmodels.hf family called `name` ("llm", "vision", "qwen2_5_vl_vision", "lumina",
  "sana", "dcae", "florence2")."""
  from jaxmodels.hf import FAMILIES
  for f in FAMILIES:
    if f.name == name:
      return f
  raise KeyError(f"no jaxmodels.hf family named {name!r}")


def convert(family, d: dict, path: str, **overrides):
  """`family.config_from_hf(d, **overrides)` with jaxmodels.hf's one-line errors naming
  `<path>/config.json` and the key."""
  return _convert_config(family, d, path, overrides)


def convert_scanned(family, d: dict, path: str, **overrides):
  """`convert` with scanned layers, or looped ones where the tower cannot scan (e.g. a Qwen2.5-VL tower
  whose full-attention blocks do not repeat periodically)."""
  try:
    return convert(family, d, path, **overrides, scan_layers=True)
  except ConfigError as e:
    if "scan_layers" not in str(e):
      raise
    return convert(family, d, path, **overrides, scan_layers=False)


def exec_options(dtype: str, scan: bool = True) -> dict:
  """Execution options of a tower config: parameter and compute dtype, scanned layers."""
  return dict(dtype=dtype, param_dtype=dtype, **({"scan_layers": True} if scan else {}))


def load(make: Callable[[], nnx.Module], keymap: keymap_lib.KeyMap, weights: Weights, dtype: str,
         aliases: tuple[tuple[str, str], ...] = ()) -> nnx.Module:
  """Builds the model abstractly and fills every parameter from `weights` (keymap.load_into)."""
  return keymap_lib.load_into(make, keymap, weights, jnp.dtype(dtype), aliases)


def count_indexed(weights: Weights, prefix: str) -> int:
  """How many `prefix{i}.` groups the checkpoint holds (1 + the largest i; 0 if none)."""
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = [int(m.group(1)) for k in weights.keys() if (m := pattern.match(k))]
  return max(found) + 1 if found else 0


def stored_shape(ckpt: Checkpoint, key: str, what: str) -> tuple[int, ...]:
  """The shape of stored tensor `key`, which the loader reads a size from (`what`)."""
  if not ckpt.weights.stored(key):
    raise CheckpointFormatError(f"{ckpt.path}: tensor {key!r} not found in the checkpoint (the "
                                f"{ckpt.kind} loader reads {what} from its shape)")
  return tuple(ckpt.weights.shape(key))


# SANA transformers / DC-AEs the releases name by hub id (`diffusion_model_id`, `vae_id`,
# `diffusion_name_or_path`): their published configs, used when no local folder is given.
SANA_PRESETS = {
    "Efficient-Large-Model/Sana_1600M_512px_diffusers": dict(sample_size=16),
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers": dict(),
    "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers": dict(qk_norm="rms_norm_across_heads"),
}
DCAE_PRESETS = tuple(SANA_PRESETS)          # each of these pipelines' vae/ is DC-AE f32c32


def diffusers_part(ckpt: Checkpoint, key: str, subfolder: str, dtype: str):
  """The SANA transformer (subfolder "transformer") or DC-AE ("vae") config of the diffusers pipeline
  config.json entry `key` names: `<folder>/<subfolder>/config.json` when the entry is a local folder,
  else the published config of a known hub id."""
  from jaxmodels.flow.dcae import dcae_f32c32_config
  from jaxmodels.flow.sana import sana_1600m_config
  part_family, kw = ((family("sana"), exec_options(dtype)) if subfolder == "transformer" else
                     (family("dcae"), exec_options(dtype, scan=False)))
  value = ckpt.require(key)
  folder = ckpt.local_dir(value)
  if folder is not None:
    part = os.path.join(folder, subfolder)
    if not os.path.exists(os.path.join(part, "config.json")):
      raise CheckpointFormatError(f"{ckpt.config_file}: {key}={value!r} is a folder without "
                                  f"{subfolder}/config.json (a diffusers pipeline folder is expected)")
    return convert(part_family, read_config(part), part, **kw)
  if value in SANA_PRESETS:
    return (sana_1600m_config(**SANA_PRESETS[value], **kw) if subfolder == "transformer" else
            dcae_f32c32_config(**kw))
  raise CheckpointFormatError(
      f"{ckpt.config_file}: {key}={value!r} is neither a local diffusers folder nor a known release "
      f"({', '.join(SANA_PRESETS)}); download its {subfolder}/config.json and pass "
      f"overrides={{{key!r}: <that pipeline folder>}}")


def qwen2_5_vl_language_model(d: dict, path: str, **overrides):
  """The LLMConfig of a Qwen2.5-VL config.json's language model: a `qwen2` model (the llm family's
  key names) with its `mrope_section` (default (16, 24, 24)), so image prompts get M-RoPE positions
  (`UnifiedModel.answer_positions`); text-only prompts reduce to ordinary RoPE either way."""
  from jaxmodels.hf.qwen2_5_vl_family import mrope_section_of
  llm = convert(family("llm"), text_config_of_qwen2_5_vl(d), path, **overrides)
  return llm.replace(mrope_section=mrope_section_of(d))


def text_config_of_qwen2_5_vl(d: dict) -> dict:
  """The language model of a Qwen2.5-VL config.json (transformers < 4.52 writes its fields at the top
  level, later versions under `text_config`) as a plain `qwen2` config, `rope_scaling` (type "mrope",
  `mrope_section`) removed: `qwen2_5_vl_language_model` puts the section back on the LLMConfig."""
  text = {**{k: v for k, v in d.items() if k not in ("vision_config", "text_config")},
          **dict(d.get("text_config") or {})}
  text["model_type"] = "qwen2"
  for key in ("rope_scaling", "rope_parameters"):
    rope = dict(text.get(key) or {})
    if rope.get("type", rope.get("rope_type")) in ("mrope", "default") or "mrope_section" in rope:
      theta = rope.get("rope_theta")
      text[key] = None
      if theta is not None:
        text.setdefault("rope_theta", theta)
  return text


@dataclasses.dataclass
class ReleasedModel:
  """A released unified model loaded whole by `jaxmodels.unified.from_pretrained`.

  model            the jaxmodels module: a `UnifiedModel` (BLIP3-o, BLIP3o-NEXT, MetaQuery; Florence-VL as an
                   understanding-only one)
  kind             "blip3o" | "blip3o_next" | "metaquery" | "florence_vl"
  can_generate     text -> image (`model.generate_image`; BLIP3-o without its pixel decoder stops at
                   the 8×8×1792 CLIP features: `generates_pixels` False)
  can_answer       image + question -> answer (`model.answer`)
  can_edit         image + instruction -> image (`model.generate_image(..., cond_images=...)`)
  tokenizer_dir    directory with tokenizer.json / tokenizer_config.json to use, or None
  system_prompt, prompt_template, prompt_suffix
                   generation prompt: chat messages [system, user = prompt_template.format(prompt=...)]
                   rendered with the tokenizer's chat template and its generation prompt, then
                   `prompt_suffix` appended, the whole string tokenised at once
  answer_template  understanding user message; "<image>" marks where `model.num_image_tokens` copies
                   of `model.config.image_token_id` go, "{question}" the question
  max_prompt_tokens  the release truncates the caption to this many tokens (None: no limit)
  sampling         the paper's sampling settings as `generate_image` keyword arguments
  pixel_decoder, pixel_decoder_dir   BLIP3-o's separate decoder (None until it can be loaded)
  notes            what is approximated or UNCONFIRMED for this layout, one line each
  unused           groups of stored tensors the model does not use (e.g. TA-Tok's pixel decoder)
  """
  model: Any
  kind: str
  path: str
  can_generate: bool
  can_answer: bool
  can_edit: bool
  tokenizer_dir: str | None
  system_prompt: str | None = None
  prompt_template: str | None = None
  prompt_suffix: str = ""
  answer_template: str | None = None
  max_prompt_tokens: int | None = None
  sampling: dict = dataclasses.field(default_factory=dict)
  pixel_decoder: Any = None
  pixel_decoder_dir: str | None = None
  notes: tuple[str, ...] = ()
  unused: tuple[str, ...] = ()

  @property
  def generates_pixels(self) -> bool:
    """Whether generation ends in pixels (the model's own decoder, or a loaded pixel decoder)."""
    config = getattr(self.model, "config", None)
    return self.can_generate and (bool(getattr(config, "generates_pixels", False)) or
                                  self.pixel_decoder is not None)

  def _messages(self, user: str) -> list[dict]:
    system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
    return system + [{"role": "user", "content": user}]

  def generation_messages(self, prompt: str) -> list[dict]:
    """Chat messages of a text-to-image prompt (render, add the generation prompt, append
    `prompt_suffix`)."""
    return self._messages((self.prompt_template or "{prompt}").format(prompt=prompt))

  def answer_messages(self, question: str) -> list[dict]:
    """Chat messages of an image question (`answer_template`; "<image>" is the image slot)."""
    return self._messages((self.answer_template or "<image>\n{question}").format(question=question))
