"""Rotary position embeddings (RoPE) in the Hugging Face "rotate half" layout.

Frequency schedules follow transformers' `rope_type`: "default", "linear" (positions divided by
`factor`) and "llama3" (wavelength-dependent smoothing between `low_freq_factor` and
`high_freq_factor` around `original_max_position_embeddings`). `partial_rotary_factor` < 1 rotates
only the first `rotary_dim` channels of each head (Phi-style).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.errors import ConfigError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_inv_freq(rotary_dim: int, theta: float, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
  """Inverse frequencies [rotary_dim // 2] (float32) for the given rope type."""
  inv_freq = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
  rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
  if rope_type == "default":
    return inv_freq.astype(np.float32)
  if rope_type == "linear":
    return (inv_freq / float(scaling["factor"])).astype(np.float32)
  if rope_type == "llama3":
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_len = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)
  raise ConfigError(f"unsupported rope_type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """positions [B, T] (int) -> (cos, sin), each [B, T, rotary_dim] float32."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates the first cos.shape[-1] channels of x [B, T, N, H]; cos/sin are [B, T, R]."""
  rot = cos.shape[-1]
  x_rot, x_pass = x[..., :rot], x[..., rot:]
  half = rot // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  out = (x_rot.astype(jnp.float32) * c + rotated.astype(jnp.float32) * s).astype(x.dtype)
  return jnp.concatenate([out, x_pass], axis=-1) if x_pass.shape[-1] else out
