"""The 2-D convolutional blocks the SD/SDXL UNet and the KL autoencoder share (NHWC).

* `ResnetBlock2D`: GroupNorm -> act -> 3x3 conv (+ projected time embedding) -> GroupNorm -> act ->
  3x3 conv, plus a (1x1-projected) shortcut; diffusers' `ResnetBlock2D` with `pre_norm`.
* `Downsample2D`: a stride-2 3x3 conv (the autoencoder's padding=0 variant pads right/bottom by one).
* `Upsample2D`: nearest-neighbour up-sampling (2x, or to a given size) then a 3x3 conv.
* `nearest_resize`: torch's `F.interpolate(mode="nearest")` on NHWC arrays.

Attribute names follow diffusers (`norm1`, `conv1`, `time_emb_proj`, `conv_shortcut`, `conv`) so the
HF key map (jaxmodels/hf/sdxl_family.py) is one-to-one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.layers.activations import get_activation
from jaxmodels.layers.conv import Conv2d
from jaxmodels.layers.group_norm import GroupNorm
from jaxmodels.layers.linear import Linear

TIME_EMBEDDING_NORMS = ("default", "scale_shift")


class ResnetBlock2D(nnx.Module):
  """x [B, H, W, C_in] (+ temb [B, T]) -> [B, H, W, C_out].

      h = conv1(act(norm1(x)))
      "default":     h = norm2(h + time_emb_proj(act(temb)))
      "scale_shift": scale, shift = time_emb_proj(act(temb));  h = norm2(h)·(1 + scale) + shift
      y = (shortcut(x) + conv2(act(h))) / output_scale_factor

  `temb_channels=None` builds no time projection (the autoencoder's blocks). The shortcut is a 1x1
  conv when C_in != C_out, else the identity. Dropout (training only in diffusers) is not applied.
  """

  def __init__(self, in_channels: int, out_channels: int, *, temb_channels: int | None,
               groups: int, eps: float, act: str = "silu", time_embedding_norm: str = "default",
               output_scale_factor: float = 1.0, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    if time_embedding_norm not in TIME_EMBEDDING_NORMS:
      raise ValueError(f"time_embedding_norm {time_embedding_norm!r} is not supported "
                       f"({', '.join(TIME_EMBEDDING_NORMS)})")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act = get_activation(act)
    self.time_embedding_norm = time_embedding_norm
    self.output_scale_factor = output_scale_factor
    self.norm1 = GroupNorm(in_channels, groups, eps=eps, axes=("conv_in",), param_dtype=param_dtype,
                           rngs=rngs)
    self.conv1 = Conv2d(in_channels, out_channels, 3, **kw)
    width = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
    self.time_emb_proj = (Linear(temb_channels, width, axes=(None, "conv_out"), use_bias=True, **kw)
                          if temb_channels is not None else None)
    self.norm2 = GroupNorm(out_channels, groups, eps=eps, param_dtype=param_dtype, rngs=rngs)
    self.conv2 = Conv2d(out_channels, out_channels, 3, **kw)
    self.conv_shortcut = (Conv2d(in_channels, out_channels, 1, padding=0, **kw)
                          if in_channels != out_channels else None)

  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    h = self.conv1(self.act(self.norm1(x)))
    t = None
    if self.time_emb_proj is not None and temb is not None:
      t = self.time_emb_proj(self.act(temb))[:, None, None, :]
    if self.time_embedding_norm == "scale_shift" and t is not None:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = self.norm2(h) * (1 + scale) + shift
    else:
      h = self.norm2(h if t is None else h + t)
    h = self.conv2(self.act(h))
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    y = shortcut.astype(h.dtype) + h
    return y if self.output_scale_factor == 1.0 else y / self.output_scale_factor


class Downsample2D(nnx.Module):
  """Stride-2 3x3 conv: [B, H, W, C] -> [B, ⌈H/2⌉, ⌈W/2⌉, C_out] (padding 1 on every side).

  `padding=0` (the autoencoder encoder's choice) pads one zero row/column at the bottom/right
  only, as diffusers does, so even sizes still halve exactly.
  """

  def __init__(self, channels: int, out_channels: int | None = None, *, padding: int = 1,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.padding = padding
    self.conv = Conv2d(channels, out_channels or channels, 3, stride=2, padding=padding, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.padding == 0:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return self.conv(x)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of x [B, H, W, C] to [B, size[0], size[1], C].

  Source index ⌊i · in / out⌋ (clipped), computed in float32 as torch's `F.interpolate(size=...,
  mode="nearest")`; for exactly twice the size this is `jnp.repeat(x, 2)` along H and W.
  """
  out = x
  for axis, n_out in zip((1, 2), size):
    n_in = x.shape[axis]
    if n_out == 2 * n_in:
      out = jnp.repeat(out, 2, axis=axis)
    elif n_out != n_in:
      scale = np.float32(n_in) / np.float32(n_out)
      index = np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int32), n_in - 1)
      out = jnp.take(out, jnp.asarray(index), axis=axis)
  return out


class Upsample2D(nnx.Module):
  """Nearest up-sampling then a 3x3 conv: [B, H, W, C] -> [B, 2H, 2W, C_out], or to `output_size`
  (the UNet passes the skip connection's size when the input is not a multiple of its total
  down-sampling factor)."""

  def __init__(self, channels: int, out_channels: int | None = None, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.conv = Conv2d(channels, out_channels or channels, 3, dtype=dtype, param_dtype=param_dtype,
                       rngs=rngs)

  def __call__(self, x: jax.Array, output_size: tuple[int, int] | None = None) -> jax.Array:
    size = output_size or (2 * x.shape[1], 2 * x.shape[2])
    return self.conv(nearest_resize(x, tuple(size)))
