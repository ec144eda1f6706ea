"""Import and export Hugging Face (transformers / diffusers) checkpoints.

    model = jaxmodels.hf.from_pretrained("/ckpts/Qwen2.5-0.5B-Instruct")      # -> jaxmodels.llm.LLM
    model = jaxmodels.hf.from_pretrained(path, dtype=jnp.bfloat16, scan_layers=True)
    jaxmodels.hf.save_pretrained(model, "/tmp/export")      # transformers loads it back

The model family is chosen from `model_type` in config.json (or `_class_name` for diffusers
directories). Each family (see `FAMILIES`) converts the config and names every tensor; the generic
machinery in `keymap.py` does the loading, shape checks, scan stacking and export.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import CheckpointFormatError, ConfigError
from jaxmodels.hf import keymap as keymap_lib
from jaxmodels.hf.safetensors_io import SafetensorsReader, read_config, write_checkpoint


@dataclasses.dataclass(frozen=True)
class Family:
  """How one group of HF model types maps onto a jaxmodels module."""
  name: str
  model_types: tuple[str, ...]
  module: type
  config_from_hf: Callable[..., Any]       # (hf config dict, **overrides) -> our config
  config_to_hf: Callable[[Any], dict]
  keymap: Callable[[Any], keymap_lib.KeyMap]
  weights_name: str = "model.safetensors"
  key_aliases: tuple[tuple[str, str], ...] = ()   # see keymap.load_into


FAMILIES: list[Family] = []


def register(family: Family) -> Family:
  FAMILIES.append(family)
  return family


def _family_for_config(hf_config: dict, path: str, module: type | None = None) -> Family:
  """The first family for the checkpoint's model type; with `module`, the first one loading into that
  class if there is one (else that default)."""
  name = hf_config.get("model_type") or hf_config.get("_class_name")
  if name is None:
    raise CheckpointFormatError(f"{os.path.join(path, 'config.json')}: no 'model_type' (transformers) "
                                f"or '_class_name' (diffusers) key: cannot tell the model family")
  matches = [family for family in FAMILIES if name in family.model_types]
  if matches:
    return next((family for family in matches if family.module is module), matches[0])
  known = sorted(t for f in FAMILIES for t in f.model_types)
  raise CheckpointFormatError(
      f"{path}/config.json: unsupported model type {name!r} (supported: {', '.join(known)})")


def _family_for_module(module: nnx.Module) -> Family:
  for family in FAMILIES:
    if isinstance(module, family.module):
      return family
  raise CheckpointFormatError(f"save_pretrained: no HF export for {type(module).__name__}")


def from_pretrained(path: str, *, dtype=jnp.float32, module: type | None = None,
                    **config_overrides) -> nnx.Module:
  """Loads a local HF checkpoint directory into the matching jaxmodels module.

  `dtype` sets both the parameter and the compute dtype; `config_overrides` set execution options of
  the module config (e.g. `scan_layers=True`, `remat="full"`, `attention_impl="cudnn"`). `module`
  picks the part of a checkpoint to load where a model type has several families (a full Qwen2.5-VL
  directory: the whole `Qwen25VLModel` by default, its `Qwen25VisionTransformer` or its `LLM`).
  """
  hf_config = read_config(path)
  family = _family_for_config(hf_config, path, module)
  name = jnp.dtype(dtype).name
  config = _convert_config(family, hf_config, path, dict(dtype=name, param_dtype=name, **config_overrides))
  reader = SafetensorsReader(path)
  return keymap_lib.load_into(lambda: family.module(config, rngs=nnx.Rngs(0)),
                              family.keymap(config), reader, jnp.dtype(dtype), family.key_aliases)


def _convert_config(family: Family, hf_config: dict, path: str, overrides: dict):
  """`family.config_from_hf` whose failures name `<path>/config.json` and the key: a key the family
  needs but the file lacks (CheckpointFormatError), a value it cannot use (ConfigError, as raised),
  an option of `from_pretrained` the config does not have (ConfigError)."""
  file = os.path.join(path, "config.json")
  try:
    return family.config_from_hf(hf_config, **overrides)
  except KeyError as e:
    key = e.args[0] if e.args else "?"
    raise CheckpointFormatError(f"{file}: missing key {key!r} (needed by the {family.name} loader for "
                                f"model type {hf_config.get('model_type') or hf_config.get('_class_name')!r})"
                                ) from None
  except ConfigError as e:
    message = str(e)
    for prefix in ("config.json: ", "config.json "):
      if message.startswith(prefix):
        message = message[len(prefix):]
        break
    raise ConfigError(f"{file}: {message}") from None
  except TypeError as e:
    unknown = [k for k in overrides if f"'{k}'" in str(e)]
    if "unexpected keyword argument" in str(e) and unknown:
      raise ConfigError(f"from_pretrained({path!r}): unknown option {unknown[0]!r} for the "
                        f"{family.name} config") from None
    raise CheckpointFormatError(f"{file}: a value has the wrong type for the {family.name} loader "
                                f"({e})") from None
  except ValueError as e:
    raise CheckpointFormatError(f"{file}: invalid value for the {family.name} loader ({e})") from None


def save_pretrained(module: nnx.Module, path: str, *, dtype=None, max_shard_size: int | None = None):
  """Writes `config.json` + safetensors that transformers/diffusers load with `from_pretrained`."""
  family = _family_for_module(module)
  tensors = keymap_lib.export(module, family.keymap(module.config), dtype=dtype)
  hf_config = family.config_to_hf(module.config)
  if dtype is not None:
    hf_config["dtype"] = np.dtype(dtype).name
  write_checkpoint(path, hf_config, tensors, weights_name=family.weights_name,
                   max_shard_bytes=max_shard_size)


# Modules under jaxmodels/hf/ that each define `FAMILY = Family(...)` (or a tuple `FAMILIES`);
# registered in this order.
_BUILTIN_FAMILIES = ("llm_family", "vision_family", "lumina_family", "sana_family", "dcae_family",
                     "florence2_family", "qwen2_5_vl_family", "eva_clip_family", "sdxl_family",
                     "sdxl_vae_family")


def _register_builtin():
  import importlib
  for name in _BUILTIN_FAMILIES:
    module = importlib.import_module(f"jaxmodels.hf.{name}")
    for family in getattr(module, "FAMILIES", None) or (module.FAMILY,):   # FAMILIES: several, in order
      register(family)


_register_builtin()
