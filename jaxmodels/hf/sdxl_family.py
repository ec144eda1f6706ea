"""diffusers SDXL components: tensor-name helpers shared by the UNet and the VAE families.

The KL autoencoder's family is in sdxl_vae_family.py; both use the helpers here (the 2-D blocks of
jaxmodels/sdxl/blocks.py mirror diffusers' attribute names, so a block maps in a few lines).
"""
from __future__ import annotations

import dataclasses

from jaxmodels.errors import ConfigError
from jaxmodels.hf.dcae_family import _conv as conv_keymap, _norm as norm_keymap
from jaxmodels.hf.keymap import KeyMap
from jaxmodels.hf.sana_family import _attention, _linear as linear_keymap
from jaxmodels.sdxl.blocks import ResnetBlock2D

__all__ = ["checkpoint_fields", "config_dict", "config_from_dict", "conv_keymap", "linear_keymap",
           "norm_keymap", "resnet_keymap", "self_attention_keymap"]

EXECUTION_FIELDS = ("scan_layers", "remat", "attention_impl", "dtype", "param_dtype")
_IGNORED_KEYS = ("dtype", "torch_dtype")   # plus every "_"-prefixed metadata key


def checkpoint_fields(config_cls) -> tuple[str, ...]:
  """The fields of a config dataclass that config.json holds (all but the execution choices)."""
  return tuple(f.name for f in dataclasses.fields(config_cls) if f.name not in EXECUTION_FIELDS)


def config_from_dict(d: dict, config_cls, class_name: str, module: str, overrides: dict):
  """diffusers config.json dict -> `config_cls`; absent keys take the dataclass (= diffusers')
  defaults; a key the module does not implement is a ConfigError naming it."""
  fields = checkpoint_fields(config_cls)
  unknown = sorted(k for k in d if not k.startswith("_") and k not in fields and k not in _IGNORED_KEYS)
  if unknown:
    raise ConfigError(f"config.json: {class_name} option {unknown[0]!r} is not implemented by {module}")
  kw = {k: d[k] for k in fields if k in d}
  kw.update(overrides)
  return config_cls(**kw)


def config_dict(config, class_name: str, version: str) -> dict:
  """`config`'s checkpoint fields as a diffusers config.json dict (tuples written as lists)."""
  def plain(v):
    return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v
  d = {k: plain(getattr(config, k)) for k in checkpoint_fields(type(config))}
  d.update(_class_name=class_name, _diffusers_version=version)
  return d


def self_attention_keymap(m: KeyMap, ours: tuple, hf: str, *, qkv_bias: bool):
  """`layers.Attention` (q, k, v, o) <- diffusers `Attention` (to_q, to_k, to_v, to_out.0 with bias)."""
  _attention(m, ours, hf, qkv_bias=qkv_bias, qk_norm=False)


def resnet_keymap(m: KeyMap, ours: tuple, hf: str, block: ResnetBlock2D):
  for name in ("norm1", "norm2"):
    norm_keymap(m, ours + (name,), f"{hf}.{name}")
  for name in ("conv1", "conv2", "conv_shortcut"):
    if getattr(block, name) is not None:
      conv_keymap(m, ours + (name,), f"{hf}.{name}", getattr(block, name))
  if block.time_emb_proj is not None:
    linear_keymap(m, ours + ("time_emb_proj",), f"{hf}.time_emb_proj", bias=True)
