"""LaTtE-Flow generation stack (spec §5): layerwise timestep experts + timestep-conditioned residual
attention (TCRA), reading a frozen LLM's per-layer hidden states of the prompt.

Layout. L layers (L = the LLM's layer count), split into K groups of M = L/K consecutive layers. Layer
ℓ attends jointly over [LLM layer-ℓ output states of the prompt (keys/values through its own context
projections); the image tokens] (LMFusion-style parallel path). Shared: patch embedding (+ 2-D sin-cos
positions), timestep embedder, final adaLN + output head.

Groups and σ (UNCONFIRMED in the spec; config fields). With u = 1 − σ (the data level of the papers'
convention (B)), group k owns u ∈ [k/K, (k+1)/K), i.e. σ ∈ (1 − (k+1)/K, 1 − k/K]: the noisiest
interval goes to the first (shallowest) group (`noisiest_group="first"`; "last" reverses).
Training (`group_loss`): for every group k, σ is drawn uniformly in its interval and only that group's
layers run; the layerwise loss is the mean of the K groups' flow losses. Sampling: a step at σ runs
only the owning group — M of the L layers (all rows of a sampling step share σ).

TCRA — the exact form chosen here (the papers' equations are UNCONFIRMED):
    S_ℓ   = q_ℓ k_ℓᵀ / √d_h                               pre-softmax logits [B, heads, n, T + n]
    S̃_ℓ   = S_ℓ + tanh(W_ℓ·e(t) + b_ℓ)[b, h] · S̃_{ℓ−1}     per-head gate from the timestep embedding
    A_ℓ   = softmax(S̃_ℓ masked)
S̃_{first layer of a group} uses S̃ = S (no previous layer runs in that step). W_ℓ, b_ℓ start at zero,
so training starts from plain attention. `residual_attention=False` is the off switch (S̃ = S).

Block (adaLN-zero, non-affine LayerNorms):
    x += g₁ · Attn(LN(x)(1+s₁)+b₁ ; context);   x += g₂ · SwiGLU(LN(x)(1+s₂)+b₂)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.flow.embeddings import TimestepEmbedder, patchify, unpatchify
from jaxmodels.flow.sana import sincos_pos_embed
from jaxmodels.layers import GatedMLP, Linear
from jaxmodels.layers.norms import layer_norm


@dataclasses.dataclass(frozen=True)
class LatteConfig:
  hidden_size: int = 1536
  num_layers: int = 28
  num_groups: int = 4
  num_heads: int = 12
  intermediate_size: int = 8960
  context_dim: int = 1536            # the LLM hidden size
  in_channels: int = 32
  patch_size: int = 1
  sample_size: int = 16              # latent side (base grid of the sin-cos positions)
  residual_attention: bool = True    # TCRA on/off
  noisiest_group: str = "first"      # "first" | "last"
  # The group's M layers as straight-line code (True) or a lax.scan over them (False); None: unrolled
  # on a GPU backend only: a GPU runs a scan as a device loop with per-iteration overhead, while on a
  # CPU the unrolled group is slower (BENCHMARKS.md, "Flow sampling").
  unroll_group: bool | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.num_layers % self.num_groups:
      raise ConfigError(f"config.model.dit: num_layers={self.num_layers} is not divisible by "
                        f"num_groups={self.num_groups}")
    if self.noisiest_group not in ("first", "last"):
      raise ConfigError(f"config.model.dit.noisiest_group={self.noisiest_group!r}: 'first' or 'last'")

  @property
  def group_size(self) -> int:
    return self.num_layers // self.num_groups

  @property
  def cross_attention_dim(self) -> int:
    return self.context_dim

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  def replace(self, **kw: Any) -> "LatteConfig":
    return dataclasses.replace(self, **kw)


class LatteLayer(nnx.Module):
  def __init__(self, c: LatteConfig, *, rngs: nnx.Rngs):
    d, h, hd = c.hidden_size, c.num_heads, c.head_dim
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    zeros = nnx.initializers.zeros
    self.q = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.k = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.v = Linear(d, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.ctx_k = Linear(c.context_dim, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.ctx_v = Linear(c.context_dim, (h, hd), axes=("embed", "heads", "head_dim"), use_bias=True, **kw)
    self.o = Linear((h, hd), d, axes=("heads", "head_dim", "embed"), use_bias=True, **kw)
    self.mlp = GatedMLP(d, c.intermediate_size, **kw)
    self.ada = Linear(d, 6 * d, axes=("embed", None), use_bias=True, kernel_init=zeros, **kw)
    self.tcra_gate = Linear(d, h, axes=("embed", None), use_bias=True, kernel_init=zeros, **kw)
    self.head_dim, self.residual = hd, c.residual_attention

  def __call__(self, x, temb, ctx, ctx_mask, prev_logits):
    """x [B,n,D], temb [B,D], ctx [B,T,Dc], ctx_mask [B,T] bool, prev_logits [B,h,n,T+n] ->
    (x, logits S̃)."""
    mod = self.ada(jax.nn.silu(temb))[:, None]
    b1, s1, g1, b2, s2, g2 = jnp.split(mod, 6, axis=-1)
    hdn = layer_norm(x, 1e-6) * (1 + s1) + b1
    q = self.q(hdn)
    k = jnp.concatenate([self.ctx_k(ctx), self.k(hdn)], axis=1)
    v = jnp.concatenate([self.ctx_v(ctx), self.v(hdn)], axis=1)
    logits = jnp.einsum("bnhd,bshd->bhns", q, k, preferred_element_type=jnp.float32) * self.head_dim ** -0.5
    if self.residual:
      gate = jnp.tanh(self.tcra_gate(temb).astype(jnp.float32))[:, :, None, None]
      logits = logits + gate * prev_logits
    keep = jnp.concatenate([ctx_mask, jnp.ones((x.shape[0], x.shape[1]), bool)], axis=1)
    probs = jax.nn.softmax(jnp.where(keep[:, None, None, :], logits, jnp.finfo(jnp.float32).min), -1)
    a = jnp.einsum("bhns,bshd->bnhd", probs.astype(v.dtype), v)
    x = x + g1 * self.o(a)
    x = x + g2 * self.mlp(layer_norm(x, 1e-6) * (1 + s2) + b2)
    return x, logits


class LatteFlow(nnx.Module):
  """velocity(x [B,H,W,C], σ [B], context [B, L, T, Dc], mask [B, T]) -> [B,H,W,C] (see docstring)."""

  def __init__(self, config: LatteConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    d, p = c.hidden_size, c.patch_size
    self.patch_embed = Linear(p * p * c.in_channels, d, axes=(None, "embed"), use_bias=True, **kw)
    self.time_embed = TimestepEmbedder(d, **kw)

    @nnx.split_rngs(splits=c.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(r):
      return LatteLayer(c, rngs=r)

    self.layers = create(rngs)         # parameters stacked [L, ...]
    self.norm_out = Linear(d, 2 * d, axes=("embed", None), use_bias=True,
                           kernel_init=nnx.initializers.zeros, **kw)
    self.proj_out = Linear(d, p * p * c.in_channels, axes=("embed", None), use_bias=True, **kw)

  # ------------------------------------------------------------------ groups
  def group_index(self, sigma: jax.Array) -> jax.Array:
    """σ (scalar) -> index of the group owning it (int32)."""
    k_groups = self.config.num_groups
    k = jnp.clip(jnp.floor((1.0 - sigma) * k_groups), 0, k_groups - 1).astype(jnp.int32)
    return k if self.config.noisiest_group == "first" else k_groups - 1 - k

  def group_sigmas(self, rng: jax.Array, batch: int, k: int) -> jax.Array:
    """[B] σ drawn uniformly in group k's interval."""
    k_groups = self.config.num_groups
    pos = k if self.config.noisiest_group == "first" else k_groups - 1 - k
    r = jax.random.uniform(rng, (batch,), jnp.float32)
    return 1.0 - (pos + r) / k_groups

  # ------------------------------------------------------------------ network
  def run_group(self, k, x, temb, context, ctx_mask) -> jax.Array:
    """Runs the M layers of group k (static int or traced scalar) on tokens x [B, n, D]."""
    c = self.config
    m = c.group_size
    graphdef, state = nnx.split(self.layers)
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, k * m, m, axis=0)  # noqa: E731
    group_state = jax.tree.map(take, state)
    group_ctx = take(jnp.moveaxis(context, 1, 0))            # [M, B, T, Dc]
    b, n = x.shape[:2]
    prev = jnp.zeros((b, c.num_heads, n, context.shape[2] + n), jnp.float32)

    def body(carry, xs):
      h, prev_logits = carry
      layer_state, ctx = xs
      layer = nnx.merge(graphdef, layer_state, copy=True)
      h, logits = layer(h, temb, ctx, ctx_mask, prev_logits)
      return (h, logits), None

    unroll = jax.default_backend() == "gpu" if c.unroll_group is None else c.unroll_group
    (x, _), _ = jax.lax.scan(body, (x, prev), (group_state, group_ctx), unroll=bool(unroll))
    return x

  def velocity(self, x: jax.Array, sigma: jax.Array, context: jax.Array, ctx_mask: jax.Array | None = None,
               *, group=None) -> jax.Array:
    """v ≈ ε − x₀. `group`: a static group index (training / by-hand sampling), or None to pick the
    group owning σ[0] (sampling: one step evaluates M layers)."""
    c = self.config
    dtype = jnp.dtype(c.dtype)
    b, hgt, wid, ch = x.shape
    p = c.patch_size
    gh, gw = hgt // p, wid // p
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (b,))
    if ctx_mask is None:
      ctx_mask = jnp.ones(context.shape[:1] + context.shape[2:3], bool)
    ctx_mask = ctx_mask.astype(bool)
    tokens = self.patch_embed(patchify(x.astype(dtype), p).reshape(b, gh * gw, -1))
    tokens = tokens + jnp.asarray(sincos_pos_embed(c.hidden_size, gh, gw, c.sample_size // p, 1.0),
                                  dtype)[None]
    temb = self.time_embed(sigma * 1000.0)
    k = self.group_index(sigma[0]) if group is None else group
    h = self.run_group(k, tokens, temb, context.astype(dtype), ctx_mask)
    shift, scale = jnp.split(self.norm_out(jax.nn.silu(temb))[:, None], 2, axis=-1)
    out = self.proj_out(layer_norm(h, 1e-6) * (1 + scale) + shift)
    return unpatchify(out.reshape(b, gh, gw, -1), p, ch).astype(jnp.float32)
