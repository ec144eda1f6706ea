"""Building blocks of the Lumina-Next DiT (see `jaxmodels.flow.lumina` for the model).

Shapes: tokens x [B, T, D]; caption context [B, L, D_ctx]; conditioning vector temb [B, D_c] with
D_c = min(D, 1024); per-head activations [B, T, N, H] (N query heads, K key/value heads, H = D / N).

Lumina specifics implemented here:
  * 2D RoPE with complex frequencies and *interleaved* axes: for head dim H each axis gets H/4
    frequencies θ_i = (θ·ntk)^(−4i/H) / linear, and the H/2 complex pairs of a head are ordered
    [h₀, w₀, h₁, w₁, ...]; channel pairs (0, 1), (2, 3), ... of q/k are the complex numbers.
  * qk-norm is a LayerNorm (with affine) over *all* heads of q (N·H) and of k (K·H), before RoPE.
  * Self- and cross-attention share the query input; self-attention has no output projection; the
    cross-attention output is gated per head by tanh(gate), added to the self-attention output and
    the sum goes through the cross-attention's `to_out` — the block's only output projection.
  * adaRMS-zero modulation, sandwich RMSNorms, tanh-gated residuals, SwiGLU feed-forward.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels import sharding
from jaxmodels.flow.embeddings import TimestepEmbedding, timestep_embedding
from jaxmodels.layers.attention import dot_product_attention
from jaxmodels.layers.linear import Linear, param
from jaxmodels.layers.mlp import GatedMLP
from jaxmodels.layers.norms import LayerNorm, RMSNorm, layer_norm

ADA_COND_MAX = 1024   # Lumina's conditioning width is min(hidden_size, 1024)


# ----------------------------------------------------------------------------------------------
# 2D rotary embedding.


def lumina_rope_2d(head_dim: int, grid_h: int, grid_w: int, *, theta: float = 10000.0,
                   linear_factor: float = 1.0, ntk_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Angles of diffusers' `get_2d_rotary_pos_embed_lumina` for a grid_h × grid_w token grid.

  Positions are the integer row/column indices (row-major tokens). Per axis, H/4 inverse
  frequencies (θ·ntk_factor)^(−2i/(H/2)) / linear_factor, i = 0..H/4−1, are computed in float32
  as diffusers does; the row and column angles are interleaved. The Lumina pipeline builds the
  table on a 384×384 grid and slices [:grid_h, :grid_w], which gives the same numbers.

  The pipeline sets linear_factor = s for t < `scaling_watershed` and ntk_factor = s after it,
  with s = sqrt(H_img·W_img) / default_size (s = 1 at the trained resolution).

  Args:
    head_dim: H, divisible by 4.
    grid_h: token rows.
    grid_w: token columns.
    theta: RoPE base.
    linear_factor: positions are divided by this (position interpolation).
    ntk_factor: the base is multiplied by this (NTK-aware scaling).

  Returns:
    (cos, sin), each float32 [grid_h·grid_w, H/2].
  """
  if head_dim % 4:
    raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
  axis_dim = head_dim // 2
  base = np.float32(theta * ntk_factor)
  inv_freq = (np.float32(1.0) / base ** (np.arange(0, axis_dim, 2, dtype=np.float32) / np.float32(axis_dim))
              / np.float32(linear_factor)).astype(np.float32)                         # [H/4]
  rows = np.arange(grid_h, dtype=np.float32)[:, None] * inv_freq[None, :]             # [gh, H/4]
  cols = np.arange(grid_w, dtype=np.float32)[:, None] * inv_freq[None, :]             # [gw, H/4]
  quarter = inv_freq.shape[0]
  rows = np.broadcast_to(rows[:, None, :], (grid_h, grid_w, quarter))
  cols = np.broadcast_to(cols[None, :, :], (grid_h, grid_w, quarter))
  angles = np.stack([rows, cols], axis=-1).reshape(grid_h * grid_w, 2 * quarter)
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_complex_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates channel pairs (2j, 2j+1) of x [B, T, N, H] as complex numbers by angles [T, H/2]."""
  b, t, n, h = x.shape
  xf = x.astype(jnp.float32).reshape(b, t, n, h // 2, 2)
  re, im = xf[..., 0], xf[..., 1]
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([re * c - im * s, re * s + im * c], axis=-1)
  return out.reshape(b, t, n, h).astype(x.dtype)


# ----------------------------------------------------------------------------------------------
# Norms and embeddings.


class HeadsLayerNorm(nnx.Module):
  """LayerNorm (eps, affine) jointly over the last two axes [..., N, H] (Lumina's
  "layer_norm_across_heads"); scale and bias are [N, H] (HF stores them flat, [N·H])."""

  def __init__(self, num_heads: int, head_dim: int, *, eps: float = 1e-5, axes=("heads", "head_dim"),
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (num_heads, head_dim), axes, param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (num_heads, head_dim), axes, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(-2, -1), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(-2, -1), keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


class CombinedTimestepCaptionEmbedding(nnx.Module):
  """temb = MLP(sinusoid₂₅₆(t)) + Linear(LayerNorm(masked mean of the caption over tokens)).

  diffusers' `LuminaCombinedTimestepCaptionEmbedding`: t [B], caption [B, L, D_ctx],
  mask [B, L] -> [B, D_c]. A row whose mask is all zeros divides by zero (NaN), as in diffusers.
  """

  def __init__(self, dim: int, context_dim: int, *, frequency_dim: int = 256, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.frequency_dim, self.dtype = frequency_dim, dtype
    self.timestep_embedder = TimestepEmbedding(frequency_dim, dim, dtype=dtype, param_dtype=param_dtype,
                                               rngs=rngs)
    self.caption_norm = LayerNorm(context_dim, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
    self.caption_linear = Linear(context_dim, dim, axes=("embed", None), use_bias=True, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)

  def __call__(self, timesteps: jax.Array, caption: jax.Array, caption_mask: jax.Array) -> jax.Array:
    t_emb = self.timestep_embedder(timestep_embedding(timesteps, self.frequency_dim).astype(self.dtype))
    m = caption_mask.astype(jnp.float32)[..., None]
    pooled = (caption.astype(jnp.float32) * m).sum(axis=1) / m.sum(axis=1)
    c_emb = self.caption_linear(self.caption_norm(pooled.astype(caption.dtype)))
    return t_emb + c_emb


class AdaRMSNormZero(nnx.Module):
  """diffusers' `LuminaRMSNormZero`: (scale_msa, gate_msa, scale_mlp, gate_mlp) = Linear(SiLU(temb))
  and x̃ = RMSNorm(x)·(1 + scale_msa). The Linear's kernel is [D_c, 4, D] (HF: [4·D, D_c])."""

  def __init__(self, dim: int, cond_dim: int, *, eps: float, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.linear = Linear(cond_dim, (4, dim), axes=(None, None, "embed"), use_bias=True, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
    self.norm = RMSNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, temb: jax.Array):
    """x [B, T, D], temb [B, D_c] -> (x̃ [B, T, D], gate_msa, scale_mlp, gate_mlp each [B, D])."""
    mod = self.linear(jax.nn.silu(temb))
    scale_msa, gate_msa, scale_mlp, gate_mlp = (mod[:, i] for i in range(4))
    return self.norm(x) * (1 + scale_msa[:, None]), gate_msa, scale_mlp, gate_mlp


class AdaLayerNormOut(nnx.Module):
  """diffusers' `LuminaLayerNormContinuous` as Lumina uses it: LayerNorm(no affine, eps)(x)·
  (1 + linear_1(SiLU(temb))) -> linear_2 (scale only, no shift): [B, T, D] -> [B, T, out_dim]."""

  def __init__(self, dim: int, cond_dim: int, out_dim: int, *, eps: float = 1e-6, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.eps = eps
    self.linear_1 = Linear(cond_dim, dim, axes=(None, "embed"), **kw)
    self.linear_2 = Linear(dim, out_dim, axes=("embed", None), **kw)

  def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:
    scale = self.linear_1(jax.nn.silu(temb))
    return self.linear_2(layer_norm(x, self.eps) * (1 + scale[:, None]))


# ----------------------------------------------------------------------------------------------
# Attention and the block.


class LuminaAttention(nnx.Module):
  """Projections + qk LayerNorm + complex RoPE + SDPA of diffusers' `LuminaAttnProcessor2_0`.

  Returns the per-head output [B, T, N, H] *before* any output projection; `to_out` (present only
  where `out_proj`) is applied by the block to the mixed self + cross output.
  """

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *, kv_dim: int,
               qk_norm: bool, out_proj: bool, impl: str = "einsum", dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.head_dim, self.impl = head_dim, impl
    self.to_q = Linear(dim, (num_heads, head_dim), axes=("embed", "heads", "head_dim"), **kw)
    self.to_k = Linear(kv_dim, (num_kv_heads, head_dim), axes=("embed", "kv_heads", "head_dim"), **kw)
    self.to_v = Linear(kv_dim, (num_kv_heads, head_dim), axes=("embed", "kv_heads", "head_dim"), **kw)
    if qk_norm:
      self.norm_q = HeadsLayerNorm(num_heads, head_dim, param_dtype=param_dtype, rngs=rngs)
      self.norm_k = HeadsLayerNorm(num_kv_heads, head_dim, axes=("kv_heads", "head_dim"),
                                   param_dtype=param_dtype, rngs=rngs)
    else:
      self.norm_q = self.norm_k = None
    self.to_out = Linear((num_heads, head_dim), dim, axes=("heads", "head_dim", "embed"), **kw) \
        if out_proj else None

  def __call__(self, x: jax.Array, context: jax.Array, *, mask: jax.Array | None,
               q_rope: tuple[jax.Array, jax.Array] | None, k_rope: tuple[jax.Array, jax.Array] | None,
               logit_factor: jax.Array | None = None) -> jax.Array:
    """x [B, T, D] (queries), context [B, S, D_kv] (keys/values), mask [B, 1, 1, S] bool or None.

    The softmax scale is H^−½, times `logit_factor` (a scalar, folded into q) when given.
    """
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    if self.norm_q is not None:
      q, k = self.norm_q(q), self.norm_k(k)
    if q_rope is not None:
      q = apply_complex_rope(q, *q_rope)
    if k_rope is not None:
      k = apply_complex_rope(k, *k_rope)
    if logit_factor is not None:
      q = (q.astype(jnp.float32) * logit_factor).astype(q.dtype)
    q = sharding.constrain(q, ("act_batch", "act_length", "act_heads", None))
    return dot_product_attention(q, k, v, mask, scale=self.head_dim ** -0.5, impl=self.impl)


class BlockInputs(NamedTuple):
  """Per-call conditioning shared by every block (passed through `BlockStack`'s `mask` slot)."""
  temb: jax.Array            # [B, D_c]
  context: jax.Array         # [B, L, D_ctx] caption (after the optional caption projection)
  context_mask: jax.Array    # [B, 1, 1, L] bool
  self_logit_factor: jax.Array | None   # [] proportional-attention factor of self-attention, or None


class LuminaBlock(nnx.Module):
  """diffusers' `LuminaNextDiTBlock`: [B, T, D] -> [B, T, D].

      x̃, g₁, s₂, g₂ = adaRMS-zero(x, temb)
      a = attn1(x̃, x̃; RoPE q,k) + tanh(gate) ⊙ attn2(x̃, RMSNorm(ctx); RoPE q)      (per head)
      x = x + tanh(g₁)·norm2(attn2.to_out(a))
      x = x + tanh(g₂)·ffn_norm2(SwiGLU(ffn_norm1(x)·(1 + s₂)))
  """

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, ffn_dim: int, context_dim: int, *,
               cond_dim: int, norm_eps: float, qk_norm: bool, attention_impl: str = "einsum",
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm_kw = dict(eps=norm_eps, param_dtype=param_dtype, rngs=rngs)
    head_dim = dim // num_heads
    self.head_dim = head_dim
    self.gate = param(rngs, nnx.initializers.zeros, (num_heads,), ("heads",), param_dtype)
    attn_kw = dict(qk_norm=qk_norm, impl=attention_impl, **kw)
    self.attn1 = LuminaAttention(dim, num_heads, num_kv_heads, head_dim, kv_dim=dim, out_proj=False,
                                 **attn_kw)
    self.attn2 = LuminaAttention(dim, num_heads, num_kv_heads, head_dim, kv_dim=context_dim,
                                 out_proj=True, **attn_kw)
    self.feed_forward = GatedMLP(dim, ffn_dim, activation="silu", **kw)
    self.norm1 = AdaRMSNormZero(dim, cond_dim, eps=norm_eps, **kw)
    self.ffn_norm1 = RMSNorm(dim, **norm_kw)
    self.norm2 = RMSNorm(dim, **norm_kw)
    self.ffn_norm2 = RMSNorm(dim, **norm_kw)
    self.norm1_context = RMSNorm(context_dim, **norm_kw)

  def __call__(self, x: jax.Array, *, mask: BlockInputs, rope: tuple[jax.Array, jax.Array],
               cache=None, cache_index=0) -> tuple[jax.Array, None]:
    """`BlockStack` calling convention: the conditioning arrives as `mask` (a `BlockInputs`)."""
    del cache, cache_index
    inputs = mask
    normed, gate_msa, scale_mlp, gate_mlp = self.norm1(x, inputs.temb)
    self_out = self.attn1(normed, normed, mask=None, q_rope=rope, k_rope=rope,
                          logit_factor=inputs.self_logit_factor)
    context = self.norm1_context(inputs.context)
    cross_out = self.attn2(normed, context, mask=inputs.context_mask, q_rope=rope, k_rope=None)
    gate = jnp.tanh(self.gate[...].astype(jnp.float32)).astype(cross_out.dtype)
    mixed = self_out + cross_out * gate[None, None, :, None]
    h = self.attn2.to_out(mixed)
    x = x + jnp.tanh(gate_msa)[:, None] * self.norm2(h)
    mlp = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp[:, None]))
    x = x + jnp.tanh(gate_mlp)[:, None] * self.ffn_norm2(mlp)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed")), None


def proportional_attention_factor(seq_len: int, base_sequence_length: int | None) -> float | None:
  """sqrt(log_base(T)), the factor on the self-attention logits when the Lumina pipeline passes
  `base_sequence_length` ("proportional attention" above the trained resolution); else None."""
  if base_sequence_length is None:
    return None
  return math.sqrt(math.log(seq_len, base_sequence_length))
