"""SDXL's spatial transformer (diffusers `Transformer2DModel` on continuous inputs), NHWC.

    x [B, H, W, C] -> GroupNorm -> proj_in -> L × BasicTransformerBlock over the H·W tokens
      -> proj_out -> + x

`BasicTransformerBlock` (diffusers, norm_type "layer_norm"): pre-LayerNorm self-attention, pre-LN
cross-attention to the conditioning sequence, pre-LN GEGLU feed-forward (width 4·D), each residual.
proj_in / proj_out are Linear layers (`use_linear_projection`, SDXL) or 1x1 convolutions (SD 1.x).

The L blocks run as a `BlockStack` (a loop, or one `lax.scan` over stacked parameters with
`scan=True`; SDXL's lowest level has L = 10). The stack's carry is the pair (tokens, context): the
conditioning rides along unchanged, so the shared stack needs no cross-attention argument.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.layers.attention import Attention
from jaxmodels.layers.block import BlockStack
from jaxmodels.layers.conv import Conv2d
from jaxmodels.layers.group_norm import GroupNorm
from jaxmodels.layers.key_stream import KeyStream
from jaxmodels.layers.linear import Linear
from jaxmodels.layers.mlp import GatedMLP
from jaxmodels.layers.norms import LayerNorm

GROUP_NORM_EPS = 1e-6           # diffusers fixes it for the continuous-input Transformer2DModel


class BasicTransformerBlock(nnx.Module):
  """Self-attention, cross-attention and GEGLU feed-forward, each pre-LayerNorm and residual.

  Called by `BlockStack` with x = (h [B, T, D], context [B, S, D_ctx]); returns ((h', context), None).
  The GEGLU feed-forward value·GELU(gate) is `GatedMLP` with exact GELU: its `up` and `gate` are the
  two row halves of diffusers' fused `ff.net.0.proj`.
  """

  def __init__(self, dim: int, num_heads: int, head_dim: int, cross_attention_dim: int, *,
               norm_eps: float = 1e-5, attention_bias: bool = False, impl: str = "einsum",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    attn = dict(head_dim=head_dim, qkv_bias=attention_bias, out_bias=True, impl=impl, **kw)
    norm = dict(eps=norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = LayerNorm(dim, **norm)
    self.attn1 = Attention(dim, num_heads, **attn)
    self.norm2 = LayerNorm(dim, **norm)
    self.attn2 = Attention(dim, num_heads, kv_dim=cross_attention_dim, **attn)
    self.norm3 = LayerNorm(dim, **norm)
    self.ff = GatedMLP(dim, 4 * dim, activation="gelu", use_bias=True, **kw)

  def __call__(self, x, *, mask=None, rope=None, cache=None, cache_index=0):
    h, context = x
    h = h + self.attn1(self.norm1(h))[0]
    h = h + self.attn2(self.norm2(h), kv_input=context)[0]
    h = h + self.ff(self.norm3(h))
    return (sharding.constrain(h, ("act_batch", "act_length", "act_embed")), context), None


class Transformer2DModel(nnx.Module):
  """[B, H, W, C] (+ context [B, S, D_ctx]) -> [B, H, W, C], inner width num_heads·head_dim."""

  def __init__(self, channels: int, num_heads: int, head_dim: int, num_layers: int,
               cross_attention_dim: int, *, groups: int, use_linear_projection: bool,
               norm_eps: float = 1e-5, scan: bool = False, remat: str = "none", impl: str = "einsum",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | KeyStream):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    inner = num_heads * head_dim
    self.linear = use_linear_projection
    self.norm = GroupNorm(channels, groups, eps=GROUP_NORM_EPS, axes=("conv_in",),
                          param_dtype=param_dtype, rngs=rngs)
    if use_linear_projection:
      self.proj_in = Linear(channels, inner, axes=("conv_in", "embed"), use_bias=True, **kw)
      self.proj_out = Linear(inner, channels, axes=("embed", "conv_out"), use_bias=True, **kw)
    else:
      self.proj_in = Conv2d(channels, inner, 1, padding=0, axes=("conv_in", "embed"), **kw)
      self.proj_out = Conv2d(inner, channels, 1, padding=0, axes=("embed", "conv_out"), **kw)

    def make_block(r: nnx.Rngs) -> BasicTransformerBlock:
      return BasicTransformerBlock(inner, num_heads, head_dim, cross_attention_dim, norm_eps=norm_eps,
                                   impl=impl, dtype=dtype, param_dtype=param_dtype, rngs=r)

    # A scanned stack splits a real nnx.Rngs; the loop hands `rngs` (e.g. a KeyStream) to each block.
    stack_rngs = rngs.rngs() if scan and isinstance(rngs, KeyStream) else rngs
    self.transformer_blocks = BlockStack(num_layers, make_block, scan=scan, remat=remat,
                                         rngs=stack_rngs)

  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, height, width, _ = x.shape
    h = self.proj_in(self.norm(x))          # 1x1 conv or Linear: both act on the channel axis
    h = h.reshape(b, height * width, h.shape[-1])
    (h, _), _, _ = self.transformer_blocks((h, context.astype(h.dtype)))
    h = self.proj_out(h.reshape(b, height, width, h.shape[-1]))
    return h + x.astype(h.dtype)
