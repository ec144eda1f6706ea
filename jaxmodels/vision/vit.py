"""Vision transformers: SigLIP / SigLIP2 (fixed resolution) and CLIP vision towers.

Images are NHWC float arrays, normalised as the tower's HF image processor does (SigLIP: mean 0.5,
std 0.5, i.e. [-1, 1]; CLIP: OpenAI mean/std). The two variants share every layer and differ in config:

  SigLIP: conv patch embed with bias, no class token, post-LayerNorm on all tokens, optional
          attention-pooling ("MAP") head for `pooler_output`, gelu-tanh MLP.
  CLIP:   conv patch embed without bias, class token, pre-LayerNorm, post-LayerNorm on the class
          token only (`pooler_output`), quick-gelu MLP; `last_hidden_state` is not post-normed.

    tower = jaxmodels.hf.from_pretrained("/ckpts/siglip-so400m-patch14-384")
    tokens = tower(pixels)                                   # [B, 384, 384, 3] -> [B, 729, 1152]
    out = tower(pixels, output_hidden_states=True)           # out.hidden_states: [L+1, B, N, D]
    pooled = avg_pool_tokens(tokens_32x32, 4)                # [B, 1024, D] -> [B, 64, D]
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.layers import MLP, Attention, BlockStack, LayerNorm, TransformerBlock, param
from jaxmodels.layers.linear import fan_in_normal


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """ViT hyper-parameters (HF names where they exist). Defaults: SigLIP-so400m-patch14-384."""
  model_type: str = "siglip_vision_model"     # or "clip_vision_model"
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  image_size: int = 384
  patch_size: int = 14
  num_channels: int = 3
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6
  use_head: bool = True                       # SigLIP attention-pooling head
  projection_dim: int | None = None           # CLIP (kept for export only)
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def is_clip(self) -> bool:
    return self.model_type.startswith("clip")

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    return self.grid_size ** 2 + (1 if self.is_clip else 0)

  def replace(self, **kw: Any) -> "VisionConfig":
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass
class VisionOutput:
  last_hidden_state: jax.Array                # [B, N, D]
  hidden_states: jax.Array | None = None      # [L+1, B, N, D]: embeddings, then every layer
  pooler_output: jax.Array | None = None      # [B, D]


class PatchEmbed(nnx.Module):
  """Non-overlapping p×p patches (a stride-p convolution): [B, H, W, C] -> [B, (H/p)·(W/p), D]."""

  def __init__(self, patch: int, channels: int, dim: int, *, use_bias: bool, dtype, param_dtype,
               rngs: nnx.Rngs | None):
    self.patch, self.dtype = patch, dtype
    self.kernel = param(rngs, fan_in_normal(patch * patch * channels), (patch, patch, channels, dim),
                        ("patch", "patch", "conv_in", "embed"), param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    p = self.patch
    gh, gw = h // p, w // p
    x = x[:, :gh * p, :gw * p].astype(self.dtype).reshape(b, gh, p, gw, p, c)
    y = jnp.einsum("bhiwjc,ijcd->bhwd", x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y.reshape(b, gh * gw, -1)


class AttentionPoolingHead(nnx.Module):
  """SigLIP's MAP head: a learned probe attends over the tokens, then LayerNorm + MLP residual."""

  def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    d = c.hidden_size
    self.probe = param(rngs, nnx.initializers.normal(0.02), (1, 1, d), (None, None, "embed"), param_dtype)
    self.attn = Attention(d, c.num_heads, qkv_bias=True, out_bias=True, impl=c.attention_impl,
                          dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.mlp = MLP(d, c.intermediate_size, activation=c.hidden_act, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    h, _ = self.attn(probe, kv_input=x)
    h = h + self.mlp(self.norm(h))
    return h[:, 0]


class VisionTransformer(nnx.Module):
  """pixel_values [B, H, W, C] -> last_hidden_state [B, N, D] (see module docstring)."""

  def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    d = c.hidden_size
    self.patch_embed = PatchEmbed(c.patch_size, c.num_channels, d, use_bias=not c.is_clip,
                                  dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.class_embedding = (param(rngs, nnx.initializers.normal(0.02), (d,), ("embed",), pdtype)
                            if c.is_clip else None)
    self.position_embedding = param(rngs, nnx.initializers.normal(0.02), (c.num_positions, d),
                                    (None, "embed"), pdtype)
    self.pre_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs) if c.is_clip else None

    def make_block(r):
      return TransformerBlock(d, c.num_heads, c.intermediate_size, norm="layer", norm_eps=c.layer_norm_eps,
                              mlp="plain", activation=c.hidden_act, qkv_bias=True, out_bias=True,
                              mlp_bias=True, attention_impl=c.attention_impl, dtype=dtype,
                              param_dtype=pdtype, rngs=r)

    self.layers = BlockStack(c.num_layers, make_block, scan=c.scan_layers, remat=c.remat, rngs=rngs)
    self.post_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.head = (AttentionPoolingHead(c, dtype=dtype, param_dtype=pdtype, rngs=rngs)
                 if c.use_head and not c.is_clip else None)

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """[B, H, W, C] -> token embeddings [B, N, D] (class token first for CLIP)."""
    c = self.config
    x = self.patch_embed(pixel_values)
    if x.shape[1] != c.grid_size ** 2:
      raise ValueError(f"pixel_values {tuple(pixel_values.shape)} give {x.shape[1]} patches; this tower "
                       f"expects {c.image_size}x{c.image_size} images ({c.grid_size ** 2} patches)")
    if self.class_embedding is not None:
      cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.position_embedding[...].astype(x.dtype)[None]
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

  def __call__(self, pixel_values: jax.Array, *, output_hidden_states: bool = False):
    """Returns last_hidden_state [B, N, D], or a `VisionOutput` when output_hidden_states=True."""
    x0 = self.embed(pixel_values)
    x, _, layer_outputs = self.layers(x0, return_hidden=output_hidden_states)
    if self.config.is_clip:
      last = x
      pooled = self.post_norm(x[:, 0])
    else:
      last = self.post_norm(x)
      pooled = self.head(last) if self.head is not None else None
    if not output_hidden_states:
      return last
    hidden = jnp.concatenate([x0[None], layer_outputs], axis=0)
    return VisionOutput(last, hidden, pooled)

  def pooled(self, pixel_values: jax.Array) -> jax.Array:
    """HF's `pooler_output` [B, D] (SigLIP MAP head / CLIP post-normed class token)."""
    return self(pixel_values, output_hidden_states=True).pooler_output


def avg_pool_tokens(tokens: jax.Array, factor: int) -> jax.Array:
  """Average-pools a square grid of patch tokens with a factor×factor window and stride.

  tokens [B, N, D] with N = g² (drop any class token first) -> [B, (g/factor)², D]. BLIP3-o and
  Pisces pool the generation encoder's 32×32 grid with factor 4 into 64 tokens.
  """
  b, n, d = tokens.shape
  g = math.isqrt(n)
  if g * g != n or g % factor:
    raise ValueError(f"cannot pool {n} tokens with factor {factor}: need a square grid divisible by it")
  x = tokens.reshape(b, g // factor, factor, g // factor, factor, d)
  return x.mean(axis=(2, 4)).reshape(b, (g // factor) ** 2, d)
