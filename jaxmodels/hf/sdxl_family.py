"""diffusers `UNet2DConditionModel` (SD / SDXL): config conversion and tensor names, plus the
helpers the KL autoencoder's family (sdxl_vae_family.py) shares.

A diffusers directory (`unet/` of an SDXL pipeline) is recognised by
`"_class_name": "UNet2DConditionModel"`; weights live in `diffusion_pytorch_model.safetensors`. The
modules of jaxmodels/sdxl/ mirror diffusers' attribute names, so each block maps in a few lines;
a scanned Transformer2DModel (scan_layers=True) is stacked by keymap.load_into.
"""
from __future__ import annotations

from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.hf.dcae_family import _conv as conv_keymap, _norm as norm_keymap
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.hf.sana_family import DIFFUSERS_VERSION, _attention, _linear as linear_keymap
from jaxmodels.layers.conv import Conv2d
from jaxmodels.layers.execution import checkpoint_fields
from jaxmodels.sdxl import unet
from jaxmodels.sdxl.blocks import ResnetBlock2D
from jaxmodels.sdxl.transformer_2d import Transformer2DModel

__all__ = ["checkpoint_fields", "config_dict", "config_from_dict", "conv_keymap", "linear_keymap",
           "norm_keymap", "resnet_keymap", "self_attention_keymap", "transformer_keymap"]

_IGNORED_KEYS = ("dtype", "torch_dtype")   # plus every "_"-prefixed metadata key


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


# ----------------------------------------------------------------------------------------------
# UNet2DConditionModel.
# ----------------------------------------------------------------------------------------------

CLASS_NAME = "UNet2DConditionModel"


def config_from_hf(d: dict, **overrides) -> unet.UNetConfig:
  """diffusers config.json dict -> UNetConfig; absent keys take diffusers' defaults."""
  return config_from_dict(d, unet.UNetConfig, CLASS_NAME, "jaxmodels.sdxl.unet", overrides)


def config_to_hf(c: unet.UNetConfig) -> dict:
  return config_dict(c, CLASS_NAME, DIFFUSERS_VERSION)


def _projection(m: KeyMap, ours: tuple, hf: str, layer):
  if isinstance(layer, Conv2d):
    conv_keymap(m, ours, hf, layer)
  else:
    linear_keymap(m, ours, hf, bias=True)


def transformer_keymap(m: KeyMap, ours: tuple, hf: str, model: Transformer2DModel):
  """`Transformer2DModel`; its blocks in the loop layout ("transformer_blocks", "blocks", k)."""
  norm_keymap(m, ours + ("norm",), f"{hf}.norm")
  _projection(m, ours + ("proj_in",), f"{hf}.proj_in", model.proj_in)
  _projection(m, ours + ("proj_out",), f"{hf}.proj_out", model.proj_out)
  stack = model.transformer_blocks
  hidden = model.proj_out.kernel.shape[-2] * 4
  for k in range(stack.num_layers):
    o, h = ours + ("transformer_blocks", "blocks", k), f"{hf}.transformer_blocks.{k}"
    for name in ("norm1", "norm2", "norm3"):
      norm_keymap(m, o + (name,), f"{h}.{name}")
    for name in ("attn1", "attn2"):
      self_attention_keymap(m, o + (name,), f"{h}.{name}", qkv_bias=False)
    # GEGLU: diffusers' fused proj holds (value | gate) by rows; GatedMLP's up is the value half.
    for half, rows in (("up", (0, hidden)), ("gate", (hidden, 2 * hidden))):
      m[o + ("ff", half, "kernel")] = Source(f"{h}.ff.net.0.proj.weight", "linear", rows=rows)
      m[o + ("ff", half, "bias")] = Source(f"{h}.ff.net.0.proj.bias", "bias", rows=rows)
    linear_keymap(m, o + ("ff", "down"), f"{h}.ff.net.2", bias=True)


def _level(m: KeyMap, ours: tuple, hf: str, block):
  for j, resnet in enumerate(block.resnets):
    resnet_keymap(m, ours + ("resnets", j), f"{hf}.resnets.{j}", resnet)
  for j, attn in enumerate(block.attentions):
    transformer_keymap(m, ours + ("attentions", j), f"{hf}.attentions.{j}", attn)
  for name in ("downsampler", "upsampler"):
    sampler = getattr(block, name, None)
    if sampler is not None:
      conv_keymap(m, ours + (name, "conv"), f"{hf}.{name}s.0.conv", sampler.conv)


def keymap(c: unet.UNetConfig) -> KeyMap:
  """Walks the (abstract) module tree, whose layout mirrors diffusers' module for module."""
  model = nnx.eval_shape(lambda: unet.UNet2DConditionModel(c, rngs=nnx.Rngs(0)))
  m: KeyMap = {}
  for name in ("conv_in", "conv_out"):
    conv_keymap(m, (name,), name, getattr(model, name))
  norm_keymap(m, ("conv_norm_out",), "conv_norm_out")
  for name in ("time_embedding", "add_embedding"):
    if getattr(model, name) is not None:
      for i in (1, 2):
        linear_keymap(m, (name, f"linear_{i}"), f"{name}.linear_{i}", bias=True)
  for part in ("down_blocks", "up_blocks"):
    for i, block in enumerate(getattr(model, part)):
      _level(m, (part, i), f"{part}.{i}", block)
  if model.mid_block is not None:
    _level(m, ("mid_block",), "mid_block", model.mid_block)
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("sdxl_unet", (CLASS_NAME,), unet.UNet2DConditionModel, config_from_hf, config_to_hf,
                keymap, weights_name="diffusion_pytorch_model.safetensors")


FAMILY = _family()
