"""Rotary position embeddings (RoPE) in the Hugging Face "rotate half" layout.

Frequency schedules follow transformers' `rope_type`: "default", "linear" (positions divided by
`factor`), "llama3" (wavelength-dependent smoothing between `low_freq_factor` and
`high_freq_factor` around `original_max_position_embeddings`) and "longrope" (Phi-3.5: per-frequency
divisors `short_factor` while the sequence fits `original_max_position_embeddings`, `long_factor`
beyond it, and cos/sin scaled by `attention_factor`, default sqrt(1 + ln s / ln L_orig) with
s = max_position_embeddings / L_orig, or `factor` when given). `partial_rotary_factor` < 1 rotates
only the first `rotary_dim` channels of each head (Phi-style).

`rope_tables(positions, rotary_dim, theta, scaling, max_position_embeddings)` is the one entry point
that handles every type; `rope_inv_freq` + `rope_cos_sin` remain for the fixed schedules.

M-RoPE (Qwen2-VL / Qwen2.5-VL, `mrope_section`, e.g. (16, 24, 24) for head_dim 128): positions are
[3, B, T] (temporal, height, width). The rotary_dim / 2 frequencies are cut into consecutive chunks of
the section sizes, and chunk i takes its angles from position axis i mod 3 (`mrope_cos_sin`). A token
with the same id on all three axes (every text token) gets exactly the 1-D rotation.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.errors import ConfigError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
LONGROPE_KEYS = ("short_factor", "long_factor", "original_max_position_embeddings")


def rope_type_of(scaling: Mapping[str, Any] | None) -> str:
  return (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))


def rope_inv_freq(rotary_dim: int, theta: float, scaling: Mapping[str, Any] | None = None, *,
                  long: bool = False) -> np.ndarray:
  """Inverse frequencies [rotary_dim // 2] (float32) for the given rope type ("longrope": the short
  set, or the long one with `long=True`)."""
  inv_freq = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
  rope_type = rope_type_of(scaling)
  if rope_type == "longrope":
    _check_longrope(scaling, rotary_dim)
    ext = np.asarray(scaling["long_factor" if long else "short_factor"], np.float32)
    base = theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim)
    return (1.0 / (ext * base)).astype(np.float32)
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


def _check_longrope(scaling: Mapping[str, Any], rotary_dim: int) -> None:
  missing = [k for k in LONGROPE_KEYS if scaling.get(k) is None]
  if missing:
    raise ConfigError(f"rope_scaling: longrope needs {missing[0]!r}")
  for key in ("short_factor", "long_factor"):
    if len(scaling[key]) != rotary_dim // 2:
      raise ConfigError(f"rope_scaling.{key} has {len(scaling[key])} entries; longrope needs "
                        f"rotary_dim // 2 = {rotary_dim // 2}")


def longrope_attention_factor(scaling: Mapping[str, Any], max_position_embeddings: int | None) -> float:
  """The cos/sin multiplier of longrope: `attention_factor`, else sqrt(1 + ln s / ln L_orig) for
  s = `factor` (default max_position_embeddings / L_orig), 1 when s <= 1 (as transformers)."""
  if scaling.get("attention_factor") is not None:
    return float(scaling["attention_factor"])
  orig = float(scaling["original_max_position_embeddings"])
  factor = scaling.get("factor")
  if factor is None:
    if max_position_embeddings is None:
      raise ConfigError("rope_scaling: longrope needs 'factor' or max_position_embeddings")
    factor = max_position_embeddings / orig
  factor = float(factor)
  return 1.0 if factor <= 1.0 else math.sqrt(1.0 + math.log(factor) / math.log(orig))


def rope_tables(positions: jax.Array, rotary_dim: int, theta: float,
                scaling: Mapping[str, Any] | None = None,
                max_position_embeddings: int | None = None,
                mrope_section: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
  """positions [B, T] (int) -> (cos, sin), each [B, T, rotary_dim] float32, for every rope type.
  With `mrope_section`, positions are [3, B, T] (or [B, T], the same id on every axis): M-RoPE.

  "longrope" picks one frequency set for the whole call, as transformers' Phi-3 does: the long
  factors when max(positions) + 1 > original_max_position_embeddings, else the short ones (a traced
  select, so it works under jit; with a KV cache each call decides for its own positions)."""
  if mrope_section is not None:
    if rope_type_of(scaling) == "longrope":
      raise ConfigError("rope_scaling: longrope cannot be combined with mrope_section")
    if positions.ndim == 2:
      positions = jnp.broadcast_to(positions[None], (3,) + positions.shape)
    return mrope_cos_sin(positions, rope_inv_freq(rotary_dim, theta, scaling), mrope_section)
  if rope_type_of(scaling) != "longrope":
    return rope_cos_sin(positions, rope_inv_freq(rotary_dim, theta, scaling))
  short = rope_inv_freq(rotary_dim, theta, scaling)
  long = rope_inv_freq(rotary_dim, theta, scaling, long=True)
  seq_len = jnp.max(positions) + 1
  inv_freq = jnp.where(seq_len > int(scaling["original_max_position_embeddings"]), long, short)
  cos, sin = rope_cos_sin(positions, inv_freq)
  attn = longrope_attention_factor(scaling, max_position_embeddings)
  return cos * attn, sin * attn


def rope_cos_sin(positions: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """positions [B, T] (int) -> (cos, sin), each [B, T, rotary_dim] float32."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def mrope_axes(inv_freq_size: int, mrope_section: tuple[int, ...]) -> np.ndarray:
  """Which position axis (0 temporal, 1 height, 2 width) drives each of the `inv_freq_size`
  frequencies: consecutive chunks of the section sizes, chunk i from axis i mod 3 -> [inv_freq_size]."""
  section = tuple(int(s) for s in mrope_section)
  if sum(section) != inv_freq_size or min(section, default=0) < 0:
    raise ConfigError(f"mrope_section {list(section)} must be non-negative and sum to rotary_dim // 2 = "
                      f"{inv_freq_size}")
  return np.concatenate([np.full(s, i % 3, np.int32) for i, s in enumerate(section)])


def mrope_cos_sin(positions: jax.Array, inv_freq: np.ndarray,
                  mrope_section: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """M-RoPE: positions [3, B, T] (int) -> (cos, sin), each [B, T, rotary_dim] float32.

  Frequency j rotates by positions[axis_j] · inv_freq[j] (`mrope_axes`); the angles are then
  repeated twice, as in `rope_cos_sin` (the "rotate half" layout)."""
  if positions.ndim != 3 or positions.shape[0] != 3:
    raise ValueError(f"M-RoPE positions {tuple(positions.shape)}: expected [3, B, T]")
  axes = mrope_axes(len(inv_freq), mrope_section)
  per_freq = jnp.moveaxis(positions[axes], 0, -1)                                # [B, T, R/2]
  freqs = per_freq.astype(jnp.float32) * jnp.asarray(inv_freq)
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
