"""SANA linear diffusion transformer (diffusers `SanaTransformer2DModel`), in Flax NNX.

One module covers SANA 1.0 (0.6B / 1.6B), SANA 1.5 (qk-norm across heads) and SANA-Sprint
(guidance embedding). Latents are NHWC:

    dit = jaxmodels.hf.from_pretrained("/ckpts/SANA1.5_1.6B_1024px_diffusers/transformer")
    v = dit(latents, t, captions, caption_mask)     # [B,32,32,32], [B], [B,L,2304], [B,L] -> [B,32,32,32]

Timestep convention: `timestep` is exactly what diffusers' forward takes. SANA pipelines pass
t = 1000·σ (σ = noise level, x_σ = (1 − σ)·x₀ + σ·ε), already multiplied by the config's
`timestep_scale`; the output is the velocity ε − x₀ — the conventions of `jaxmodels.flow`. Sprint's
`guidance` is likewise passed pre-scaled (pipelines multiply it by `guidance_embeds_scale`).

Block (x: [B, N, D] image tokens, N = (H/p)·(W/p); y: [B, L, D] projected captions):
    shift₁, scale₁, gate₁, shift₂, scale₂, gate₂ = table[6, D] + adaLN-single(t)
    x += gate₁ · LinearAttn(LN(x)·(1 + scale₁) + shift₁)        ReLU-kernel linear attention
    x += CrossAttn(x, y, caption mask)                           softmax attention, no norm
    x += gate₂ · MixFFN(LN(x)·(1 + scale₂) + shift₂)            1x1 conv, 3x3 depthwise, SiLU-GLU, 1x1

`scan_layers=True` stacks the (identical) blocks' parameters [num_layers, ...] in a `BlockStack` and
runs them as one lax.scan (the conditioning travels in its `mask` slot as a `SanaBlockInputs`); the
loop layout and the scanned one load and export the same diffusers checkpoints.

The convolution layers SANA shares with DC-AE (`Conv2d`, `GLUMBConv`, `ChannelRMSNorm`) live in
`jaxmodels.layers.conv`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels import sharding
from jaxmodels.errors import ConfigError
from jaxmodels.flow.embeddings import TextProjection, TimestepEmbedding, timestep_embedding, unpatchify
from jaxmodels.layers.attention import dot_product_attention
from jaxmodels.layers.block import REMAT_POLICIES, BlockStack
from jaxmodels.layers.conv import Conv2d, GLUMBConv
from jaxmodels.layers.linear import Linear, param
from jaxmodels.layers.norms import LayerNorm, RMSNorm, layer_norm

SUPPORTED_QK_NORMS = (None, "rms_norm_across_heads")
LINEAR_ATTENTION_EPS = 1e-15          # diffusers' SanaLinearAttnProcessor2_0 / EfficientViT
TIMESTEP_FREQUENCY_DIM = 256          # sinusoid width of PixArt's timestep embedder


# ----------------------------------------------------------------------------------------------
# SANA transformer.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SanaConfig:
  """`SanaTransformer2DModel` hyper-parameters (diffusers names and defaults, diffusers 0.42.1).

  The defaults are diffusers' defaults, i.e. the SANA-1.6B layout; see `sana_1600m_config()`.
  `timestep_scale` and `guidance_embeds_scale` are kept for export only: diffusers' pipelines apply
  them before calling the model, and so must callers of `SanaTransformer`.
  """
  in_channels: int = 32
  out_channels: int | None = 32          # None: same as in_channels
  num_attention_heads: int = 70
  attention_head_dim: int = 32
  num_layers: int = 20
  num_cross_attention_heads: int = 20
  cross_attention_head_dim: int = 112
  cross_attention_dim: int = 2240        # must equal num_attention_heads · attention_head_dim
  caption_channels: int = 2304
  mlp_ratio: float = 2.5
  dropout: float = 0.0                   # only 0.0 is supported
  attention_bias: bool = False           # bias of the self-attention q/k/v projections
  sample_size: int = 32                  # base latent size (sets the sin-cos base grid)
  patch_size: int = 1
  norm_elementwise_affine: bool = False  # affine params on the pre-FFN LayerNorm only (as diffusers)
  norm_eps: float = 1e-6
  interpolation_scale: float | None = None   # None: no positional embedding (SANA 512/1024px)
  guidance_embeds: bool = False          # SANA-Sprint: add an embedded guidance scale to t
  guidance_embeds_scale: float = 0.1
  qk_norm: str | None = None             # None or "rms_norm_across_heads" (SANA 1.5 / Sprint)
  timestep_scale: float = 1.0
  # Execution choices (not part of the checkpoint).
  remat: str = "none"                    # per-block rematerialisation: "none" | "full" | "dots"
  scan_layers: bool = False              # blocks as one lax.scan over stacked [num_layers, ...] params
  attention_impl: str = "einsum"         # cross-attention kernel, see layers.dot_product_attention
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.qk_norm not in SUPPORTED_QK_NORMS:
      raise ConfigError(f"SanaConfig.qk_norm={self.qk_norm!r} is not supported "
                        f"(supported: {', '.join(map(repr, SUPPORTED_QK_NORMS))})")
    if self.dropout:
      raise ConfigError(f"SanaConfig.dropout={self.dropout} is not supported (only 0.0)")
    if self.cross_attention_dim != self.inner_dim:
      raise ConfigError(f"SanaConfig.cross_attention_dim={self.cross_attention_dim} must equal "
                        f"num_attention_heads·attention_head_dim={self.inner_dim} (captions are "
                        "projected to that width)")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"SanaConfig.remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")

  @property
  def inner_dim(self) -> int:
    return self.num_attention_heads * self.attention_head_dim

  @property
  def resolved_out_channels(self) -> int:
    return self.out_channels or self.in_channels

  @property
  def mlp_hidden(self) -> int:
    return int(self.mlp_ratio * self.inner_dim)

  def replace(self, **kw: Any) -> "SanaConfig":
    return dataclasses.replace(self, **kw)


def sana_1600m_config(**overrides) -> SanaConfig:
  """SANA-1.6B at 1024px (`Efficient-Large-Model/Sana_1600M_1024px_diffusers`, and SANA 1.5 1.6B
  with `qk_norm="rms_norm_across_heads"`).

  Fields follow diffusers' conversion script (scripts/convert_sana_to_diffusers.py, model type
  SanaMS_1600M_P1_D20): 20 layers, 70 heads × 32 (hidden 2240), cross-attention 20 heads × 112,
  caption_channels 2304 (Gemma-2-2B), mlp_ratio 2.5, patch 1, 32 latent channels (DC-AE f32c32),
  sample_size = 1024 / 32 = 32, no positional embedding at 1024px (interpolation_scale None), no
  attention bias, non-affine LayerNorms with eps 1e-6. 1,604,462,752 parameters (1,604,641,952 with
  qk-norm).
  """
  return SanaConfig(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32,
                    num_layers=20, num_cross_attention_heads=20, cross_attention_head_dim=112,
                    cross_attention_dim=2240, caption_channels=2304, mlp_ratio=2.5, attention_bias=False,
                    sample_size=32, patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6,
                    interpolation_scale=None).replace(**overrides)


class HeadsRMSNorm(nnx.Module):
  """RMSNorm over all heads together ("rms_norm_across_heads"): [..., N, H] -> [..., N, H].

  The mean square is taken over the N·H features of a token (diffusers normalises the projection
  before splitting heads); the weight is [N, H] (HF stores [N·H]).
  """

  def __init__(self, num_heads: int, head_dim: int, *, eps: float = 1e-5, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (num_heads, head_dim), ("heads", "head_dim"),
                       param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=(-2, -1), keepdims=True) + self.eps)
    return h.astype(dtype) * self.scale[...].astype(dtype)


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int, base_size: int,
                     interpolation_scale: float) -> np.ndarray:
  """diffusers' 2-D sin-cos positional table for a grid_h × grid_w token grid -> [gh·gw, dim].

  Positions are scaled to the base grid (i / (n / base_size) / interpolation_scale, in float32);
  the first dim/2 features encode the column (w) position and the last dim/2 the row (h) position,
  each as [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k / (dim/4)), computed in float64.
  """
  if dim % 4:
    raise ValueError(f"sin-cos positional embedding needs a width divisible by 4, got {dim}")
  rows = np.arange(grid_h, dtype=np.float32) / np.float32(grid_h / base_size) / np.float32(interpolation_scale)
  cols = np.arange(grid_w, dtype=np.float32) / np.float32(grid_w / base_size) / np.float32(interpolation_scale)
  col_pos, row_pos = np.meshgrid(cols, rows, indexing="xy")      # each [gh, gw]

  def one_axis(pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    angles = pos.reshape(-1).astype(np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([one_axis(col_pos), one_axis(row_pos)], axis=1).astype(np.float32)


class SanaTimeEmbed(nnx.Module):
  """adaLN-single: t [B] (+ guidance [B]) -> (modulation [B, 6·D], embedded timestep [B, D]).

  e = MLP(sinusoid₂₅₆(t)) [+ MLP(sinusoid₂₅₆(guidance))];  modulation = Linear(SiLU(e)).
  diffusers' `AdaLayerNormSingle` (no size conditioning) or, with guidance, its
  `SanaCombinedTimestepGuidanceEmbeddings`.
  """

  def __init__(self, dim: int, *, guidance: bool, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    self.timestep_embedder = TimestepEmbedding(TIMESTEP_FREQUENCY_DIM, dim, **kw)
    self.guidance_embedder = TimestepEmbedding(TIMESTEP_FREQUENCY_DIM, dim, **kw) if guidance else None
    self.linear = Linear(dim, 6 * dim, axes=("embed", None), use_bias=True, **kw)

  def __call__(self, timestep: jax.Array, guidance: jax.Array | None = None):
    emb = self.timestep_embedder(timestep_embedding(timestep, TIMESTEP_FREQUENCY_DIM).astype(self.dtype))
    if self.guidance_embedder is not None:
      if guidance is None:
        raise ValueError("this SANA transformer has guidance_embeds=True: pass `guidance` [B]")
      emb = emb + self.guidance_embedder(
          timestep_embedding(guidance, TIMESTEP_FREQUENCY_DIM).astype(self.dtype))
    return self.linear(jax.nn.silu(emb)), emb


class SanaLinearAttention(nnx.Module):
  """ReLU-kernel linear self-attention: [B, N, D] -> [B, N, D].

  out_i = Σ_j relu(k_j)ᵀ relu(q_i) · v_j / (Σ_j relu(k_j)ᵀ relu(q_i) + 1e-15), per head, in float32
  (diffusers appends a row of ones to v to get the denominator from the same matmul; so do we).
  Optional qk RMSNorm across heads is applied to the projections before the ReLU.
  """

  def __init__(self, dim: int, num_heads: int, head_dim: int, *, qkv_bias: bool, qk_norm: bool,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    for name in ("q", "k", "v"):
      setattr(self, name, Linear(dim, (num_heads, head_dim), axes=("embed", "heads", "head_dim"),
                                 use_bias=qkv_bias, **kw))
    self.o = Linear((num_heads, head_dim), dim, axes=("heads", "head_dim", "embed"), use_bias=True, **kw)
    norm_kw = dict(eps=1e-5, param_dtype=param_dtype, rngs=rngs)
    self.q_norm = HeadsRMSNorm(num_heads, head_dim, **norm_kw) if qk_norm else None
    self.k_norm = HeadsRMSNorm(num_heads, head_dim, **norm_kw) if qk_norm else None

  def __call__(self, x: jax.Array) -> jax.Array:
    q, k, v = self.q(x), self.k(x), self.v(x)                          # [B, N, heads, H]
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = jax.nn.relu(q).astype(jnp.float32)
    k = jax.nn.relu(k).astype(jnp.float32)
    v = v.astype(jnp.float32)
    v = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), jnp.float32)], axis=-1)
    kv = jnp.einsum("bnhv,bnhk->bhvk", v, k)                             # [B, heads, H+1, H]
    out = jnp.einsum("bhvk,bnhk->bnhv", kv, q)                           # [B, N, heads, H+1]
    out = out[..., :-1] / (out[..., -1:] + LINEAR_ATTENTION_EPS)
    out = sharding.constrain(out.astype(self.dtype), ("act_batch", "act_length", "act_heads", None))
    return self.o(out)


class SanaCrossAttention(nnx.Module):
  """Softmax cross-attention from image tokens to caption tokens: [B, N, D] x [B, L, D_kv] -> [B, N, D].

  All projections have bias; scale 1/sqrt(head_dim); `mask` [B, 1, 1, L] (True = attend).
  """

  def __init__(self, dim: int, kv_dim: int, num_heads: int, head_dim: int, *, qk_norm: bool,
               impl: str = "einsum", dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, use_bias=True)
    self.head_dim, self.impl = head_dim, impl
    self.q = Linear(dim, (num_heads, head_dim), axes=("embed", "heads", "head_dim"), **kw)
    self.k = Linear(kv_dim, (num_heads, head_dim), axes=("embed", "heads", "head_dim"), **kw)
    self.v = Linear(kv_dim, (num_heads, head_dim), axes=("embed", "heads", "head_dim"), **kw)
    self.o = Linear((num_heads, head_dim), dim, axes=("heads", "head_dim", "embed"), **kw)
    norm_kw = dict(eps=1e-5, param_dtype=param_dtype, rngs=rngs)
    self.q_norm = HeadsRMSNorm(num_heads, head_dim, **norm_kw) if qk_norm else None
    self.k_norm = HeadsRMSNorm(num_heads, head_dim, **norm_kw) if qk_norm else None

  def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array | None) -> jax.Array:
    q, k, v = self.q(x), self.k(context), self.v(context)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q = sharding.constrain(q, ("act_batch", "act_length", "act_heads", None))
    out = dot_product_attention(q, k, v, mask, scale=self.head_dim ** -0.5, impl=self.impl)
    return self.o(out)


@flax.struct.dataclass
class SanaBlockInputs:
  """Per-call conditioning shared by every block (passed through `BlockStack`'s `mask` slot).

  `grid` is static (pytree metadata), so it stays a Python tuple under jit, remat and scan."""
  modulation: jax.Array                  # [B, 6·D] adaLN-single output
  context: jax.Array                     # [B, L, D] projected, normalised captions
  mask: jax.Array | None                 # [B, 1, 1, L] bool (True = attend) or None
  grid: tuple[int, int] = flax.struct.field(pytree_node=False, default=(1, 1))   # token grid (h, w)


class SanaBlock(nnx.Module):
  """One SANA transformer block (see the module docstring): x [B, N, D] -> [B, N, D]."""

  def __init__(self, c: SanaConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d = c.inner_dim
    qk_norm = c.qk_norm is not None
    self.norm_eps = c.norm_eps
    self.scale_shift_table = param(rngs, nnx.initializers.normal(d ** -0.5), (6, d), (None, "embed"),
                                   param_dtype)
    self.attn1 = SanaLinearAttention(d, c.num_attention_heads, c.attention_head_dim,
                                     qkv_bias=c.attention_bias, qk_norm=qk_norm, **kw)
    self.attn2 = SanaCrossAttention(d, c.cross_attention_dim, c.num_cross_attention_heads,
                                    c.cross_attention_head_dim, qk_norm=qk_norm, impl=c.attention_impl,
                                    **kw)
    self.norm2 = (LayerNorm(d, eps=c.norm_eps, param_dtype=param_dtype, rngs=rngs)
                  if c.norm_elementwise_affine else None)
    self.ff = GLUMBConv(d, d, c.mlp_hidden, axes=("embed", "mlp"), **kw)

  def __call__(self, x: jax.Array, *, mask: SanaBlockInputs, rope=None, cache=None,
               cache_index=0) -> tuple[jax.Array, None]:
    """`BlockStack` calling convention: x [B, N, D] and the conditioning as `mask` (a
    `SanaBlockInputs`) -> (x [B, N, D], None)."""
    del rope, cache, cache_index
    modulation, context, mask, grid = mask.modulation, mask.context, mask.mask, mask.grid
    b, n, d = x.shape
    mod = self.scale_shift_table[...].astype(x.dtype)[None] + modulation.reshape(b, 6, d)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (mod[:, i:i + 1] for i in range(6))
    h = layer_norm(x, self.norm_eps) * (1 + scale_msa) + shift_msa
    x = x + gate_msa * self.attn1(h)
    x = x + self.attn2(x, context, mask)
    h = self.norm2(x) if self.norm2 is not None else layer_norm(x, self.norm_eps)
    h = h * (1 + scale_mlp) + shift_mlp
    ff = self.ff(h.reshape(b, grid[0], grid[1], d)).reshape(b, n, d)
    x = x + gate_mlp * ff
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed")), None


class SanaTransformer(nnx.Module):
  """SANA DiT: (latents [B, H, W, C], timestep [B], captions [B, L, caption_channels],
  caption mask [B, L]) -> velocity [B, H, W, C_out]. See the module docstring."""

  def __init__(self, config: SanaConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    d = c.inner_dim
    self.patch_embed = Conv2d(c.in_channels, d, c.patch_size, stride=c.patch_size, padding=0,
                              axes=("conv_in", "embed"), **kw)
    self.time_embed = SanaTimeEmbed(d, guidance=c.guidance_embeds, **kw)
    self.caption_projection = TextProjection(c.caption_channels, d, **kw)
    self.caption_norm = RMSNorm(d, eps=1e-5, param_dtype=pdtype, rngs=rngs)
    if c.scan_layers:     # params [num_layers, ...] under blocks.blocks (the HF keymap stacks them)
      self.blocks = BlockStack(c.num_layers, lambda r: SanaBlock(c, dtype=dtype, param_dtype=pdtype, rngs=r),
                               scan=True, remat=c.remat, rngs=rngs)
    else:
      self.blocks = nnx.List([SanaBlock(c, **kw) for _ in range(c.num_layers)])
    self.scale_shift_table = param(rngs, nnx.initializers.normal(d ** -0.5), (2, d), (None, "embed"),
                                   pdtype)
    self.proj_out = Linear(d, c.patch_size ** 2 * c.resolved_out_channels, axes=("embed", None),
                           use_bias=True, **kw)

  def __call__(self, latents: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
               encoder_attention_mask: jax.Array | None = None, *,
               guidance: jax.Array | None = None) -> jax.Array:
    """Velocity prediction.

    Args:
      latents: [B, H, W, in_channels] noisy latents x_σ (H, W divisible by patch_size).
      timestep: [B] (or a scalar) — 1000·σ, already times `timestep_scale`, as diffusers' forward.
      encoder_hidden_states: [B, L, caption_channels] caption features (e.g. Gemma-2 hidden states
        or a MetaQuery / BLIP3o-NEXT connector output).
      encoder_attention_mask: [B, L], 1/True = real token, 0/False = padding; None attends to all.
        As in diffusers (an additive −10000 bias), an all-zero row masks nothing.
      guidance: [B] embedded guidance scale (guidance_embeds models only), pre-scaled.

    Returns:
      [B, H, W, out_channels] in the compute dtype.
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    b, hgt, wid, _ = latents.shape
    p = c.patch_size
    if hgt % p or wid % p:
      raise ValueError(f"latents {hgt}x{wid} are not divisible by patch_size {p}")
    grid = (hgt // p, wid // p)
    x = self.patch_embed(latents.astype(dtype)).reshape(b, grid[0] * grid[1], c.inner_dim)
    if c.interpolation_scale is not None:
      pos = sincos_pos_embed(c.inner_dim, grid[0], grid[1], c.sample_size // p, c.interpolation_scale)
      x = (x.astype(jnp.float32) + jnp.asarray(pos)[None]).astype(dtype)
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

    timestep = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,))
    if guidance is not None:
      if not c.guidance_embeds:
        raise ValueError("`guidance` given, but this SANA transformer has guidance_embeds=False")
      guidance = jnp.broadcast_to(jnp.asarray(guidance, jnp.float32).reshape(-1), (b,))
    modulation, embedded_t = self.time_embed(timestep, guidance)

    context = self.caption_norm(self.caption_projection(encoder_hidden_states.astype(dtype)))
    mask = None
    if encoder_attention_mask is not None:
      keep = jnp.asarray(encoder_attention_mask) != 0
      # diffusers adds a −10000 bias to masked logits; on a fully masked caption that is a constant
      # shift, i.e. no mask at all. Reproduce that instead of a uniform average.
      keep = keep | ~jnp.any(keep, axis=-1, keepdims=True)
      mask = keep[:, None, None, :]

    inputs = SanaBlockInputs(modulation, context, mask, grid)
    if c.scan_layers:
      x, _, _ = self.blocks(x, mask=inputs)      # BlockStack: lax.scan, remat inside its body
    else:
      for block in self.blocks:
        x = self._run_block(block, x, inputs)

    final_mod = self.scale_shift_table[...].astype(dtype)[None] + embedded_t[:, None]     # [B, 2, D]
    shift, scale = final_mod[:, :1], final_mod[:, 1:]
    x = layer_norm(x, 1e-6) * (1 + scale) + shift
    x = self.proj_out(x).reshape(b, grid[0], grid[1], -1)
    return unpatchify(x, p, c.resolved_out_channels)

  def velocity(self, x: jax.Array, sigma: jax.Array, encoder_hidden_states: jax.Array,
               encoder_mask: jax.Array | None = None) -> jax.Array:
    """The flow velocity ε − x₀ [B, H, W, C] at noise level σ [B] in [0, 1]: the transformer's output
    as is, at timestep 1000·σ·timestep_scale (diffusers' SANA pipeline), f32."""
    t = jnp.asarray(sigma, jnp.float32) * 1000.0 * self.config.timestep_scale
    return self(x, t, encoder_hidden_states, encoder_mask).astype(jnp.float32)

  def _run_block(self, block: SanaBlock, x: jax.Array, inputs: SanaBlockInputs) -> jax.Array:
    """One block of the loop layout, rematerialised per the config: x [B, N, D] -> [B, N, D]."""
    remat = self.config.remat
    if remat == "none":
      return block(x, mask=inputs)[0]
    # jax.checkpoint over split/merge (not nnx.remat) so this also works when the model itself
    # was merged inside an outer transform (a lax.scan sampler, jax.grad of a pure function).
    graphdef, state = nnx.split(block)

    def run(state, x, inputs):
      return nnx.merge(graphdef, state)(x, mask=inputs)[0]

    return jax.checkpoint(run, policy=REMAT_POLICIES[remat])(state, x, inputs)
