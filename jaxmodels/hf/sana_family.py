"""diffusers `SanaTransformer2DModel` (SANA 1.0, SANA 1.5, SANA-Sprint): config and tensor names.

A diffusers model directory (`transformer/` of a SANA pipeline) is recognised by
`"_class_name": "SanaTransformer2DModel"` in its config.json; weights live in
`diffusion_pytorch_model.safetensors`.
"""
from __future__ import annotations

from jaxmodels.errors import ConfigError
from jaxmodels.flow.sana import SUPPORTED_QK_NORMS, SanaConfig, SanaTransformer
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.layers.execution import checkpoint_fields

CLASS_NAME = "SanaTransformer2DModel"
DIFFUSERS_VERSION = "0.42.1"            # the diffusers release this mapping was checked against
CHECKPOINT_FIELDS = checkpoint_fields(SanaConfig)   # config.json's keys (no execution settings)
_IGNORED_KEYS = ("dtype", "torch_dtype")   # plus every "_"-prefixed metadata key


def config_from_hf(d: dict, **overrides) -> SanaConfig:
  """diffusers config.json dict -> SanaConfig; absent keys take diffusers' defaults."""
  unknown = sorted(k for k in d if not k.startswith("_") and k not in CHECKPOINT_FIELDS
                   and k not in _IGNORED_KEYS)
  if unknown:
    raise ConfigError(f"config.json: {CLASS_NAME} option {unknown[0]!r} is not implemented by "
                      "jaxmodels.flow.sana")
  if d.get("qk_norm") not in SUPPORTED_QK_NORMS:
    raise ConfigError(f"config.json: qk_norm={d['qk_norm']!r} is not supported "
                      f"(supported: {', '.join(map(repr, SUPPORTED_QK_NORMS))})")
  if d.get("dropout", 0.0):
    raise ConfigError(f"config.json: dropout={d['dropout']} is not supported (only 0.0)")
  if d.get("cross_attention_dim", 0) is None:
    raise ConfigError("config.json: cross_attention_dim=null (no cross-attention) is not supported")
  kw = {k: d[k] for k in CHECKPOINT_FIELDS if k in d}
  if kw.get("interpolation_scale") is not None:
    kw["interpolation_scale"] = float(kw["interpolation_scale"])
  kw.update(overrides)
  return SanaConfig(**kw)


def config_to_hf(c: SanaConfig) -> dict:
  d = {k: getattr(c, k) for k in CHECKPOINT_FIELDS}
  d.update(_class_name=CLASS_NAME, _diffusers_version=DIFFUSERS_VERSION)
  return d


def _linear(m: KeyMap, ours: tuple, hf: str, *, bias: bool, n_in: int = 1):
  m[ours + ("kernel",)] = Source(hf + ".weight", "linear", n_in=n_in)
  if bias:
    m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def glumbconv_keymap(m: KeyMap, ours: tuple, hf: str, hidden: int, *, norm: bool = False):
  """`GLUMBConv` (split value/gate halves) <- diffusers GLUMBConv (fused 2F-channel convs)."""
  for half, rows in (("value", (0, hidden)), ("gate", (hidden, 2 * hidden))):
    for part, name in (("inverted", "conv_inverted"), ("depth", "conv_depth")):
      m[ours + (f"{part}_{half}", "kernel")] = Source(f"{hf}.{name}.weight", "conv", rows=rows)
      m[ours + (f"{part}_{half}", "bias")] = Source(f"{hf}.{name}.bias", "bias", rows=rows)
  m[ours + ("point", "kernel")] = Source(f"{hf}.conv_point.weight", "conv")
  if norm:
    m[ours + ("norm", "scale")] = Source(f"{hf}.norm.weight")
    m[ours + ("norm", "bias")] = Source(f"{hf}.norm.bias", "bias")


def _attention(m: KeyMap, ours: tuple, hf: str, *, qkv_bias: bool, qk_norm: bool):
  for p in ("q", "k", "v"):
    _linear(m, ours + (p,), f"{hf}.to_{p}", bias=qkv_bias)
  _linear(m, ours + ("o",), f"{hf}.to_out.0", bias=True, n_in=2)
  if qk_norm:
    m[ours + ("q_norm", "scale")] = Source(f"{hf}.norm_q.weight", "bias")   # [N·H] <-> [N, H]
    m[ours + ("k_norm", "scale")] = Source(f"{hf}.norm_k.weight", "bias")


def keymap(c: SanaConfig) -> KeyMap:
  m: KeyMap = {
      ("patch_embed", "kernel"): Source("patch_embed.proj.weight", "conv"),
      ("patch_embed", "bias"): Source("patch_embed.proj.bias", "bias"),
      ("caption_norm", "scale"): Source("caption_norm.weight"),
      ("scale_shift_table",): Source("scale_shift_table"),
  }
  # AdaLayerNormSingle nests the timestep MLP under `emb`; Sprint's combined embedder does not.
  t_prefix = "time_embed." if c.guidance_embeds else "time_embed.emb."
  for i in (1, 2):
    _linear(m, ("time_embed", "timestep_embedder", f"linear_{i}"),
            f"{t_prefix}timestep_embedder.linear_{i}", bias=True)
    if c.guidance_embeds:
      _linear(m, ("time_embed", "guidance_embedder", f"linear_{i}"),
              f"time_embed.guidance_embedder.linear_{i}", bias=True)
    _linear(m, ("caption_projection", f"linear_{i}"), f"caption_projection.linear_{i}", bias=True)
  _linear(m, ("time_embed", "linear"), "time_embed.linear", bias=True)
  _linear(m, ("proj_out",), "proj_out", bias=True)
  qk_norm = c.qk_norm is not None
  # Loop layout: blocks at ("blocks", i); scanned: a BlockStack at "blocks", i.e. ("blocks", "blocks", i)
  # in its loop layout (keymap.load_into / export stack and unstack the [num_layers, ...] parameters).
  stack = ("blocks", "blocks") if c.scan_layers else ("blocks",)
  for i in range(c.num_layers):
    ours, hf = stack + (i,), f"transformer_blocks.{i}"
    m[ours + ("scale_shift_table",)] = Source(f"{hf}.scale_shift_table")
    _attention(m, ours + ("attn1",), f"{hf}.attn1", qkv_bias=c.attention_bias, qk_norm=qk_norm)
    _attention(m, ours + ("attn2",), f"{hf}.attn2", qkv_bias=True, qk_norm=qk_norm)
    if c.norm_elementwise_affine:
      m[ours + ("norm2", "scale")] = Source(f"{hf}.norm2.weight")
      m[ours + ("norm2", "bias")] = Source(f"{hf}.norm2.bias", "bias")
    glumbconv_keymap(m, ours + ("ff",), f"{hf}.ff", c.mlp_hidden)
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("sana", (CLASS_NAME,), SanaTransformer, config_from_hf, config_to_hf, keymap,
                weights_name="diffusion_pytorch_model.safetensors")


FAMILY = _family()
