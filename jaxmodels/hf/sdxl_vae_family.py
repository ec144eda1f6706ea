"""diffusers `AutoencoderKL` (the SD / SDXL VAE): config conversion and tensor names.

A diffusers directory (`vae/` of an SDXL pipeline, or `madebyollin/sdxl-vae-fp16-fix`) is recognised
by `"_class_name": "AutoencoderKL"`; weights live in `diffusion_pytorch_model.safetensors`. Only the
current attention names (`to_q`, `to_k`, `to_v`, `to_out.0`) are read: checkpoints from before
diffusers 0.14 (`query`, `key`, `value`, `proj_attn`) fail with the missing tensor named.
"""
from __future__ import annotations

from flax import nnx

from jaxmodels.hf.keymap import KeyMap
from jaxmodels.hf.sana_family import DIFFUSERS_VERSION
from jaxmodels.hf.sdxl_family import config_dict, config_from_dict, conv_keymap, norm_keymap, \
    resnet_keymap, self_attention_keymap
from jaxmodels.sdxl import vae

CLASS_NAME = "AutoencoderKL"


def config_from_hf(d: dict, **overrides) -> vae.AutoencoderKLConfig:
  """diffusers config.json dict -> AutoencoderKLConfig; absent keys take diffusers' defaults."""
  return config_from_dict(d, vae.AutoencoderKLConfig, CLASS_NAME, "jaxmodels.sdxl.vae", overrides)


def config_to_hf(c: vae.AutoencoderKLConfig) -> dict:
  return config_dict(c, CLASS_NAME, DIFFUSERS_VERSION)


def _stage(m: KeyMap, ours: tuple, hf: str, stage: "vae.Stage"):
  for j, resnet in enumerate(stage.resnets):
    resnet_keymap(m, ours + ("resnets", j), f"{hf}.resnets.{j}", resnet)
  if stage.sampler is not None:
    name = "downsamplers" if stage.down else "upsamplers"
    conv_keymap(m, ours + ("sampler", "conv"), f"{hf}.{name}.0.conv", stage.sampler.conv)


def _mid(m: KeyMap, ours: tuple, hf: str, mid: "vae.MidBlock"):
  for j, resnet in enumerate(mid.resnets):
    resnet_keymap(m, ours + ("resnets", j), f"{hf}.resnets.{j}", resnet)
  for j, _ in enumerate(mid.attentions):
    norm_keymap(m, ours + ("attentions", j, "group_norm"), f"{hf}.attentions.{j}.group_norm")
    self_attention_keymap(m, ours + ("attentions", j, "attn"), f"{hf}.attentions.{j}", qkv_bias=True)


def keymap(c: vae.AutoencoderKLConfig) -> KeyMap:
  """Walks the (abstract) module tree, whose layout mirrors diffusers' module for module."""
  model = nnx.eval_shape(lambda: vae.AutoencoderKL(c, rngs=nnx.Rngs(0)))
  m: KeyMap = {}
  for part, stages in (("encoder", "down_blocks"), ("decoder", "up_blocks")):
    tower = getattr(model, part)
    conv_keymap(m, (part, "conv_in"), f"{part}.conv_in", tower.conv_in)
    conv_keymap(m, (part, "conv_out"), f"{part}.conv_out", tower.conv_out)
    norm_keymap(m, (part, "conv_norm_out"), f"{part}.conv_norm_out")
    _mid(m, (part, "mid_block"), f"{part}.mid_block", tower.mid_block)
    for i, stage in enumerate(getattr(tower, stages)):
      _stage(m, (part, stages, i), f"{part}.{stages}.{i}", stage)
  for name in ("quant_conv", "post_quant_conv"):
    if getattr(model, name) is not None:
      conv_keymap(m, (name,), name, getattr(model, name))
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("sdxl_vae", (CLASS_NAME,), vae.AutoencoderKL, config_from_hf, config_to_hf, keymap,
                weights_name="diffusion_pytorch_model.safetensors")


FAMILY = _family()
