"""diffusers `AutoencoderDC` (DC-AE, SANA's autoencoder): config conversion and tensor names.

A diffusers directory (`vae/` of a SANA pipeline, or `mit-han-lab/dc-ae-*-diffusers`) is recognised
by `"_class_name": "AutoencoderDC"`; weights live in `diffusion_pytorch_model.safetensors`.
"""
from __future__ import annotations

from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.flow import dcae
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.hf.sana_family import DIFFUSERS_VERSION, glumbconv_keymap
from jaxmodels.layers.execution import checkpoint_fields

CLASS_NAME = "AutoencoderDC"
CHECKPOINT_FIELDS = checkpoint_fields(dcae.DCAEConfig)   # config.json's keys (no execution settings)
_IGNORED_KEYS = ("dtype", "torch_dtype")   # plus every "_"-prefixed metadata key


def config_from_hf(d: dict, **overrides) -> dcae.DCAEConfig:
  """diffusers config.json dict -> DCAEConfig; absent keys take diffusers' defaults."""
  unknown = sorted(k for k in d if not k.startswith("_") and k not in CHECKPOINT_FIELDS
                   and k not in _IGNORED_KEYS)
  if unknown:
    raise ConfigError(f"config.json: {CLASS_NAME} option {unknown[0]!r} is not implemented by "
                      "jaxmodels.flow.dcae")
  norms = d.get("decoder_norm_types", "rms_norm")
  for norm in [norms] if isinstance(norms, str) else norms:
    if norm not in dcae.NORM_TYPES:
      raise ConfigError(f"config.json: decoder_norm_types contains {norm!r}, which is not supported "
                        f"(supported: {', '.join(dcae.NORM_TYPES)})")
  kw = {k: d[k] for k in CHECKPOINT_FIELDS if k in d}
  kw.update(overrides)
  return dcae.DCAEConfig(**kw)


def config_to_hf(c: dcae.DCAEConfig) -> dict:
  d = {}
  for k in CHECKPOINT_FIELDS:
    v = getattr(c, k)
    d[k] = [list(s) for s in v] if k.endswith("qkv_multiscales") else list(v) if isinstance(v, tuple) else v
  d.update(_class_name=CLASS_NAME, _diffusers_version=DIFFUSERS_VERSION)
  return d


def _conv(m: KeyMap, ours: tuple, hf: str, conv: "dcae.Conv2d"):
  m[ours + ("kernel",)] = Source(f"{hf}.weight", "conv")
  if conv.bias is not None:
    m[ours + ("bias",)] = Source(f"{hf}.bias", "bias")


def _norm(m: KeyMap, ours: tuple, hf: str):
  m[ours + ("scale",)] = Source(f"{hf}.weight")
  m[ours + ("bias",)] = Source(f"{hf}.bias", "bias")


def _layer(m: KeyMap, ours: tuple, hf: str, layer: nnx.Module):
  if isinstance(layer, dcae.Conv2d):
    _conv(m, ours, hf, layer)
  elif isinstance(layer, (dcae.DownBlock, dcae.UpBlock)):
    _conv(m, ours + ("conv",), f"{hf}.conv", layer.conv)
  elif isinstance(layer, dcae.ResBlock):
    _conv(m, ours + ("conv1",), f"{hf}.conv1", layer.conv1)
    _conv(m, ours + ("conv2",), f"{hf}.conv2", layer.conv2)
    _norm(m, ours + ("norm",), f"{hf}.norm")
  elif isinstance(layer, dcae.EfficientViTBlock):
    attn = ours + ("attn",)
    for p in ("to_q", "to_k", "to_v", "to_out"):
      m[attn + (p, "kernel")] = Source(f"{hf}.attn.{p}.weight", "linear")
    for k, proj in enumerate(layer.attn.to_qkv_multiscale):
      for p in ("proj_in", "proj_out"):
        _conv(m, attn + ("to_qkv_multiscale", k, p), f"{hf}.attn.to_qkv_multiscale.{k}.{p}", getattr(proj, p))
    _norm(m, attn + ("norm_out",), f"{hf}.attn.norm_out")
    glumbconv_keymap(m, ours + ("conv_out",), f"{hf}.conv_out", layer.conv_out.hidden, norm=True)
  else:
    raise TypeError(f"no HF mapping for DC-AE layer {type(layer).__name__}")


def keymap(c: dcae.DCAEConfig) -> KeyMap:
  """Walks the (abstract) module tree, whose layout mirrors diffusers' module for module."""
  model = nnx.eval_shape(lambda: dcae.AutoencoderDC(c, rngs=nnx.Rngs(0)))
  m: KeyMap = {}
  for part, stages_name in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
    tower = getattr(model, part)
    _layer(m, (part, "conv_in"), f"{part}.conv_in", tower.conv_in)
    _layer(m, (part, "conv_out"), f"{part}.conv_out", tower.conv_out)
    for i, stage in enumerate(getattr(tower, stages_name)):
      for j, layer in enumerate(stage):
        _layer(m, (part, stages_name, i, j), f"{part}.{stages_name}.{i}.{j}", layer)
  _norm(m, ("decoder", "norm_out"), "decoder.norm_out")
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("dcae", (CLASS_NAME,), dcae.AutoencoderDC, config_from_hf, config_to_hf, keymap,
                weights_name="diffusion_pytorch_model.safetensors")


FAMILY = _family()
