"""Group normalisation over channels-last arrays (torch `nn.GroupNorm` on NHWC data)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers.linear import param


class GroupNorm(nnx.Module):
  """Normalises each of `num_groups` consecutive channel groups over the group's channels and all
  positions, then applies a per-channel scale and bias (torch `GroupNorm(affine=True)`).

  x [B, ..., C] -> [B, ..., C] with C = `channels` divisible by `num_groups`; every axis between the
  batch and the channels (H, W for images, T for sequences) is a position axis. Statistics (mean,
  biased variance) are computed in float32 and the result is cast back to x's dtype.
  """

  def __init__(self, channels: int, num_groups: int, *, eps: float = 1e-5, axes=("conv_out",),
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    if channels % num_groups:
      raise ValueError(f"GroupNorm: {channels} channels are not divisible into {num_groups} groups")
    self.num_groups, self.eps = num_groups, eps
    self.scale = param(rngs, nnx.initializers.ones, (channels,), axes, param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (channels,), axes, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    b, c = x.shape[0], x.shape[-1]
    h = x.astype(jnp.float32).reshape(b, -1, self.num_groups, c // self.num_groups)
    mean = jnp.mean(h, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=(1, 3), keepdims=True)
    h = ((h - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    y = h * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)
