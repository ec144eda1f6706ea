"""HF Qwen2.5-VL vision towers: `qwen2_5_vl_vision` (a saved `Qwen2_5_VisionTransformerPretrainedModel`)
and the `visual.` tower of a full `qwen2_5_vl` checkpoint (`Qwen2_5_VLForConditionalGeneration`, e.g.
Qwen/Qwen2.5-VL-7B-Instruct): `from_pretrained` on either gives a `Qwen25VisionTransformer` (the
language model of a full checkpoint is not loaded). Config conversion and tensor names.

HF layout (per block i): `blocks.i.norm1 / norm2` (RMSNorm), `blocks.i.attn.qkv` (fused [3·D, D]:
q, k, v rows, each heads-major) and `blocks.i.attn.proj`, `blocks.i.mlp.{gate,up,down}_proj` (with
biases); `patch_embed.proj.weight` (Conv3d [D, C, T, p, p], no bias); `merger.ln_q`,
`merger.mlp.0` / `merger.mlp.2` (Linear, GELU between).
"""
from __future__ import annotations

from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionConfig, Qwen25VisionTransformer

MODEL_TYPES = ("qwen2_5_vl_vision", "qwen2_5_vl")
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


def _family():
  from jaxmodels.hf import Family
  # Full checkpoints store the tower under `visual.` (hub files, transformers 5 save_pretrained);
  # `model.visual.` covers a Qwen2_5_VLModel saved without its LM head.
  return Family("qwen2_5_vl_vision", MODEL_TYPES, Qwen25VisionTransformer, config_from_hf, config_to_hf,
                keymap, key_aliases=(("", "visual."), ("", "model.visual.")))


FAMILY = _family()
