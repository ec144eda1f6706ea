"""HF vision towers (`siglip_vision_model`, `clip_vision_model`, `siglip2_vision_model`, and the vision
part of `siglip` / `clip` / `siglip2` checkpoints; SigLIP2 fixed-resolution releases are `siglip`
checkpoints, NaFlex releases are `siglip2` ones): config conversion and names."""
from __future__ import annotations

import math

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.vision.vit import VisionConfig, VisionTransformer

MODEL_TYPES = ("siglip_vision_model", "siglip", "clip_vision_model", "clip", "siglip2_vision_model",
               "siglip2")
_DEFAULTS = {  # HF defaults of the vision config classes, for keys a config.json may omit
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=224, patch_size=16, num_channels=3, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6, vision_use_head=True),
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 image_size=224, patch_size=32, num_channels=3, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, projection_dim=512),
    "siglip2": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    patch_size=16, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6,
                    vision_use_head=True, num_patches=256),
}


def _kind(model_type: str) -> str:
  if model_type.startswith("clip"):
    return "clip"
  return "siglip2" if model_type.startswith("siglip2") else "siglip"


def _siglip2_patch_size(v) -> int:
  p = v["patch_size"]
  if isinstance(p, (list, tuple)):
    if len(set(p)) != 1:
      raise CheckpointFormatError(f"siglip2 vision config: non-square patch_size {list(p)} is not supported")
    p = p[0]
  return int(p)


def config_from_hf(d: dict, **overrides) -> VisionConfig:
  kind = _kind(d["model_type"])
  if d["model_type"] in ("siglip", "clip", "siglip2"):
    d = dict(d.get("vision_config") or {})
  v = {**_DEFAULTS[kind], **d}
  naflex = {}
  if kind == "siglip2":
    # NaFlex: no fixed image size; image_size records the native one (the position table's grid).
    patch = _siglip2_patch_size(v)
    naflex = dict(patch_size=patch, image_size=patch * math.isqrt(int(v["num_patches"])),
                  patch_embed="linear", num_patches=int(v["num_patches"]))
  kw = dict(model_type=f"{kind}_vision_model", hidden_size=v["hidden_size"],
            intermediate_size=v["intermediate_size"], num_layers=v["num_hidden_layers"],
            num_heads=v["num_attention_heads"], image_size=v.get("image_size"), patch_size=v["patch_size"],
            num_channels=v["num_channels"], hidden_act=v["hidden_act"], layer_norm_eps=v["layer_norm_eps"],
            use_head=bool(v.get("vision_use_head", True)) and kind != "clip",
            projection_dim=v.get("projection_dim") if kind == "clip" else None)
  kw.update(naflex)
  kw.update(overrides)
  return VisionConfig(**kw)


def config_to_hf(c: VisionConfig) -> dict:
  d = dict(model_type=c.model_type, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
           num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, image_size=c.image_size,
           patch_size=c.patch_size, num_channels=c.num_channels, hidden_act=c.hidden_act,
           layer_norm_eps=c.layer_norm_eps, dtype=c.param_dtype)
  if c.naflex:
    if c.patch_embed != "linear":
      raise CheckpointFormatError("save_pretrained: a NaFlex (num_patches) tower exports as siglip2, "
                                  "which stores a linear patch embedding (patch_embed='linear')")
    del d["image_size"]
    d.update(model_type="siglip2_vision_model", architectures=["Siglip2VisionModel"],
             vision_use_head=c.use_head, num_patches=c.num_patches)
  elif c.patch_embed != "conv":
    raise CheckpointFormatError(f"save_pretrained: {c.model_type} checkpoints store a conv patch embedding "
                                f"(patch_embed='conv'), not {c.patch_embed!r}")
  elif c.is_clip:
    d.update(architectures=["CLIPVisionModel"], projection_dim=c.projection_dim or 512)
  else:
    d.update(architectures=["SiglipVisionModel"], vision_use_head=c.use_head)
  return d


def _attention(m: KeyMap, ours: tuple, hf: str, names=("q_proj", "k_proj", "v_proj", "out_proj")):
  for p, name in zip(("q", "k", "v"), names):
    m[ours + (p, "kernel")] = Source(f"{hf}{name}.weight", "linear")
    m[ours + (p, "bias")] = Source(f"{hf}{name}.bias", "bias")
  m[ours + ("o", "kernel")] = Source(f"{hf}{names[3]}.weight", "linear", n_in=2)
  m[ours + ("o", "bias")] = Source(f"{hf}{names[3]}.bias", "bias")


def _layer_norm(m: KeyMap, ours: tuple, hf: str):
  m[ours + ("scale",)] = Source(hf + ".weight")
  m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def _mlp(m: KeyMap, ours: tuple, hf: str):
  for p in ("fc1", "fc2"):
    m[ours + (p, "kernel")] = Source(f"{hf}{p}.weight", "linear")
    m[ours + (p, "bias")] = Source(f"{hf}{p}.bias", "bias")


def keymap(c: VisionConfig) -> KeyMap:
  if c.stem != "patch":
    raise CheckpointFormatError(f"HF vision checkpoints hold a patchify embedding; this tower has "
                                f"stem={c.stem!r} (no HF counterpart)")
  pre = "vision_model."
  m: KeyMap = {
      ("patch_embed", "kernel"): (Source(pre + "embeddings.patch_embedding.weight", "linear", n_in=3)
                                  if c.patch_embed == "linear" else
                                  Source(pre + "embeddings.patch_embedding.weight", "conv")),
      ("position_embedding",): Source(pre + "embeddings.position_embedding.weight"),
  }
  _layer_norm(m, ("post_norm",), pre + "post_layernorm")
  if c.is_clip:
    m[("class_embedding",)] = Source(pre + "embeddings.class_embedding")
    _layer_norm(m, ("pre_norm",), pre + "pre_layrnorm")
  else:
    m[("patch_embed", "bias")] = Source(pre + "embeddings.patch_embedding.bias", "bias")
  for i in range(c.num_layers):
    ours, hf = ("layers", "blocks", i), f"{pre}encoder.layers.{i}."
    _layer_norm(m, ours + ("attn_norm",), hf + "layer_norm1")
    _layer_norm(m, ours + ("mlp_norm",), hf + "layer_norm2")
    _attention(m, ours + ("attn",), hf + "self_attn.")
    _mlp(m, ours + ("mlp",), hf + "mlp.")
  if c.use_head and not c.is_clip:
    head, d = pre + "head.", c.hidden_size
    m[("head", "probe")] = Source(head + "probe")
    for j, p in enumerate(("q", "k", "v")):
      m[("head", "attn", p, "kernel")] = Source(head + "attention.in_proj_weight", "linear",
                                                 rows=(j * d, (j + 1) * d))
      m[("head", "attn", p, "bias")] = Source(head + "attention.in_proj_bias", "bias",
                                               rows=(j * d, (j + 1) * d))
    m[("head", "attn", "o", "kernel")] = Source(head + "attention.out_proj.weight", "linear", n_in=2)
    m[("head", "attn", "o", "bias")] = Source(head + "attention.out_proj.bias", "bias")
    _layer_norm(m, ("head", "norm"), head + "layernorm")
    _mlp(m, ("head", "mlp"), head + "mlp.")
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("vision", MODEL_TYPES, VisionTransformer, config_from_hf, config_to_hf, keymap,
                key_aliases=(("vision_model.", ""),))


FAMILY = _family()
