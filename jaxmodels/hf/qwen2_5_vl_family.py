"""HF Qwen2.5-VL checkpoints: config conversion and tensor names for three families.

  qwen2_5_vl         a full `Qwen2_5_VLForConditionalGeneration` directory (e.g.
                     Qwen/Qwen2.5-VL-7B-Instruct) -> `Qwen25VLModel` (the default for model_type
                     "qwen2_5_vl"); save_pretrained writes what transformers 5 writes
  qwen2_5_vl_vision  a saved `Qwen2_5_VisionTransformerPretrainedModel`, or the `visual.` tower of a
                     full checkpoint with `from_pretrained(path, module=Qwen25VisionTransformer)`
                     -> `Qwen25VisionTransformer`
  qwen2_5_vl_text    the language model of a full checkpoint, `from_pretrained(path, module=LLM)`
                     -> `LLM` with M-RoPE (no vision tower read)

config.json: transformers 5 nests `text_config` (model_type qwen2_5_vl_text; `rope_parameters` with
`mrope_section`) and `vision_config`, `tie_word_embeddings` and the special token ids at the top; the
released files are flat (text keys at the top level, `rope_scaling: {type: mrope, mrope_section}`,
a `vision_config` with `in_chans`). Both are read.

Tensor names: transformers 5 saves (and the released files hold) `model.embed_tokens`,
`model.layers.i.*`, `model.norm`, `lm_head` and `visual.*`; its in-memory names `model.language_model.*`
and `model.visual.*` (which some conversions save) are accepted on import too. The vision tower
(per block i): `blocks.i.norm1 / norm2` (RMSNorm), `blocks.i.attn.qkv` (fused [3·D, D]: q, k, v rows,
each heads-major) and `blocks.i.attn.proj`, `blocks.i.mlp.{gate,up,down}_proj` (with biases);
`patch_embed.proj.weight` (Conv3d [D, C, T, p, p], no bias); `merger.ln_q`, `merger.mlp.0` /
`merger.mlp.2` (Linear, GELU between). The language model is Qwen2's (`jaxmodels.hf.llm_family`).
"""
from __future__ import annotations

import dataclasses

from jaxmodels.errors import ConfigError
from jaxmodels.hf import llm_family
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.llm import LLM, LLMConfig
from jaxmodels.qwen2_5_vl_model import Qwen25VLConfig, Qwen25VLModel
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionConfig, Qwen25VisionTransformer

MODEL_TYPES = ("qwen2_5_vl_vision", "qwen2_5_vl")
FULL_MODEL_TYPES = ("qwen2_5_vl",)
TEXT_MODEL_TYPE = "qwen2_5_vl_text"
# transformers' Qwen2_5_VLRotaryEmbedding uses this when rope parameters carry no mrope_section.
DEFAULT_MROPE_SECTION = (16, 24, 24)
# Qwen2_5_VLConfig's defaults for the special token ids.
_TOKEN_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                  vision_end_token_id=151653)
# Defaults of transformers' Qwen2_5_VLVisionConfig (v5.24) for keys a config.json may omit. Note HF's
# default hidden_size is 3584, while every released checkpoint sets 1280 explicitly.
_DEFAULTS = dict(depth=32, hidden_size=3584, hidden_act="silu", intermediate_size=3420, num_heads=16,
                 in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                 tokens_per_second=4, window_size=112, out_hidden_size=3584,
                 fullatt_block_indexes=(7, 15, 23, 31))


def config_from_hf(d: dict, **overrides) -> Qwen25VisionConfig:
  if d.get("model_type") == "qwen2_5_vl":
    d = dict(d.get("vision_config") or {})
  v = {**_DEFAULTS, **d}
  if "in_channels" not in d and "in_chans" in d:        # the released config.json files say in_chans
    v["in_channels"] = d["in_chans"]
  rope = v.get("rope_parameters") or {}
  kw = dict(depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
            num_heads=v["num_heads"], in_channels=v["in_channels"], patch_size=v["patch_size"],
            temporal_patch_size=v["temporal_patch_size"], spatial_merge_size=v["spatial_merge_size"],
            window_size=v["window_size"], fullatt_block_indexes=tuple(v["fullatt_block_indexes"]),
            out_hidden_size=v["out_hidden_size"], hidden_act=v["hidden_act"],
            rope_theta=float(rope.get("rope_theta", 10000.0)), tokens_per_second=v["tokens_per_second"])
  kw.update(overrides)
  return Qwen25VisionConfig(**kw)


def config_to_hf(c: Qwen25VisionConfig) -> dict:
  return dict(model_type="qwen2_5_vl_vision", architectures=["Qwen2_5_VisionTransformerPretrainedModel"],
              depth=c.depth, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
              num_heads=c.num_heads, in_channels=c.in_channels, patch_size=c.patch_size,
              temporal_patch_size=c.temporal_patch_size, spatial_merge_size=c.spatial_merge_size,
              window_size=c.window_size, fullatt_block_indexes=list(c.fullatt_block_indexes),
              out_hidden_size=c.out_hidden_size, hidden_act=c.hidden_act,
              tokens_per_second=c.tokens_per_second,
              rope_parameters={"rope_type": "axial", "rope_theta": c.rope_theta}, dtype=c.param_dtype)


def _linear(m: KeyMap, ours: tuple, hf: str, n_in: int = 1):
  m[ours + ("kernel",)] = Source(hf + ".weight", "linear", n_in=n_in)
  m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def keymap(c: Qwen25VisionConfig) -> KeyMap:
  d = c.hidden_size
  m: KeyMap = {
      ("patch_embed", "kernel"): Source("patch_embed.proj.weight"),      # same [D, C, T, p, p] layout
      ("merger", "norm", "scale"): Source("merger.ln_q.weight"),
  }
  _linear(m, ("merger", "mlp", "fc1"), "merger.mlp.0")
  _linear(m, ("merger", "mlp", "fc2"), "merger.mlp.2")
  # Loop layout: blocks at ("blocks", i); scanned: a BlockStack at "blocks", so ("blocks", "blocks", i)
  # in its loop layout (keymap.load_into / export stack and unstack the [depth, ...] parameters).
  stack = ("blocks", "blocks") if c.scan_layers else ("blocks",)
  for i in range(c.depth):
    ours, hf = stack + (i,), f"blocks.{i}."
    m[ours + ("attn_norm", "scale")] = Source(hf + "norm1.weight")
    m[ours + ("mlp_norm", "scale")] = Source(hf + "norm2.weight")
    for j, p in enumerate(("q", "k", "v")):
      rows = (j * d, (j + 1) * d)
      m[ours + ("attn", p, "kernel")] = Source(hf + "attn.qkv.weight", "linear", rows=rows)
      m[ours + ("attn", p, "bias")] = Source(hf + "attn.qkv.bias", "bias", rows=rows)
    _linear(m, ours + ("attn", "o"), hf + "attn.proj", n_in=2)
    for ours_name, hf_name in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
      _linear(m, ours + ("mlp", ours_name), f"{hf}mlp.{hf_name}")
  return m


# ---------------------------------------------------------------------------------------------------
# The language model and the whole model


def _text_fields(d: dict) -> dict:
  """The language model's fields of a full config.json (nested `text_config`, or flat at the top)."""
  if isinstance(d.get("text_config"), dict):
    return dict(d["text_config"])
  return {k: v for k, v in d.items() if k != "vision_config"}


def mrope_section_of(d: dict) -> tuple[int, ...]:
  """The M-RoPE section of a full config.json (in rope_parameters or rope_scaling), else the default."""
  text, section = _text_fields(d), None
  for key in ("rope_parameters", "rope_scaling"):
    section = dict(text.get(key) or {}).get("mrope_section") or section
  return tuple(section or DEFAULT_MROPE_SECTION)


def text_config_from_hf(d: dict, **overrides) -> LLMConfig:
  """The language model's LLMConfig from a full config.json (nested `text_config` or flat)."""
  text = _text_fields(d)
  for key in ("rope_parameters", "rope_scaling"):
    rope = dict(text.get(key) or {})
    rope.pop("mrope_section", None)
    for name in ("rope_type", "type"):
      if rope.get(name) == "mrope":       # the released files' name for M-RoPE over default frequencies
        rope[name] = "default"
    text[key] = rope or None
  text["model_type"] = "qwen2"
  text["tie_word_embeddings"] = bool(d.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
  if "rope_theta" not in (text["rope_parameters"] or {}):
    text.setdefault("rope_theta", 1e6)                   # Qwen2_5_VLTextConfig's default theta
  text.setdefault("rms_norm_eps", 1e-5)                  # and its other defaults
  text.setdefault("max_position_embeddings", 32768)
  text.pop("head_dim", None)                             # HF's attention uses hidden_size / heads
  return llm_family.config_from_hf(text, **{
      "model_type": TEXT_MODEL_TYPE, "mrope_section": mrope_section_of(d), **overrides})


def text_config_to_hf(c: LLMConfig) -> dict:
  """transformers 5's `text_config` of a Qwen2.5-VL language model."""
  if c.head_dim is not None and c.head_dim * c.num_heads != c.hidden_size:
    raise ConfigError(f"LLMConfig.head_dim={c.head_dim}: Qwen2.5-VL's language model has head_dim = "
                      f"hidden_size / num_heads = {c.hidden_size // c.num_heads}")
  d = llm_family.config_to_hf(c.replace(model_type="qwen2", mrope_section=None))
  for key in ("architectures", "head_dim"):
    d.pop(key)
  d["model_type"] = TEXT_MODEL_TYPE
  d["rope_parameters"]["mrope_section"] = list(c.mrope_section or DEFAULT_MROPE_SECTION)
  return d


def _split_overrides(overrides: dict) -> tuple[dict, dict]:
  """from_pretrained options -> (text, vision) config overrides: a field of both configs (dtype,
  scan_layers, remat, ...) goes to both; `text_config` / `vision_config` dicts set one tower's."""
  overrides = dict(overrides)
  text = dict(overrides.pop("text_config", None) or {})
  vision = dict(overrides.pop("vision_config", None) or {})
  vision_fields = {f.name for f in dataclasses.fields(Qwen25VisionConfig)}
  text_fields = {f.name for f in dataclasses.fields(LLMConfig)}
  for key, value in overrides.items():
    if key in vision_fields:
      vision.setdefault(key, value)
    if key in text_fields or key not in vision_fields:   # an unknown option fails in LLMConfig
      text.setdefault(key, value)
  return text, vision


def model_config_from_hf(d: dict, **overrides) -> Qwen25VLConfig:
  text, vision = _split_overrides(overrides)
  ids = {k: int(d.get(k, v)) for k, v in _TOKEN_IDS.items()}
  return Qwen25VLConfig(text=text_config_from_hf(d, **text), vision=config_from_hf(d, **vision), **ids)


def model_config_to_hf(c: Qwen25VLConfig) -> dict:
  vision = config_to_hf(c.vision)
  vision.pop("architectures")
  vision.pop("dtype")
  text = text_config_to_hf(c.text)
  return dict(model_type="qwen2_5_vl", architectures=["Qwen2_5_VLForConditionalGeneration"],
              text_config=text, vision_config=vision, tie_word_embeddings=c.text.tie_word_embeddings,
              image_token_id=c.image_token_id, video_token_id=c.video_token_id,
              vision_start_token_id=c.vision_start_token_id, vision_end_token_id=c.vision_end_token_id,
              dtype=text["dtype"])


def model_keymap(c: Qwen25VLConfig) -> KeyMap:
  """Our `visual` / `llm` parameters -> the names transformers 5 saves (`visual.*`, `model.*`,
  `lm_head.*`)."""
  m: KeyMap = {("visual",) + path: dataclasses.replace(src, key="visual." + src.key)
               for path, src in keymap(c.vision).items()}
  m.update({("llm",) + path: src for path, src in llm_family.keymap(c.text).items()})
  return m


# Import-only names of a full checkpoint: transformers' module paths (`model.language_model.*`,
# `model.visual.*`), tried when the saved name is absent.
_LM_ALIASES = (("model.", "model.language_model."),)
_FULL_ALIASES = (("visual.", "model.visual."),) + _LM_ALIASES


def _families():
  from jaxmodels.hf import Family
  model = Family("qwen2_5_vl", FULL_MODEL_TYPES, Qwen25VLModel, model_config_from_hf, model_config_to_hf,
                 model_keymap, key_aliases=_FULL_ALIASES)
  # Exporting an M-RoPE LLM on its own is refused by the llm family (model_type qwen2_5_vl_text).
  text = Family(TEXT_MODEL_TYPE, FULL_MODEL_TYPES, LLM, text_config_from_hf, llm_family.config_to_hf,
                llm_family.keymap, key_aliases=_LM_ALIASES)
  # Full checkpoints store the tower under `visual.` (hub files, transformers 5 save_pretrained);
  # `model.visual.` covers transformers' in-memory names.
  vision = Family("qwen2_5_vl_vision", MODEL_TYPES, Qwen25VisionTransformer, config_from_hf, config_to_hf,
                  keymap, key_aliases=(("", "visual."), ("", "model.visual.")))
  return model, text, vision


# The whole model first: the default family for model_type "qwen2_5_vl".
FAMILIES = _families()
