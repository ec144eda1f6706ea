"""Connectors from LLM hidden states to a DiT condition.

  "identity"     h                                                     (BLIP3-o: DiT projects itself)
  "mlp"          Linear -> GELU -> Linear                               (Pisces / shapes_tiny)
  "mlp_norm"     CondProjection: Linear -> GELU(tanh) -> Linear -> RMSNorm(γ₀)   (BLIP3o-NEXT, spec §3.1)
  "transformer"  QKNormEncoder (bidirectional Qwen2-style, spec §4.1) then CondProjection (MetaQuery
                 "Enc-Proj")

MetaQuery encoder layer (x: [B, N, D], positions 0..N−1, no mask, no causal mask, no final norm):
    q, k, v = x̂Wq + bq, x̂Wk + bk, x̂Wv + bv         x̂ = RMSNorm(x)   (q/k/v with bias, o without)
    q, k = RoPE(q), RoPE(k)                           θ = 10000 (Qwen2Config default)
    q ← q / ‖q‖₂ · γ_q · √d_h,  k ← k / ‖k‖₂ · γ_k · √d_h    per head, AFTER RoPE (spec §9.6)
    γ: [d_h] shared by the heads, or with `per_head_gamma` [heads, d_h] (the released MetaQuery stores
    q_norm.gamma / k_norm.gamma as [heads, 1, d_h])
    x ← x + o(softmax(q kᵀ / √d_h) v);   x ← x + SwiGLU(RMSNorm(x))   (MLP 4·D)
Init std 0.014 for every kernel (spec §4.1).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers import GatedMLP, Linear, RMSNorm, get_activation, param
from jaxmodels.layers.attention import dot_product_attention
from jaxmodels.layers.rotary import apply_rope, rope_cos_sin, rope_inv_freq

SQRT_5_5 = math.sqrt(5.5)


class CondProjection(nnx.Module):
  """Linear(H -> C) -> GELU(tanh) -> Linear(C -> C) -> RMSNorm(C, eps 1e-5, weight init `norm_init`)."""

  def __init__(self, in_dim: int, out_dim: int, *, norm_init: float = SQRT_5_5, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(in_dim, out_dim, axes=("embed", "mlp"), **kw)
    self.fc2 = Linear(out_dim, out_dim, axes=("mlp", "embed"), **kw)
    self.norm = RMSNorm(out_dim, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
    self.norm.scale[...] = jnp.full((out_dim,), norm_init, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.fc2(get_activation("gelu_pytorch_tanh")(self.fc1(x))))


def _l2_normalise(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  xf = x.astype(jnp.float32)
  return (xf / jnp.maximum(jnp.linalg.norm(xf, axis=-1, keepdims=True), eps)).astype(x.dtype)


class QKNormEncoderLayer(nnx.Module):
  """One bidirectional Qwen2-style layer with L2 QK-norm after RoPE (see the module docstring)."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, eps: float = 1e-6,
               per_head_gamma: bool = False, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    hd = dim // num_heads
    self.num_heads, self.head_dim = num_heads, hd
    init = nnx.initializers.normal(0.014)
    kw = dict(dtype=dtype, param_dtype=param_dtype, kernel_init=init, rngs=rngs)
    self.attn_norm = RMSNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
    self.q = Linear(dim, (num_heads, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.k = Linear(dim, (num_heads, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.v = Linear(dim, (num_heads, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.o = Linear((num_heads, hd), dim, axes=("heads", "head_dim", "embed"), **kw)
    gamma_shape, gamma_axes = ((num_heads, hd), ("heads", "head_dim")) if per_head_gamma else \
        ((hd,), ("head_dim",))
    self.q_gamma = param(rngs, nnx.initializers.ones, gamma_shape, gamma_axes, param_dtype)
    self.k_gamma = param(rngs, nnx.initializers.ones, gamma_shape, gamma_axes, param_dtype)
    self.mlp_norm = RMSNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
    self.mlp = GatedMLP(dim, mlp_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    for lin in (self.mlp.gate, self.mlp.up, self.mlp.down):
      lin.kernel[...] = init(rngs.params(), lin.kernel.shape, param_dtype)

  def __call__(self, x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    h = self.attn_norm(x)
    q, k, v = self.q(h), self.k(h), self.v(h)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    scale = math.sqrt(self.head_dim)
    q = _l2_normalise(q) * self.q_gamma[...].astype(q.dtype) * scale
    k = _l2_normalise(k) * self.k_gamma[...].astype(k.dtype) * scale
    a = dot_product_attention(q, k, v, None, scale=self.head_dim ** -0.5)
    x = x + self.o(a)
    return x + self.mlp(self.mlp_norm(x))


class QKNormEncoder(nnx.Module):
  """MetaQuery's bidirectional connector encoder: [B, N, D] -> [B, N, D] (no final norm)."""

  def __init__(self, dim: int, num_layers: int, *, head_dim: int = 64, rope_theta: float = 10000.0,
               per_head_gamma: bool = False, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.head_dim, self.rope_theta = head_dim, rope_theta
    heads = max(dim // head_dim, 1)
    self.layers = nnx.List([QKNormEncoderLayer(dim, heads, 4 * dim, per_head_gamma=per_head_gamma, dtype=dtype,
                                               param_dtype=param_dtype, rngs=rngs) for _ in range(num_layers)])

  def __call__(self, x: jax.Array) -> jax.Array:
    b, n = x.shape[:2]
    hd = self.layers[0].head_dim
    positions = jnp.broadcast_to(jnp.arange(n)[None], (b, n))
    rope = rope_cos_sin(positions, rope_inv_freq(hd, self.rope_theta))
    for layer in self.layers:
      x = layer(x, rope)
    return x


class Connector(nnx.Module):
  """Query hidden states [B, N, H] -> DiT condition [B, N, C] (kinds in the module docstring)."""

  def __init__(self, kind: str, in_dim: int, out_dim: int, *, num_layers: int = 24,
               norm_init: float = SQRT_5_5, per_head_gamma: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.kind = kind
    self.encoder = (QKNormEncoder(in_dim, num_layers, per_head_gamma=per_head_gamma, **kw)
                    if kind == "transformer" else None)
    if kind in ("transformer", "mlp_norm"):
      self.proj = CondProjection(in_dim, out_dim, norm_init=norm_init, **kw)
    elif kind == "mlp":
      self.proj = None
      self.fc1 = Linear(in_dim, out_dim, axes=("embed", "mlp"), use_bias=True, **kw)
      self.fc2 = Linear(out_dim, out_dim, axes=("mlp", "embed"), use_bias=True, **kw)
    else:
      raise ValueError(f"Connector kind {kind!r} (identity is no module)")

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "mlp":
      return self.fc2(get_activation("gelu")(self.fc1(x)))
    if self.encoder is not None:
      x = self.encoder(x)
    return self.proj(x)

