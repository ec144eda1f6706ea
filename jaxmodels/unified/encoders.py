"""Image encoders of the unified model: config -> tower, and images -> patch / image tokens.

Two kinds of tower serve as `und_encoder`:

  VisionConfig          SigLIP / CLIP-style ViT (`jaxmodels.vision.vit`): tokens [B, g², hidden_size]
                        for g = image_size / patch_size (CLIP's class token dropped). SigLIP towers
                        read the model's [-1, 1] images as they are (their processor's mean = std =
                        0.5); CLIP-family towers (`model_type="clip_vision_model"`: CLIP ViT-L/14,
                        Pisces' generation encoder) get their processor's OpenAI-CLIP normalisation,
                        as the Qwen tower does.
  Qwen25VisionConfig    the Qwen2.5-VL tower (`jaxmodels.vision.qwen2_5_vl`): its patch merger already
                        maps to the LLM width, so tokens are [B, g², out_hidden_size] for
                        g = image_size / (patch_size · spatial_merge_size) (448 -> 16, 256 tokens).
                        Images are converted from the model's [-1, 1] to what its HF processor feeds:
                        x ↦ ((x + 1) / 2 − OpenAI-CLIP mean) / std, per channel.

  DBFusionConfig        Florence-VL's DBFusion (`jaxmodels.unified.dbfusion`): Florence-2's depth and
                        breadth streams fused and projected by its own mlp3x_gelu to the LLM width
                        (so und_projector="none"), [B, num_tokens, out_dim]; images get Florence-2's
                        processor normalisation (ImageNet mean / std).

Generation encoders (`gen_encoder`) are `VisionConfig` towers or

  EvaClipConfig         the EVA-CLIP tower (`jaxmodels.vision.eva_clip`; BLIP3-o's EVA-CLIP-E/14-plus):
                        OpenAI-CLIP normalisation, its output is already the last block's (no final
                        norm), class token dropped: [B, g², hidden_size].

The image tokenizer's encoder is a `VisionConfig` tower.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.unified.dbfusion import DBFusion, DBFusionConfig, florence_pixels
from jaxmodels.vision.eva_clip import EvaClipConfig, EvaClipVisionTransformer
from jaxmodels.vision.qwen2_5_vl import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Qwen25VisionConfig,
                                         Qwen25VisionTransformer)
from jaxmodels.vision.vit import VisionConfig, VisionTransformer, avg_pool_tokens

EncoderConfig = VisionConfig | Qwen25VisionConfig | EvaClipConfig | DBFusionConfig


def is_qwen(config) -> bool:
  return isinstance(config, Qwen25VisionConfig)


def is_dbfusion(config) -> bool:
  return isinstance(config, DBFusionConfig)


def encoder_width(config: EncoderConfig) -> int:
  """Width of the tokens an encoder outputs: the ViT's hidden size, Qwen's merger output, or DBFusion's
  projector output."""
  if is_dbfusion(config):
    return config.out_dim
  return config.out_hidden_size if is_qwen(config) else config.hidden_size


def encoder_num_tokens(config: EncoderConfig, pool: int = 1) -> int:
  """Tokens one image gives after pool×pool pooling: (grid / pool)², or DBFusion's num_tokens."""
  if is_dbfusion(config):
    return config.num_tokens
  return (config.grid_size // pool) ** 2


def build_encoder(config: EncoderConfig | None, *, rngs: nnx.Rngs):
  """The tower for an encoder config (None -> None)."""
  if config is None:
    return None
  if is_qwen(config):
    return Qwen25VisionTransformer(config, rngs=rngs)
  if is_dbfusion(config):
    return DBFusion(config, rngs=rngs)
  if isinstance(config, EvaClipConfig):
    return EvaClipVisionTransformer(config, rngs=rngs)
  return VisionTransformer(config, rngs=rngs)


def clip_pixels(images: jax.Array) -> jax.Array:
  """images [B, H, W, 3] in [-1, 1] -> the CLIP / Qwen2.5-VL processors' normalisation: [0, 1], then
  OpenAI-CLIP mean/std per channel (float32)."""
  x = (images.astype(jnp.float32) + 1.0) * 0.5
  return (x - jnp.asarray(OPENAI_CLIP_MEAN)) / jnp.asarray(OPENAI_CLIP_STD)


def encoder_pixels(config: EncoderConfig, images: jax.Array) -> jax.Array:
  """images [B, H, W, 3] in [-1, 1] -> what the tower's HF processor would feed it: OpenAI-CLIP
  mean/std for Qwen2.5-VL and CLIP-family ViTs (EVA-CLIP included), ImageNet mean/std for DBFusion
  (Florence-2), unchanged for SigLIP (mean = std = 0.5)."""
  if is_dbfusion(config):
    return florence_pixels(images)
  return clip_pixels(images) if is_qwen(config) or config.is_clip else images


def encoder_tokens(encoder, images: jax.Array, pool: int, *, last_block: bool) -> jax.Array:
  """images [B, S, S, 3] in [-1, 1] (S = the config's image_size) -> tokens [B, (g/pool)², D].

  ViT: patch tokens with the class token dropped, optionally the last block's output without the
  final norm (BLIP3-o's generation target; an EVA-CLIP tower's output always is that). Qwen2.5-VL:
  the merged tokens (row-major over the g×g merged grid); `last_block` is not supported (its blocks'
  outputs are unmerged patch tokens). Every tower reads its processor's normalisation
  (`encoder_pixels`). Then pool×pool average pooling.
  """
  c = encoder.config
  images = encoder_pixels(c, images)
  if is_dbfusion(c):
    if last_block or pool > 1:
      raise ValueError("DBFusion serves as und_encoder only, unpooled (its tokens are already projected)")
    return encoder(images)
  if is_qwen(c):
    if last_block:
      raise ValueError("the Qwen2.5-VL tower serves as und_encoder only (no last-block target)")
    if images.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"images {tuple(images.shape)}: the Qwen2.5-VL und_encoder expects "
                       f"{c.image_size}x{c.image_size} images ({c.num_tokens} tokens)")
    tokens = encoder(images)
  elif last_block and not isinstance(c, EvaClipConfig):
    tokens = encoder(images, output_hidden_states=True).hidden_states[-1]
  else:
    tokens = encoder(images)
  if c.is_clip:
    tokens = tokens[:, 1:]
  return avg_pool_tokens(tokens, pool) if pool > 1 else tokens


def understanding_positions(config: EncoderConfig, ids: jax.Array, mask: jax.Array, *, image_token_id: int,
                            uses_mrope: bool) -> jax.Array | None:
  """Rotary positions [3, B, T] of an understanding prompt (ids [B, T], concrete, left-padded by mask) whose
  images are read by a Qwen2.5-VL tower feeding an M-RoPE language model (`uses_mrope`): every image
  is one frame of g × g merged tokens, placed as transformers' `get_rope_index` places them. None for
  every other pairing (the LLM's default positions, 0..T−1 over the real tokens)."""
  if not (uses_mrope and is_qwen(config)):
    return None
  from jaxmodels.qwen2_5_vl_model import mrope_positions
  side = config.image_size // config.patch_size                   # patches per side (t = 1: an image)
  images = int(jnp.sum(jnp.asarray(ids) == image_token_id)) // (config.grid_size ** 2)
  grid = [[1, side, side]] * images
  positions, _ = mrope_positions(ids, grid or None, mask, image_token_id=image_token_id,
                                 spatial_merge_size=config.spatial_merge_size)
  return positions
