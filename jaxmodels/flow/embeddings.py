"""Embedding helpers shared by the diffusion transformers (Lumina-Next, SANA, ...).

* `timestep_embedding`: the sinusoidal timestep features of diffusers' `get_timestep_embedding`.
* `TimestepEmbedding`: Linear -> act -> Linear on those features (diffusers `TimestepEmbedding`).
* `TimestepEmbedder`: both together, t [B] -> [B, D].
* `TextProjection`: Linear -> act -> Linear on caption tokens (diffusers `PixArtAlphaTextProjection`).
* `patchify` / `unpatchify`: NHWC latents <-> per-patch feature vectors, with the feature orders
  diffusers' DiTs use.

Parameter names (`linear_1`, `linear_2`) follow diffusers so HF key maps stay one-to-one.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers.activations import get_activation
from jaxmodels.layers.linear import Linear


def timestep_embedding(timesteps: jax.Array, dim: int, *, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, scale: float = 1.0,
                       max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features of (possibly fractional) timesteps, in float32.

  With half = dim // 2 and freqs_i = exp(−ln(max_period)·i / (half − downscale_freq_shift)),
  the features are [sin(scale·t·freqs), cos(scale·t·freqs)], or [cos, sin] when
  `flip_sin_to_cos` (Lumina, SANA, SD3 all use flip=True, shift=0). An odd `dim` is zero-padded.

  Args:
    timesteps: [B] timesteps (any float scale; the networks here get 0..1000 or 0..1).
    dim: number of output features.
    flip_sin_to_cos: put the cosine half first.
    downscale_freq_shift: the frequency-spacing offset of diffusers (0 or 1).
    scale: multiplier on the angles.
    max_period: the longest period.

  Returns:
    [B, dim] float32.
  """
  timesteps = jnp.asarray(timesteps)
  if timesteps.ndim != 1:
    raise ValueError(f"timesteps must have shape [B], got {timesteps.shape}")
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
  angles = scale * timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nnx.Module):
  """linear_2(act(linear_1(x))): [B, F] -> [B, D] (both with bias, as diffusers)."""

  def __init__(self, in_dim: int, dim: int, *, out_dim: int | None = None, activation: str = "silu",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = Linear(in_dim, dim, axes=(None, "embed"), **kw)
    self.linear_2 = Linear(dim, out_dim or dim, axes=("embed", None), **kw)
    self.act = get_activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(self.act(self.linear_1(x)))


class TimestepEmbedder(nnx.Module):
  """t [B] -> [B, D]: `timestep_embedding` (flip=True, shift=0) then a `TimestepEmbedding` MLP.

  The MLP lives at `self.timestep_embedder` (diffusers' name inside its combined embedders); the
  sinusoid has no parameters.
  """

  def __init__(self, dim: int, *, frequency_dim: int = 256, activation: str = "silu",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.frequency_dim, self.dtype = frequency_dim, dtype
    self.timestep_embedder = TimestepEmbedding(frequency_dim, dim, activation=activation, dtype=dtype,
                                               param_dtype=param_dtype, rngs=rngs)

  def __call__(self, timesteps: jax.Array) -> jax.Array:
    freqs = timestep_embedding(timesteps, self.frequency_dim)
    return self.timestep_embedder(freqs.astype(self.dtype))


class TextProjection(nnx.Module):
  """Caption projection linear_2(act(linear_1(c))): [..., C_in] -> [..., D_out].

  diffusers' `PixArtAlphaTextProjection` (default act "gelu_tanh" = GELU with the tanh
  approximation); used by PixArt, SANA and BLIP3-o's NextDiT-CrossAttn.
  """

  def __init__(self, in_dim: int, hidden: int, out_dim: int | None = None, *,
               activation: str = "gelu_pytorch_tanh", dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = Linear(in_dim, hidden, axes=(None, "mlp"), **kw)
    self.linear_2 = Linear(hidden, out_dim or hidden, axes=("mlp", "embed"), **kw)
    self.act = get_activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(self.act(self.linear_1(x)))


def patchify(x: jax.Array, patch: int, *, channels_first: bool = False) -> jax.Array:
  """NHWC latents -> per-patch features.

  Args:
    x: [B, H, W, C] with H and W divisible by `patch`.
    patch: patch side p.
    channels_first: order each patch's features as (C, p_h, p_w) — the order of diffusers'
      `LuminaPatchEmbed`, which flattens an NCHW patch — instead of (p_h, p_w, C).

  Returns:
    [B, H/p, W/p, p·p·C].
  """
  b, h, w, c = x.shape
  if h % patch or w % patch:
    raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {patch}")
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  x = x.transpose(0, 1, 3, 5, 2, 4) if channels_first else x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // patch, w // patch, patch * patch * c)


def unpatchify(tokens: jax.Array, patch: int, channels: int) -> jax.Array:
  """Per-patch features ordered (p_h, p_w, C) -> NHWC, the output layout of Lumina/SANA/DiT heads.

  Args:
    tokens: [B, H/p, W/p, p·p·C].
    patch: patch side p.
    channels: C.

  Returns:
    [B, H, W, C].
  """
  b, gh, gw, f = tokens.shape
  if f != patch * patch * channels:
    raise ValueError(f"token width {f} != patch² · channels = {patch * patch * channels}")
  x = tokens.reshape(b, gh, gw, patch, patch, channels).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, gh * patch, gw * patch, channels)
