"""DaViT (Dual Attention Vision Transformer), the image encoder of Florence-2, on NHWC images.

Four stages; each starts with a strided convolutional patch embedding (LayerNorm after the conv in
stage 0, before it in later stages) and stacks `depths[s]` blocks. A block is a *spatial* sub-block
followed by a *channel* sub-block, both of the form

    x = x + dwconv3x3(x);   x = x + attn(LN(x));   x = x + dwconv3x3(x);   x = x + MLP(LN(x))

where `attn` is window self-attention over non-overlapping w×w windows (spatial; the map is
zero-padded on the bottom/right to a multiple of w *after* the LayerNorm, and the padding tokens take
part as keys, as in Florence-2) or channel group attention (channel; each of G groups attends over its
C/G channels, with the N tokens as the feature axis and scale N^-1/2).

    tower = DaViT(DaViTConfig(...), rngs=nnx.Rngs(0))
    feats = tower(pixels)                # [B, 768, 768, 3] -> [B, 24, 24, 2048] for Florence-2-large

Parameters carry logical axes: convolutions (conv_in|None, conv_out), attention q/k/v
("embed", "heads", "head_dim"), MLPs ("embed", "mlp").
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.errors import ConfigError
from jaxmodels.layers import MLP, BlockStack, LayerNorm, Linear
from jaxmodels.layers.attention import dot_product_attention
from jaxmodels.layers.conv import Conv2d


@dataclasses.dataclass(frozen=True)
class DaViTConfig:
  """HF `Florence2VisionConfig` fields. Defaults: Florence-2-large's DaViT."""
  in_channels: int = 3
  depths: tuple[int, ...] = (1, 1, 9, 1)
  patch_size: tuple[int, ...] = (7, 3, 3, 3)
  patch_stride: tuple[int, ...] = (4, 2, 2, 2)
  patch_padding: tuple[int, ...] = (3, 1, 1, 1)
  patch_prenorm: tuple[bool, ...] = (False, True, True, True)
  embed_dim: tuple[int, ...] = (256, 512, 1024, 2048)
  num_heads: tuple[int, ...] = (8, 16, 32, 64)
  num_groups: tuple[int, ...] = (8, 16, 32, 64)
  window_size: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  activation: str = "gelu"
  layer_norm_eps: float = 1e-5
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for f in ("depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm", "embed_dim",
              "num_heads", "num_groups"):
      object.__setattr__(self, f, tuple(getattr(self, f)))
    n = len(self.embed_dim)
    for f in ("depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm", "num_heads",
              "num_groups"):
      if len(getattr(self, f)) != n:
        raise ConfigError(f"DaViTConfig.{f} has {len(getattr(self, f))} entries, embed_dim has {n}")

  @property
  def stride(self) -> int:
    """Total downsampling factor (32 for Florence-2)."""
    s = 1
    for x in self.patch_stride:
      s *= x
    return s

  def replace(self, **kw: Any) -> "DaViTConfig":
    return dataclasses.replace(self, **kw)


class ConvEmbed(nnx.Module):
  """Strided conv patch embedding with a LayerNorm before (prenorm) or after it: NHWC -> NHWC."""

  def __init__(self, c: DaViTConfig, stage: int, *, dtype, param_dtype, rngs):
    cin = c.in_channels if stage == 0 else c.embed_dim[stage - 1]
    cout = c.embed_dim[stage]
    self.prenorm = c.patch_prenorm[stage]
    self.conv = Conv2d(cin, cout, c.patch_size[stage], stride=c.patch_stride[stage],
                       padding=c.patch_padding[stage], axes=("conv_in", "embed"), dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)
    self.norm = LayerNorm(cin if self.prenorm else cout, eps=c.layer_norm_eps,
                          axes=("conv_in",) if self.prenorm else ("embed",), param_dtype=param_dtype,
                          rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.prenorm:
      return self.conv(self.norm(x))
    return self.norm(self.conv(x))


class WindowAttention(nnx.Module):
  """Multi-head self-attention inside non-overlapping w×w windows: [B, H, W, C] -> [B, H, W, C]."""

  def __init__(self, dim: int, num_heads: int, window: int, *, qkv_bias: bool, impl: str, dtype,
               param_dtype, rngs):
    hd = dim // num_heads
    self.window, self.head_dim, self.impl = window, hd, impl
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Linear(dim, (num_heads, hd), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
    self.k = Linear(dim, (num_heads, hd), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
    self.v = Linear(dim, (num_heads, hd), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
    self.o = Linear((num_heads, hd), dim, axes=("heads", "head_dim", "embed"), use_bias=True, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    ws = self.window
    ph, pw = (-h) % ws, (-w) % ws
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    win = x.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    win = win.reshape(-1, ws * ws, c)                               # [B·nW, w², C]
    out = dot_product_attention(self.q(win), self.k(win), self.v(win), None,
                                scale=self.head_dim ** -0.5, impl=self.impl)
    out = self.o(out).reshape(b, hp // ws, wp // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return out.reshape(b, hp, wp, c)[:, :h, :w]


class ChannelAttention(nnx.Module):
  """Channel group attention: per group, the C/G channels attend to each other with the N tokens as
  features (scale N^-1/2). [B, N, C] -> [B, N, C]."""

  def __init__(self, dim: int, groups: int, *, qkv_bias: bool, dtype, param_dtype, rngs):
    gd = dim // groups
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q = Linear(dim, (groups, gd), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
    self.k = Linear(dim, (groups, gd), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
    self.v = Linear(dim, (groups, gd), axes=("embed", "heads", "head_dim"), use_bias=qkv_bias, **kw)
    self.o = Linear((groups, gd), dim, axes=("heads", "head_dim", "embed"), use_bias=True, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    n = x.shape[1]
    q, k, v = self.q(x), self.k(x), self.v(x)                      # [B, N, G, c]
    logits = jnp.einsum("bngc,bnge->bgce", q, k, preferred_element_type=jnp.float32) * n ** -0.5
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return self.o(jnp.einsum("bgce,bnge->bngc", probs, v))


class SubBlock(nnx.Module):
  """x += dwconv(x); x += attn(LN(x)); x += dwconv(x); x += MLP(LN(x)) on NHWC maps."""

  def __init__(self, c: DaViTConfig, stage: int, kind: str, *, dtype, param_dtype, rngs):
    d = c.embed_dim[stage]
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.kind = kind
    self.conv1 = Conv2d(d, d, 3, groups=d, axes=(None, "embed"), **kw)
    self.norm1 = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    if kind == "spatial":
      self.attn = WindowAttention(d, c.num_heads[stage], c.window_size, qkv_bias=c.qkv_bias,
                                  impl=c.attention_impl, **kw)
    else:
      self.attn = ChannelAttention(d, c.num_groups[stage], qkv_bias=c.qkv_bias, **kw)
    self.conv2 = Conv2d(d, d, 3, groups=d, axes=(None, "embed"), **kw)
    self.norm2 = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.mlp = MLP(d, int(d * c.mlp_ratio), activation=c.activation, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, d = x.shape
    x = x + self.conv1(x)
    if self.kind == "spatial":
      x = x + self.attn(self.norm1(x))
    else:
      x = x + self.attn(self.norm1(x).reshape(b, h * w, d)).reshape(b, h, w, d)
    x = x + self.conv2(x)
    return x + self.mlp(self.norm2(x))


class DaViTBlock(nnx.Module):
  """Spatial then channel sub-block; the signature of `BlockStack` blocks (mask/rope/cache unused)."""

  def __init__(self, c: DaViTConfig, stage: int, *, dtype, param_dtype, rngs):
    self.spatial = SubBlock(c, stage, "spatial", dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.channel = SubBlock(c, stage, "channel", dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, *, mask=None, rope=None, cache=None, cache_index=0):
    return self.channel(self.spatial(x)), cache


class DaViT(nnx.Module):
  """pixel_values [B, H, W, C] (normalised as Florence-2's processor does: ImageNet mean/std) ->
  the last stage's feature map [B, H/32, W/32, embed_dim[-1]]."""

  def __init__(self, config: DaViTConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.convs = nnx.List([ConvEmbed(c, s, dtype=dtype, param_dtype=pdtype, rngs=rngs)
                           for s in range(len(c.embed_dim))])

    def stage(s):
      return BlockStack(c.depths[s], lambda r: DaViTBlock(c, s, dtype=dtype, param_dtype=pdtype, rngs=r),
                        scan=c.scan_layers, remat=c.remat, rngs=rngs)

    self.stages = nnx.List([stage(s) for s in range(len(c.embed_dim))])

  def __call__(self, pixel_values: jax.Array) -> jax.Array:
    # The feature maps stay sharded over the batch (as every tower's activations): without the
    # constraint XLA gathers the images to every device once the first conv's kernel is fsdp-sharded.
    batch_sharded = lambda t: sharding.constrain(t, ("act_batch", None, None, None))
    x = batch_sharded(pixel_values.astype(jnp.dtype(self.config.dtype)))
    for conv, blocks in zip(self.convs, self.stages):
      x, _, _ = blocks(batch_sharded(conv(x)))
      x = batch_sharded(x)
    return x
