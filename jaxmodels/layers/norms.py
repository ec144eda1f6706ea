"""RMSNorm and LayerNorm; statistics are computed in float32 and cast back to the input dtype."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers.linear import param


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x², -1) + eps) · scale, over the last axis of size `dim`."""

  def __init__(self, dim: int, *, eps: float = 1e-6, axes=("embed",), param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), axes, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    # Like HF: normalise in f32, cast to the input dtype, then multiply by the weight.
    return self.scale[...].astype(dtype) * x.astype(dtype)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Parameter-free (x − mean) / sqrt(var + eps) over the last axis; f32 statistics, input dtype out."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class LayerNorm(nnx.Module):
  """y = (x − mean) / sqrt(var + eps) · scale + bias, over the last axis of size `dim`."""

  def __init__(self, dim: int, *, eps: float = 1e-5, use_bias: bool = True, axes=("embed",),
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), axes, param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), axes, param_dtype) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    y = layer_norm(x.astype(jnp.float32), self.eps) * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


def make_norm(kind: str, dim: int, *, eps: float, param_dtype=jnp.float32, axes=("embed",),
              rngs: nnx.Rngs | None = None) -> nnx.Module:
  """`kind` is "rms" or "layer"."""
  if kind == "rms":
    return RMSNorm(dim, eps=eps, axes=axes, param_dtype=param_dtype, rngs=rngs)
  if kind == "layer":
    return LayerNorm(dim, eps=eps, axes=axes, param_dtype=param_dtype, rngs=rngs)
  raise ValueError(f"unknown norm kind {kind!r} (expected 'rms' or 'layer')")
