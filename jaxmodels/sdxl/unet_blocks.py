"""The UNet's resolution levels: down blocks, the mid block and up blocks (diffusers
`DownBlock2D` / `CrossAttnDownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D` / `CrossAttnUpBlock2D`).

A cross-attention block follows each `ResnetBlock2D` with a `Transformer2DModel` (its own number of
transformer layers); a plain block has none. Down blocks return every intermediate output as a skip
connection; up blocks concatenate one skip (channels last) before each of their resnets, popping
them from the end.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.sdxl.blocks import Downsample2D, ResnetBlock2D, Upsample2D
from jaxmodels.sdxl.transformer_2d import Transformer2DModel


@dataclasses.dataclass(frozen=True)
class LevelSpec:
  """What one UNet level needs beyond its channel counts (built from the UNet config).

  `transformer_layers` has one entry per resnet (the depth of the Transformer2DModel after it);
  None means a plain block without attention.
  """
  temb_channels: int
  groups: int
  eps: float
  act: str
  time_embedding_norm: str
  output_scale_factor: float = 1.0
  transformer_layers: tuple[int, ...] | None = None
  num_heads: int = 1
  cross_attention_dim: int = 0
  use_linear_projection: bool = False
  scan: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"


def _resnet(spec: LevelSpec, in_channels: int, out_channels: int, **kw) -> ResnetBlock2D:
  return ResnetBlock2D(in_channels, out_channels, temb_channels=spec.temb_channels, groups=spec.groups,
                       eps=spec.eps, act=spec.act, time_embedding_norm=spec.time_embedding_norm,
                       output_scale_factor=spec.output_scale_factor, **kw)


def _attentions(spec: LevelSpec, channels: int, **kw) -> nnx.List:
  if spec.transformer_layers is None:
    return nnx.List([])
  return nnx.List([Transformer2DModel(
      channels, spec.num_heads, channels // spec.num_heads, depth, spec.cross_attention_dim,
      groups=spec.groups, use_linear_projection=spec.use_linear_projection, scan=spec.scan,
      remat=spec.remat, impl=spec.attention_impl, **kw) for depth in spec.transformer_layers])


class DownBlock(nnx.Module):
  """resnets (each followed by a Transformer2DModel in a cross-attention block), then an optional
  stride-2 `Downsample2D`: x [B, H, W, C_in] -> ([B, H', W', C_out], skips)."""

  def __init__(self, in_channels: int, out_channels: int, num_layers: int, spec: LevelSpec, *,
               add_downsample: bool, downsample_padding: int, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.resnets = nnx.List([_resnet(spec, in_channels if i == 0 else out_channels, out_channels, **kw)
                             for i in range(num_layers)])
    self.attentions = _attentions(spec, out_channels, **kw)
    self.downsampler = (Downsample2D(out_channels, padding=downsample_padding, **kw)
                        if add_downsample else None)

  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array
               ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    skips = []
    for i, resnet in enumerate(self.resnets):
      x = resnet(x, temb)
      if len(self.attentions):
        x = self.attentions[i](x, context)
      skips.append(x)
    if self.downsampler is not None:
      x = self.downsampler(x)
      skips.append(x)
    return x, tuple(skips)


class MidBlock(nnx.Module):
  """ResnetBlock2D, then (Transformer2DModel, ResnetBlock2D) per attention: [B, h, w, C] -> same."""

  def __init__(self, channels: int, spec: LevelSpec, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attentions = _attentions(spec, channels, **kw)
    self.resnets = nnx.List([_resnet(spec, channels, channels, **kw)
                             for _ in range(len(self.attentions) + 1)])

  def __call__(self, x: jax.Array, temb: jax.Array, context: jax.Array) -> jax.Array:
    x = self.resnets[0](x, temb)
    for attn, resnet in zip(self.attentions, self.resnets[1:]):
      x = resnet(attn(x, context), temb)
    return x


class UpBlock(nnx.Module):
  """Per resnet: concatenate the last remaining skip, resnet (+ Transformer2DModel); then an
  optional `Upsample2D` (to `upsample_size` when given): x [B, h, w, C_prev] -> [B, 2h, 2w, C_out].

  Resnet j takes C_prev (j = 0) or C_out channels plus its skip's: C_skip_in for the last resnet
  (the skip from the level below), C_out for the others.
  """

  def __init__(self, in_channels: int, prev_output_channels: int, out_channels: int, num_layers: int,
               spec: LevelSpec, *, add_upsample: bool, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    resnets = []
    for j in range(num_layers):
      skip = in_channels if j == num_layers - 1 else out_channels
      base = prev_output_channels if j == 0 else out_channels
      resnets.append(_resnet(spec, base + skip, out_channels, **kw))
    self.resnets = nnx.List(resnets)
    self.attentions = _attentions(spec, out_channels, **kw)
    self.upsampler = Upsample2D(out_channels, **kw) if add_upsample else None

  def __call__(self, x: jax.Array, skips: tuple[jax.Array, ...], temb: jax.Array, context: jax.Array,
               upsample_size: tuple[int, int] | None = None) -> jax.Array:
    skips = list(skips)
    for i, resnet in enumerate(self.resnets):
      skip = skips.pop()
      x = resnet(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1), temb)
      if len(self.attentions):
        x = self.attentions[i](x, context)
    if self.upsampler is not None:
      x = self.upsampler(x, upsample_size)
    return x
