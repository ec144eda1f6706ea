"""HF Florence-2 (`florence2`, transformers' `Florence2ForConditionalGeneration`): config and names.

Fused qkv tensors of DaViT (`qkv.weight` [3C, C]) are read as row slices into separate q/k/v kernels;
the tied LM head (`lm_head.weight`) and the copies of the shared table under encoder/decoder
`embed_tokens` are not separate parameters here (only `model.language_model.shared.weight` is read).
The constant `visual_temporal_embed.pos_idx_to_embed` buffer is recomputed, not loaded.
"""
from __future__ import annotations

from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.vision.davit import DaViTConfig
from jaxmodels.vision.florence2 import Florence2, Florence2Config

MODEL_TYPES = ("florence2",)
_VISION_KEYS = ("in_channels", "depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm",
                "embed_dim", "num_heads", "num_groups", "window_size", "mlp_ratio", "qkv_bias")
_TEXT_KEYS = ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
              "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
              "activation_function", "scale_embedding", "pad_token_id", "bos_token_id", "eos_token_id",
              "decoder_start_token_id")
_EXEC = ("scan_layers", "remat", "attention_impl", "dtype", "param_dtype")


def config_from_hf(d: dict, **overrides) -> Florence2Config:
  v = dict(d.get("vision_config") or {})
  t = dict(d.get("text_config") or {})
  vision_defaults = DaViTConfig()
  vkw = {k: v[k] for k in _VISION_KEYS if k in v}
  if "activation_function" in v:
    vkw["activation"] = v["activation_function"]
  exec_kw = {k: overrides[k] for k in _EXEC if k in overrides}
  vision = vision_defaults.replace(**vkw, **exec_kw)
  kw = {k: t[k] for k in _TEXT_KEYS if k in t}
  kw.update(vision=vision, projection_dim=v.get("projection_dim", 1024),
            max_position_embeddings_2d=v.get("max_position_embeddings", 50),
            max_temporal_embeddings=v.get("max_temporal_embeddings", 100),
            image_token_id=d.get("image_token_id", 51289))
  kw.update(overrides)
  return Florence2Config(**kw)


def config_to_hf(c: Florence2Config) -> dict:
  v = c.vision
  vision = dict(model_type="florence_vision", in_channels=v.in_channels, depths=list(v.depths),
                patch_size=list(v.patch_size), patch_stride=list(v.patch_stride),
                patch_padding=list(v.patch_padding), patch_prenorm=list(v.patch_prenorm),
                embed_dim=list(v.embed_dim), num_heads=list(v.num_heads), num_groups=list(v.num_groups),
                window_size=v.window_size, mlp_ratio=v.mlp_ratio, qkv_bias=v.qkv_bias,
                activation_function=v.activation, projection_dim=c.projection_dim,
                max_position_embeddings=c.max_position_embeddings_2d,
                max_temporal_embeddings=c.max_temporal_embeddings)
  text = {k: getattr(c, k) for k in _TEXT_KEYS}
  text.update(model_type="bart", tie_word_embeddings=True)
  return dict(model_type="florence2", architectures=["Florence2ForConditionalGeneration"],
              vision_config=vision, text_config=text, image_token_id=c.image_token_id,
              is_encoder_decoder=True, tie_word_embeddings=True, dtype=c.param_dtype)


def _ln(m: KeyMap, ours: tuple, hf: str):
  m[ours + ("scale",)] = Source(hf + ".weight")
  m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def _lin(m: KeyMap, ours: tuple, hf: str, *, bias=True, n_in=1, rows=None):
  m[ours + ("kernel",)] = Source(hf + ".weight", "linear", n_in=n_in, rows=rows)
  if bias:
    m[ours + ("bias",)] = Source(hf + ".bias", "bias", rows=rows)


def _conv(m: KeyMap, ours: tuple, hf: str):
  m[ours + ("kernel",)] = Source(hf + ".weight", "conv")
  m[ours + ("bias",)] = Source(hf + ".bias", "bias")


def _bart_attention(m: KeyMap, ours: tuple, hf: str):
  for p, name in zip(("q", "k", "v"), ("q_proj", "k_proj", "v_proj")):
    _lin(m, ours + (p,), hf + name)
  _lin(m, ours + ("o",), hf + "out_proj", n_in=2)


def keymap(c: Florence2Config) -> KeyMap:
  m: KeyMap = {}
  vt, v = "model.vision_tower.", c.vision
  for s, dim in enumerate(v.embed_dim):
    _conv(m, ("vision_tower", "convs", s, "conv"), f"{vt}convs.{s}.conv")
    _ln(m, ("vision_tower", "convs", s, "norm"), f"{vt}convs.{s}.norm")
    for i in range(v.depths[s]):
      for sub, attn in (("spatial", "window_attn"), ("channel", "channel_attn")):
        ours = ("vision_tower", "stages", s, "blocks", i, sub)
        hf = f"{vt}blocks.{s}.{i}.{sub}_block."
        _conv(m, ours + ("conv1",), hf + "conv1")
        _conv(m, ours + ("conv2",), hf + "conv2")
        _ln(m, ours + ("norm1",), hf + "norm1")
        _ln(m, ours + ("norm2",), hf + "norm2")
        for j, p in enumerate(("q", "k", "v")):
          _lin(m, ours + ("attn", p), f"{hf}{attn}.qkv", bias=v.qkv_bias, rows=(j * dim, (j + 1) * dim))
        _lin(m, ours + ("attn", "o"), f"{hf}{attn}.proj", n_in=2)
        _lin(m, ours + ("mlp", "fc1"), hf + "ffn.fc1")
        _lin(m, ours + ("mlp", "fc2"), hf + "ffn.fc2")
  pj = "model.multi_modal_projector."
  m[("image_projection", "row_embeddings")] = Source(pj + "image_position_embed.row_embeddings.weight")
  m[("image_projection", "column_embeddings")] = Source(pj + "image_position_embed.column_embeddings.weight")
  _lin(m, ("image_projection", "projection"), pj + "image_projection", bias=False)
  _ln(m, ("image_projection", "norm"), pj + "image_proj_norm")
  lm = "model.language_model."
  m[("embed", "embedding")] = Source(lm + "shared.weight")
  for part, n in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers if c.decoder else 0)):
    if part == "decoder" and not c.decoder:
      continue
    m[(f"{part}_positions",)] = Source(f"{lm}{part}.embed_positions.weight")
    _ln(m, (f"{part}_embed_norm",), f"{lm}{part}.layernorm_embedding")
    for i in range(n):
      ours, hf = (part, "blocks", i), f"{lm}{part}.layers.{i}."
      _bart_attention(m, ours + ("attn",), hf + "self_attn.")
      _ln(m, ours + ("attn_norm",), hf + "self_attn_layer_norm")
      if part == "decoder":
        _bart_attention(m, ours + ("cross",), hf + "encoder_attn.")
        _ln(m, ours + ("cross_norm",), hf + "encoder_attn_layer_norm")
      _lin(m, ours + ("fc1",), hf + "fc1")
      _lin(m, ours + ("fc2",), hf + "fc2")
      _ln(m, ours + ("mlp_norm",), hf + "final_layer_norm")
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("florence2", MODEL_TYPES, Florence2, config_from_hf, config_to_hf, keymap,
                key_aliases=(("model.language_model.shared.", "model.language_model.encoder.embed_tokens."),))


FAMILY = _family()
