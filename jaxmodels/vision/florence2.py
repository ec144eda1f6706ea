"""Florence-2 in Flax NNX: DaViT image encoder, image projection and the BART-style encoder-decoder.

    model = jaxmodels.hf.from_pretrained("/ckpts/Florence-2-large-ft")     # HF model_type "florence2"
    feats = model.image_features(pixels)           # [B, 768, 768, 3] -> [B, 1 + 576, 1024]
    enc = model.encode(ids, mask, pixels)           # [B, T, 1024]; ids hold image_token_id placeholders
    logits = model.decode(dec_ids, enc, mask)       # [B, T_dec, V]   (only when config.decoder=True)
    caption = model.greedy_caption(ids, mask, pixels, max_new_tokens=20)

Layout (as transformers' `Florence2ForConditionalGeneration`, model_type "florence2"):
  image_features  DaViT map [B, h, w, C] + learned 2-D position (channels = [column(w) ; row(h)]) + the
                  1-D sinusoidal "temporal" embedding of frame 0; flattened row-major to N = h·w tokens;
                  a global token (the mean over tokens) is put *first*, so [B, 1 + N, C]; then a bias-free
                  Linear C -> projection_dim and a LayerNorm.
  encode          the i-th `image_token_id` placeholder of each row of `input_ids` takes the i-th image
                  feature (HF's masked_scatter; the processor writes the 1 + N placeholders first, then the
                  prompt), + learned positions (offset 2), LayerNorm, then post-norm BART layers:
                  h = LN(x + attn(x)); y = LN(h + fc2(act(fc1(h)))). `attention_mask` masks keys only.
  decode          BART decoder (causal self-attn, cross-attn to the encoder, post-norm) and an LM head
                  tied to the shared token embedding.

Images are NHWC, normalised as the Florence-2 processor does (ImageNet mean/std). Dropout is not
modelled (inference / frozen-feature use).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.layers import (Attention, BlockStack, Embed, LayerNorm, Linear, get_activation,
                              make_attention_mask, param, splice_image_tokens)
from jaxmodels.vision.davit import DaViT, DaViTConfig


@dataclasses.dataclass(frozen=True)
class Florence2Config:
  """Florence-2 hyper-parameters (HF names: `text_config` fields of BART). Defaults: Florence-2-large."""
  vision: DaViTConfig = DaViTConfig()
  projection_dim: int = 1024
  max_position_embeddings_2d: int = 50        # vision_config.max_position_embeddings (row/col tables)
  max_temporal_embeddings: int = 100
  vocab_size: int = 51289
  d_model: int = 1024
  encoder_layers: int = 12
  decoder_layers: int = 12
  encoder_attention_heads: int = 16
  decoder_attention_heads: int = 16
  encoder_ffn_dim: int = 4096
  decoder_ffn_dim: int = 4096
  max_position_embeddings: int = 1024
  activation_function: str = "gelu"
  scale_embedding: bool = False
  layer_norm_eps: float = 1e-5
  image_token_id: int = 51289
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  decoder_start_token_id: int = 2
  decoder: bool = True                        # build the BART decoder + tied LM head
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if isinstance(self.vision, dict):
      object.__setattr__(self, "vision", DaViTConfig(**self.vision))
    if self.projection_dim != self.d_model:
      raise ConfigError(f"Florence2Config: projection_dim {self.projection_dim} must equal d_model "
                        f"{self.d_model} (image features are spliced into the encoder input)")

  def replace(self, **kw: Any) -> "Florence2Config":
    return dataclasses.replace(self, **kw)

  def num_image_tokens(self, image_size: int) -> int:
    """1 (global) + (image_size / 32)² image features per image."""
    return 1 + (image_size // self.vision.stride) ** 2


FLORENCE2_PRESETS = {
    # microsoft/Florence-2-large(-ft): DaViT dims 256..2048, BART-large-style 12+12 layers, d 1024.
    "florence2-large": dict(),
    # microsoft/Florence-2-base(-ft): DaViT dims 128..1024, 6+6 layers, d 768.
    "florence2-base": dict(vision=DaViTConfig(embed_dim=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32),
                                              num_groups=(4, 8, 16, 32)),
                           projection_dim=768, d_model=768, encoder_layers=6, decoder_layers=6,
                           encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                           decoder_ffn_dim=3072),
}


def florence2_preset(name: str, **overrides) -> Florence2Config:
  if name not in FLORENCE2_PRESETS:
    raise ConfigError(f"unknown Florence-2 preset {name!r}; known: {', '.join(sorted(FLORENCE2_PRESETS))}")
  d = dict(FLORENCE2_PRESETS[name])
  vision = overrides.pop("vision", None)
  base_vision = d.pop("vision", DaViTConfig())
  if isinstance(vision, dict):
    vision = base_vision.replace(**vision)
  d.update(overrides)
  return Florence2Config(vision=vision or base_vision, **d)


def sinusoid_row(position: int, dim: int) -> np.ndarray:
  """Row `position` of Florence-2's 1-D cosine table: sin at even channels, cos at odd ones."""
  half = dim // 2
  freq = np.exp(np.arange(half, dtype=np.float32) * -(math.log(10000) / half))
  out = np.zeros((dim,), np.float32)
  out[0::2] = np.sin(position * freq)
  out[1::2] = np.cos(position * freq)
  return out


class ImageProjection(nnx.Module):
  """DaViT map [B, h, w, C] -> image features [B, 1 + h·w, P] (see module docstring)."""

  def __init__(self, c: Florence2Config, *, dtype, param_dtype, rngs):
    dim = c.vision.embed_dim[-1]
    init = nnx.initializers.normal(0.02)
    self.row_embeddings = param(rngs, init, (c.max_position_embeddings_2d, dim // 2), (None, "embed"),
                                param_dtype)
    self.column_embeddings = param(rngs, init, (c.max_position_embeddings_2d, dim - dim // 2),
                                   (None, "embed"), param_dtype)
    self.projection = Linear(dim, c.projection_dim, axes=("mlp", "embed"), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    self.norm = LayerNorm(c.projection_dim, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, fmap: jax.Array) -> jax.Array:
    b, h, w, dim = fmap.shape
    col = jnp.broadcast_to(self.column_embeddings[...][:w][None], (h, w, dim - dim // 2))
    row = jnp.broadcast_to(self.row_embeddings[...][:h][:, None], (h, w, dim // 2))
    x = fmap + jnp.concatenate([col, row], axis=-1).astype(fmap.dtype)[None]
    x = x.reshape(b, h * w, dim) + jnp.asarray(sinusoid_row(0, dim), fmap.dtype)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    return self.norm(self.projection(x))


class EncoderLayer(nnx.Module):
  """Post-norm BART encoder layer (BlockStack signature)."""

  def __init__(self, c: Florence2Config, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d = c.d_model
    self.attn = Attention(d, c.encoder_attention_heads, qkv_bias=True, out_bias=True,
                          impl=c.attention_impl, **kw)
    self.attn_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(d, c.encoder_ffn_dim, axes=("embed", "mlp"), use_bias=True, **kw)
    self.fc2 = Linear(c.encoder_ffn_dim, d, axes=("mlp", "embed"), use_bias=True, **kw)
    self.mlp_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.act = get_activation(c.activation_function)

  def __call__(self, x, *, mask=None, rope=None, cache=None, cache_index=0):
    h = self.attn_norm(x + self.attn(x, mask=mask)[0])
    return self.mlp_norm(h + self.fc2(self.act(self.fc1(h)))), cache


class DecoderLayer(nnx.Module):
  """Post-norm BART decoder layer. `rope` carries (encoder states, cross mask) through BlockStack."""

  def __init__(self, c: Florence2Config, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d = c.d_model
    self.attn = Attention(d, c.decoder_attention_heads, qkv_bias=True, out_bias=True,
                          impl=c.attention_impl, **kw)
    self.attn_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.cross = Attention(d, c.decoder_attention_heads, qkv_bias=True, out_bias=True,
                           impl=c.attention_impl, **kw)
    self.cross_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(d, c.decoder_ffn_dim, axes=("embed", "mlp"), use_bias=True, **kw)
    self.fc2 = Linear(c.decoder_ffn_dim, d, axes=("mlp", "embed"), use_bias=True, **kw)
    self.mlp_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.act = get_activation(c.activation_function)

  def __call__(self, x, *, mask=None, rope=None, cache=None, cache_index=0):
    enc, cross_mask = rope
    h = self.attn_norm(x + self.attn(x, mask=mask)[0])
    h = self.cross_norm(h + self.cross(h, kv_input=enc, mask=cross_mask)[0])
    return self.mlp_norm(h + self.fc2(self.act(self.fc1(h)))), cache


class Florence2(nnx.Module):
  """See the module docstring. Parameters: vision_tower (DaViT), image_projection, embed (shared token
  table), encoder_positions / encoder_embed_norm / encoder, and decoder_* when config.decoder."""

  def __init__(self, config: Florence2Config, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype)
    self.vision_tower = DaViT(c.vision, rngs=rngs)
    self.image_projection = ImageProjection(c, rngs=rngs, **kw)
    self.embed = Embed(c.vocab_size, c.d_model, rngs=rngs, **kw)
    init = nnx.initializers.normal(0.02)
    npos = c.max_position_embeddings + 2
    self.encoder_positions = param(rngs, init, (npos, c.d_model), (None, "embed"), pdtype)
    self.encoder_embed_norm = LayerNorm(c.d_model, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.encoder = BlockStack(c.encoder_layers, lambda r: EncoderLayer(c, rngs=r, **kw),
                              scan=c.scan_layers, remat=c.remat, rngs=rngs)
    if c.decoder:
      self.decoder_positions = param(rngs, init, (npos, c.d_model), (None, "embed"), pdtype)
      self.decoder_embed_norm = LayerNorm(c.d_model, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
      self.decoder = BlockStack(c.decoder_layers, lambda r: DecoderLayer(c, rngs=r, **kw),
                                scan=c.scan_layers, remat=c.remat, rngs=rngs)
    else:
      self.decoder_positions = self.decoder_embed_norm = self.decoder = None

  @property
  def embed_scale(self) -> float:
    return math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0

  def image_features(self, pixel_values: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> projected image features [B, 1 + (H/32)·(W/32), d_model] (global token first)."""
    return self.image_projection(self.vision_tower(pixel_values))

  def embed_inputs(self, input_ids: jax.Array, image_features: jax.Array | None = None) -> jax.Array:
    """Scaled token embeddings [B, T, D]; with image features, the i-th `image_token_id` placeholder of
    a row takes image_features[b, i] (rows must hold exactly 1 + N placeholders)."""
    x = self.embed(input_ids) * self.embed_scale
    if image_features is None:
      return x
    return splice_image_tokens(x, input_ids, image_features, self.config.image_token_id)

  def encode(self, input_ids: jax.Array | None, attention_mask: jax.Array | None = None,
             pixel_values: jax.Array | None = None, *, image_features: jax.Array | None = None,
             inputs_embeds: jax.Array | None = None) -> jax.Array:
    """Encoder last hidden state [B, T, D]. Give `pixel_values` (or precomputed `image_features`) to
    fill the placeholders, or `inputs_embeds` directly. attention_mask [B, T]: 1 = token, 0 = pad."""
    if inputs_embeds is None:
      if pixel_values is not None and image_features is None:
        image_features = self.image_features(pixel_values)
      inputs_embeds = self.embed_inputs(input_ids, image_features)
    t = inputs_embeds.shape[1]
    x = inputs_embeds + self.encoder_positions[2:t + 2].astype(inputs_embeds.dtype)[None]
    x = self.encoder_embed_norm(x)
    mask = None
    if attention_mask is not None:
      slots = jnp.arange(t)
      mask = make_attention_mask(slots, slots, attention_mask, causal=False)
    x, _, _ = self.encoder(x, mask=mask)
    return x

  def decode(self, decoder_input_ids: jax.Array, encoder_states: jax.Array,
             encoder_mask: jax.Array | None = None, decoder_mask: jax.Array | None = None) -> jax.Array:
    """Decoder logits [B, T_dec, V] (float32), LM head tied to the shared embedding."""
    if self.decoder is None:
      raise ValueError("this Florence2 was built without its decoder (config.decoder=False)")
    t = decoder_input_ids.shape[1]
    x = self.embed(decoder_input_ids) * self.embed_scale
    x = self.decoder_embed_norm(x + self.decoder_positions[2:t + 2].astype(x.dtype)[None])
    slots = jnp.arange(t)
    mask = make_attention_mask(slots, slots, decoder_mask, causal=True)
    cross = None
    if encoder_mask is not None:
      cross = make_attention_mask(slots, jnp.arange(encoder_states.shape[1]), encoder_mask, causal=False)
    x, _, _ = self.decoder(x, mask=mask, rope=(encoder_states, cross))
    return self.embed.attend(x).astype(jnp.float32)

  def __call__(self, input_ids, attention_mask, pixel_values, decoder_input_ids) -> jax.Array:
    """HF `Florence2ForConditionalGeneration(...).logits`: [B, T_dec, V]."""
    enc = self.encode(input_ids, attention_mask, pixel_values)
    return self.decode(decoder_input_ids, enc, attention_mask)

  def greedy_caption(self, input_ids, attention_mask, pixel_values, max_new_tokens: int) -> jax.Array:
    """Greedy decoding from `decoder_start_token_id` (no KV cache: the causal decoder is re-run on a
    fixed-size buffer each step). Returns [B, 1 + max_new_tokens] (start token first); after EOS the
    row keeps emitting pad."""
    c = self.config
    enc = self.encode(input_ids, attention_mask, pixel_values)
    b = enc.shape[0]
    buf = jnp.full((b, 1 + max_new_tokens), c.pad_token_id, jnp.int32).at[:, 0].set(c.decoder_start_token_id)
    done = jnp.zeros((b,), bool)
    for i in range(max_new_tokens):
      nxt = jnp.argmax(self.decode(buf, enc, attention_mask)[:, i], axis=-1).astype(jnp.int32)
      nxt = jnp.where(done, c.pad_token_id, nxt)
      buf = buf.at[:, i + 1].set(nxt)
      done = done | (nxt == c.eos_token_id)
    return buf
