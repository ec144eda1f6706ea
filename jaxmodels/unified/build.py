"""Build model configs from `config.model` (nested dicts / ConfigDicts, as config files write them).

    config.model = dict(
        llm=dict(preset="qwen2.5-7b", scan_layers=True),     # preset fields, then overrides
        und_encoder=dict(preset="qwen2.5-vl-7b-vision", image_size=448),   # or a ViT preset / None
        gen_encoder=dict(preset="eva-clip-e-14-plus"),
        vae=dict(preset="dc-ae-f32c32", dtype="bfloat16"),   # in-model DC-AE (gen_target="latents")
        dit=dict(type="lumina", preset="blip3o", ffn="4864"),
        num_queries=64, connector="identity", ...)
    unified = unified_config(config.model)                  # -> UnifiedConfig (frozen, hashable)

Encoders: a `preset` from `presets.VISION_PRESETS` (or no preset) gives a `VisionConfig`; a Qwen2.5-VL
preset (`presets.QWEN25_VL_VISION_PRESETS`) or `model_type="qwen2_5_vl_vision"` gives a
`Qwen25VisionConfig` (accepted for `und_encoder` only); an EVA-CLIP preset (`presets.EVA_CLIP_PRESETS`)
or `model_type="eva_clip_vision"` gives an `EvaClipConfig` (accepted for `gen_encoder` only). Unknown keys raise a ConfigError naming
`config.model.<path>.<key>`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxmodels import presets
from jaxmodels.errors import ConfigError
from jaxmodels.flow.dcae import DCAEConfig, dcae_f32c32_config
from jaxmodels.flow.lumina import LuminaConfig, blip3o_dit_config
from jaxmodels.flow.sana import SanaConfig, sana_1600m_config
from jaxmodels.layers.execution import apply_execution, check_execution
from jaxmodels.llm import LLMConfig
from jaxmodels.unified.config import ImageTokenizerConfig, UnifiedConfig
from jaxmodels.unified.latte_flow import LatteConfig
from jaxmodels.unified.patch_autoencoder import PatchAutoencoderConfig
from jaxmodels.unified.patch_tokens import PatchTokensConfig
from jaxmodels.vision.eva_clip import EvaClipConfig
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionConfig
from jaxmodels.vision.vit import VisionConfig

QWEN_VISION_TYPE = Qwen25VisionConfig.model_type   # "qwen2_5_vl_vision"


def _plain(d: Any) -> dict:
  if d is None:
    return None
  return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(d).items()}


def make_dataclass(cls, fields: Mapping[str, Any], where: str):
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(f"config.{where}.{unknown[0]}: unknown field for {cls.__name__} "
                      f"(known: {', '.join(sorted(known))})")
  try:
    return cls(**fields)
  except TypeError as e:
    raise ConfigError(f"config.{where}: {e}") from None


def llm_config(d: Mapping[str, Any], where: str = "model.llm") -> LLMConfig:
  d = _plain(d)
  preset = d.pop("preset", None)
  base = dataclasses.asdict(presets.llm_preset(preset)) if preset else {}
  return make_dataclass(LLMConfig, {**base, **d}, where)


def vision_config(d: Mapping[str, Any] | None, where: str, *, allow_qwen: bool = False,
                  allow_eva: bool = False) -> VisionConfig | Qwen25VisionConfig | EvaClipConfig | None:
  """An encoder dict -> `VisionConfig`, or (allow_qwen) a `Qwen25VisionConfig` for a Qwen2.5-VL
  preset / model_type="qwen2_5_vl_vision", or (allow_eva) an `EvaClipConfig` for an EVA-CLIP preset /
  model_type="eva_clip_vision"."""
  if d is None:
    return None
  d = _plain(d)
  preset = d.pop("preset", None)
  if preset in presets.EVA_CLIP_PRESETS or d.get("model_type") == EvaClipConfig.model_type:
    if not allow_eva:
      raise ConfigError(f"config.{where}: the EVA-CLIP tower is supported as config.model.gen_encoder only")
    base = dataclasses.asdict(presets.eva_clip_preset(preset)) if preset else {}
    return make_dataclass(EvaClipConfig, {**base, **d}, where)
  qwen = preset in presets.QWEN25_VL_VISION_PRESETS or d.get("model_type") == QWEN_VISION_TYPE
  if qwen and not allow_qwen:
    raise ConfigError(f"config.{where}: the Qwen2.5-VL vision tower is supported as config.model.und_encoder "
                      f"only")
  if qwen:
    if preset is not None and preset not in presets.QWEN25_VL_VISION_PRESETS:
      raise ConfigError(f"config.{where}.preset={preset!r}: model_type={QWEN_VISION_TYPE!r} needs a "
                        f"Qwen2.5-VL preset ({', '.join(sorted(presets.QWEN25_VL_VISION_PRESETS))})")
    base = dataclasses.asdict(presets.qwen2_5_vl_vision_preset(preset)) if preset else {}
    return make_dataclass(Qwen25VisionConfig, {**base, **d}, where)
  base = dataclasses.asdict(presets.vision_preset(preset)) if preset else {}
  return make_dataclass(VisionConfig, {**base, **d}, where)


def dit_config(d: Mapping[str, Any], where: str = "model.dit") -> LuminaConfig | SanaConfig | LatteConfig:
  """dit.type: "lumina" (preset "blip3o"), "sana" (preset "sana-1600m") or "latte"."""
  d = _plain(d)
  kind = d.pop("type", "lumina")
  if kind not in ("lumina", "sana", "latte"):
    raise ConfigError(f"config.{where}.type={kind!r}: expected 'lumina', 'sana' or 'latte'")
  preset = d.pop("preset", None)
  if kind == "sana":
    if preset not in (None, "sana-1600m"):
      raise ConfigError(f"config.{where}.preset={preset!r}: known SANA presets: sana-1600m")
    base = dataclasses.asdict(sana_1600m_config()) if preset else {}
    return make_dataclass(SanaConfig, {**base, **d}, where)
  if kind == "latte":
    if preset is not None:
      raise ConfigError(f"config.{where}.preset={preset!r}: LaTtE has no presets")
    return make_dataclass(LatteConfig, d, where)
  if preset == "blip3o":
    return blip3o_dit_config(d.pop("ffn", "4864"), **d)
  if preset is not None:
    raise ConfigError(f"config.{where}.preset={preset!r}: known presets: blip3o")
  return make_dataclass(LuminaConfig, d, where)


VAE_PRESETS = {"dc-ae-f32c32": dcae_f32c32_config}   # SANA's DC-AE (1.0 and 1.1 share the layout)


def vae_config(d: Mapping[str, Any] | None, where: str = "model.vae") -> DCAEConfig | None:
  """vae dict -> DCAEConfig: `preset` "dc-ae-f32c32" then overrides, or DCAEConfig fields alone."""
  if d is None:
    return None
  d = _plain(d)
  preset = d.pop("preset", None)
  if preset is not None and preset not in VAE_PRESETS:
    raise ConfigError(f"config.{where}.preset={preset!r}: known presets: {', '.join(VAE_PRESETS)}")
  base = dataclasses.asdict(VAE_PRESETS[preset]()) if preset else {}
  return make_dataclass(DCAEConfig, {**base, **d}, where)


# The parts of a unified model whose configs take `config.model.execution` (layers/execution.py).
EXECUTION_PARTS = ("llm", "dit", "und_encoder", "gen_encoder", "vae", "autoencoder", "patch_tokens")


def unified_config(model: Mapping[str, Any]) -> UnifiedConfig:
  """config.model -> UnifiedConfig: each tower from its dict (preset + overrides); an `execution`
  block (remat, scan_layers, attention_impl, dtype, param_dtype): each setting that is set applies to
  every tower that has it, over the towers' own values (one switch for the whole model)."""
  d = _plain(model)
  d.pop("type", None)
  execution = check_execution(d.pop("execution", None))
  tokens = d.get("gen_target") == "patch_tokens"
  if "llm" not in d or ("dit" not in d and not tokens):
    raise ConfigError("config.model needs at least 'llm' and 'dit' (no 'dit' for gen_target='patch_tokens')")
  d["llm"] = llm_config(d["llm"])
  d["dit"] = dit_config(d["dit"]) if d.get("dit") is not None else None
  d["und_encoder"] = vision_config(d.get("und_encoder"), "model.und_encoder", allow_qwen=True)
  d["gen_encoder"] = vision_config(d.get("gen_encoder"), "model.gen_encoder", allow_eva=True)
  d["vae"] = vae_config(d.get("vae"))
  tok = d.get("image_tokenizer")
  if tok is not None:
    tok = dict(tok)
    tok["encoder"] = vision_config(tok.get("encoder"), "model.image_tokenizer.encoder")
    d["image_tokenizer"] = make_dataclass(ImageTokenizerConfig, tok, "model.image_tokenizer")
  ae = d.get("autoencoder")
  if ae is not None:
    ae = dict(ae)
    if ae.get("palette") is not None:
      ae["palette"] = tuple(tuple(int(v) for v in rgb) for rgb in ae["palette"])
    d["autoencoder"] = make_dataclass(PatchAutoencoderConfig, ae, "model.autoencoder")
  pt = d.get("patch_tokens")
  if pt is not None:
    pt = dict(pt)
    pt["palette"] = tuple(tuple(int(v) for v in rgb) for rgb in pt.get("palette") or ())
    d["patch_tokens"] = make_dataclass(PatchTokensConfig, pt, "model.patch_tokens")
  for part in EXECUTION_PARTS:
    if execution and d.get(part) is not None:
      d[part] = apply_execution(d[part], execution)
  tok = d.get("image_tokenizer")
  if execution and tok is not None and tok.encoder is not None:
    d["image_tokenizer"] = dataclasses.replace(tok, encoder=apply_execution(tok.encoder, execution))
  for key in ("edit_drop", "und_dense_classes"):     # lists from config files -> hashable tuples
    if isinstance(d.get(key), list):
      d[key] = tuple(d[key])
  return make_dataclass(UnifiedConfig, d, "model")
