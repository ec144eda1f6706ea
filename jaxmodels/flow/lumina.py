"""Lumina-Next DiT (diffusers `LuminaNextDiT2DModel`) and BLIP3-o's "NextDiT-CrossAttn" variant.

One module, two config variants:

  upstream Lumina-Next  patch embed -> [adaRMS-zero blocks with self + tanh-gated cross attention,
                        2D complex RoPE, qk LayerNorm] -> adaptive LayerNorm (scale only) -> unpatchify.
  BLIP3-o (spec §2.4)   the same network with a caption projection (Linear -> GELU(tanh) -> Linear to
                        the DiT width) in front: the blocks and the t/c embedding see the *projected*
                        caption, so their caption width is `hidden_size`. Built by `blip3o_dit_config`.

Layouts: latents are NHWC [B, H, W, C] (diffusers uses NCHW); captions [B, L, C_cap] with a mask
[B, L] (1 = token). The output is [B, H, W, C_out] with C_out = 2·C when `learn_sigma` (the first C
channels are the prediction, as diffusers' pipeline takes `chunk(2, dim=1)[0]`).

Timesteps and velocity sign — `__call__` takes exactly what diffusers' forward takes:
  * "data_level" (upstream Lumina-Next, `time_convention` default): the timestep is t = 1 − σ ∈ [0, 1]
    (t = 1 is clean data; the pipeline feeds 1 − timestep/1000), and the network predicts the
    data-level velocity x_data − noise = −(ε − x₀). The pipeline negates it before its Euler step.
  * "sigma_1000" (BLIP3-o): the timestep is t = 1000·σ and the output is ε − x₀ directly.
Use `timestep_from_sigma` / `velocity_from_output`, or `model.velocity(x, σ, ...)`, to work in the
jaxmodels convention (x_σ = (1 − σ)·x₀ + σ·ε, v ≈ ε − x₀, see `jaxmodels.flow`).

    model = jaxmodels.hf.from_pretrained("/ckpts/Lumina-Next-SFT-diffusers/transformer")
    v = model.velocity(x_sigma, sigma, caption, caption_mask)   # [B, H, W, C] ≈ ε − x₀
    dit = LuminaNextDiT(blip3o_dit_config("4864"), rngs=nnx.Rngs(0))
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.errors import ConfigError
from jaxmodels.flow.embeddings import TextProjection, patchify, unpatchify
from jaxmodels.flow.lumina_blocks import (ADA_COND_MAX, AdaLayerNormOut, BlockInputs,
                                          CombinedTimestepCaptionEmbedding, LuminaBlock,
                                          lumina_rope_2d, proportional_attention_factor)
from jaxmodels.layers.block import REMAT_POLICIES, BlockStack
from jaxmodels.layers.linear import Linear, param

TIME_CONVENTIONS = ("data_level", "sigma_1000")
BLIP3O_FFN_WIDTHS = {"4864": 4864, "7168": 7168}


def lumina_ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
  """SwiGLU width of diffusers' Lumina block: int(8·dim/3), times the multiplier (truncated), rounded
  up to a multiple of `multiple_of`. (dim 1792 -> 4864; diffusers ≤ 0.32, which BLIP3-o was written
  against, gives the same from its inner_dim = 4·dim; diffusers ≥ 0.33 with 4·dim gives 7168.)"""
  inner = int(4 * 2 * dim / 3)
  if ffn_dim_multiplier is not None:
    inner = int(ffn_dim_multiplier * inner)
  return multiple_of * ((inner + multiple_of - 1) // multiple_of)


@dataclasses.dataclass(frozen=True)
class LuminaConfig:
  """Lumina-Next DiT hyper-parameters (diffusers names where they exist; defaults = diffusers'
  `LuminaNextDiT2DModel` defaults). All fields are hashable scalars."""
  sample_size: int = 128                 # latent side the model was trained at (kept for export)
  patch_size: int = 2
  in_channels: int = 4
  hidden_size: int = 2304
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int | None = None        # default num_heads
  multiple_of: int = 256
  ffn_dim_multiplier: float | None = None
  ffn_hidden_size: int | None = None     # explicit SwiGLU width; None -> `lumina_ffn_hidden_size`
  norm_eps: float = 1e-5
  learn_sigma: bool = True
  qk_norm: bool = True
  cross_attention_dim: int = 2048        # caption width fed to the model (before any projection)
  scaling_factor: float = 1.0            # stored by diffusers, unused by its forward
  caption_projection: bool = False       # BLIP3-o: PixArt-style projection of the caption to D
  use_pad_token: bool = True             # diffusers' (unused) `pad_token` parameter [D]
  rope_theta: float = 10000.0
  time_convention: str = "data_level"    # see the module docstring
  # Execution choices (not part of the checkpoint).
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    def bad(field, msg):
      raise ConfigError(f"LuminaConfig.{field}={getattr(self, field)!r}: {msg}")
    for field in ("patch_size", "in_channels", "hidden_size", "num_layers", "num_heads",
                  "multiple_of", "cross_attention_dim"):
      if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
        bad(field, "must be a positive int")
    if self.hidden_size % self.num_heads:
      bad("hidden_size", f"is not divisible by num_heads={self.num_heads}")
    if self.head_dim % 4:
      bad("num_heads", f"gives head_dim {self.head_dim}; Lumina's 2D RoPE needs a multiple of 4")
    if self.resolved_num_kv_heads < 1 or self.num_heads % self.resolved_num_kv_heads:
      bad("num_kv_heads", f"must divide num_heads={self.num_heads}")
    if self.ffn_hidden_size is not None and self.ffn_hidden_size < 1:
      bad("ffn_hidden_size", "must be positive (or None for the diffusers rule)")
    if self.time_convention not in TIME_CONVENTIONS:
      bad("time_convention", f"expected one of {TIME_CONVENTIONS}")
    if self.remat not in REMAT_POLICIES:
      bad("remat", f"expected one of {sorted(REMAT_POLICIES)}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def resolved_num_kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def resolved_ffn_hidden_size(self) -> int:
    if self.ffn_hidden_size is not None:
      return self.ffn_hidden_size
    return lumina_ffn_hidden_size(self.hidden_size, self.multiple_of, self.ffn_dim_multiplier)

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels if self.learn_sigma else self.in_channels

  @property
  def cond_dim(self) -> int:
    """Width of the t/c conditioning vector: min(hidden_size, 1024)."""
    return min(self.hidden_size, ADA_COND_MAX)

  @property
  def context_dim(self) -> int:
    """Caption width inside the blocks (hidden_size after a caption projection)."""
    return self.hidden_size if self.caption_projection else self.cross_attention_dim

  def replace(self, **kw: Any) -> "LuminaConfig":
    return dataclasses.replace(self, **kw)


def blip3o_dit_config(ffn: str | int = "4864", *, caption_dim: int = 3584, **overrides) -> LuminaConfig:
  """BLIP3-o's NextDiT-CrossAttn (spec §2.4): 24 layers, width 1792, 28/28 heads, patch 1 over an
  8×8×1792 grid of pooled EVA-CLIP features, caption projection from the AR hidden size
  (`caption_dim`: 3584 for the 8B model, 2048 for 4B), no learned sigma, no pad token, t = 1000·σ.

  `ffn` picks the SwiGLU width: "4864" (diffusers ≤ 0.32 semantics; ≈1.36B parameters, matching the
  paper's "1.4B") or "7168" (diffusers ≥ 0.33; ≈1.65B). Which one BLIP3-o's released checkpoint has
  is UNCONFIRMED — check `feed_forward.linear_1.weight`'s shape.
  """
  key = str(ffn)
  if key not in BLIP3O_FFN_WIDTHS:
    raise ConfigError(f"blip3o_dit_config: ffn={ffn!r}; expected one of {sorted(BLIP3O_FFN_WIDTHS)}")
  kw = dict(sample_size=8, patch_size=1, in_channels=1792, hidden_size=1792, num_layers=24,
            num_heads=28, num_kv_heads=28, multiple_of=256, ffn_hidden_size=BLIP3O_FFN_WIDTHS[key],
            norm_eps=1e-5, learn_sigma=False, qk_norm=True, cross_attention_dim=caption_dim,
            caption_projection=True, use_pad_token=False, time_convention="sigma_1000")
  kw.update(overrides)
  return LuminaConfig(**kw)


def timestep_from_sigma(sigma: jax.Array, convention: str) -> jax.Array:
  """The timestep a Lumina network expects for noise level σ (x_σ = (1 − σ)·x₀ + σ·ε).

  "data_level" (upstream Lumina-Next): t = 1 − σ ∈ [0, 1]; "sigma_1000" (BLIP3-o): t = 1000·σ.
  """
  sigma = jnp.asarray(sigma, jnp.float32)
  if convention == "data_level":
    return 1.0 - sigma
  if convention == "sigma_1000":
    return 1000.0 * sigma
  raise ConfigError(f"time convention {convention!r}: expected one of {TIME_CONVENTIONS}")


def velocity_from_output(out: jax.Array, convention: str, in_channels: int) -> jax.Array:
  """Network output [B, H, W, C_out] -> jaxmodels velocity ε − x₀ [B, H, W, C].

  Drops the learned-sigma channels, and negates under "data_level" (Lumina predicts x_data − noise).
  """
  out = out[..., :in_channels]
  if convention == "data_level":
    return -out
  if convention == "sigma_1000":
    return out
  raise ConfigError(f"time convention {convention!r}: expected one of {TIME_CONVENTIONS}")


class LuminaNextDiT(nnx.Module):
  """Lumina-Next DiT: latents [B, H, W, C], timestep [B], caption [B, L, C_cap] -> [B, H, W, C_out]."""

  def __init__(self, config: LuminaConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    p = c.patch_size
    self.caption_projection = TextProjection(c.cross_attention_dim, c.hidden_size, **kw) \
        if c.caption_projection else None
    # Kernel [C, p, p, D]: diffusers flattens each NCHW patch in (C, p_h, p_w) order.
    self.patch_embedder = Linear((c.in_channels, p, p), c.hidden_size,
                                 axes=("conv_in", "patch", "patch", "embed"), use_bias=True, **kw)
    self.pad_token = param(rngs, nnx.initializers.zeros, (c.hidden_size,), ("embed",), pdtype) \
        if c.use_pad_token else None
    self.time_caption_embed = CombinedTimestepCaptionEmbedding(c.cond_dim, c.context_dim, **kw)

    def make_block(r):
      return LuminaBlock(c.hidden_size, c.num_heads, c.resolved_num_kv_heads, c.resolved_ffn_hidden_size,
                         c.context_dim, cond_dim=c.cond_dim, norm_eps=c.norm_eps, qk_norm=c.qk_norm,
                         attention_impl=c.attention_impl, dtype=dtype, param_dtype=pdtype, rngs=r)

    self.layers = BlockStack(c.num_layers, make_block, scan=c.scan_layers, remat=c.remat, rngs=rngs)
    self.norm_out = AdaLayerNormOut(c.hidden_size, c.cond_dim, p * p * c.out_channels, eps=1e-6, **kw)

  def __call__(self, x: jax.Array, timestep: jax.Array, encoder_hidden_states: jax.Array,
               encoder_mask: jax.Array | None = None, *, rope_linear_factor: float = 1.0,
               rope_ntk_factor: float = 1.0, base_sequence_length: int | None = None) -> jax.Array:
    """The raw network, same inputs as diffusers' forward (see the module docstring for `timestep`).

    Args:
      x: [B, H, W, C] latents, H and W divisible by the patch size.
      timestep: [B] (or scalar) timestep in the config's `time_convention`.
      encoder_hidden_states: [B, L, cross_attention_dim] caption features.
      encoder_mask: [B, L] caption mask (1/True = token); default all ones. Every row needs at least
        one token (diffusers gives NaN otherwise).
      rope_linear_factor: RoPE position-interpolation factor (Lumina pipeline's `linear_factor`).
      rope_ntk_factor: RoPE NTK base factor (the pipeline's `ntk_factor`).
      base_sequence_length: enables proportional self-attention (the pipeline's
        `cross_attention_kwargs["base_sequence_length"]`); None = plain H^−½ scaling.

    Returns:
      [B, H, W, out_channels].
    """
    c = self.config
    dtype = jnp.dtype(c.dtype)
    if x.ndim != 4 or x.shape[-1] != c.in_channels:
      raise ValueError(f"LuminaNextDiT expects latents [B, H, W, {c.in_channels}], got {x.shape}")
    b, h, w, _ = x.shape
    p = c.patch_size
    if h % p or w % p:
      raise ValueError(f"latent size {h}x{w} is not divisible by patch_size {p}")
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[-1] != c.cross_attention_dim:
      raise ValueError(f"encoder_hidden_states must be [B, L, {c.cross_attention_dim}], "
                       f"got {encoder_hidden_states.shape}")
    gh, gw = h // p, w // p
    caption = encoder_hidden_states.astype(dtype)
    if encoder_mask is None:
      encoder_mask = jnp.ones(caption.shape[:2], jnp.int32)
    timestep = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32), (b,))

    patches = patchify(x.astype(dtype), p, channels_first=True)
    tokens = self.patch_embedder(patches.reshape(b, gh * gw, c.in_channels, p, p))
    tokens = sharding.constrain(tokens, ("act_batch", "act_length", "act_embed"))
    if self.caption_projection is not None:
      caption = self.caption_projection(caption)
    temb = self.time_caption_embed(timestep, caption, encoder_mask)
    cos, sin = lumina_rope_2d(c.head_dim, gh, gw, theta=c.rope_theta, linear_factor=rope_linear_factor,
                              ntk_factor=rope_ntk_factor)
    factor = proportional_attention_factor(gh * gw, base_sequence_length)
    inputs = BlockInputs(temb=temb, context=caption,
                         context_mask=encoder_mask.astype(bool)[:, None, None, :],
                         self_logit_factor=None if factor is None else jnp.float32(factor))
    tokens, _, _ = self.layers(tokens, mask=inputs, rope=(jnp.asarray(cos), jnp.asarray(sin)))
    out = self.norm_out(tokens, temb)
    return unpatchify(out.reshape(b, gh, gw, -1), p, c.out_channels)

  def timestep_from_sigma(self, sigma: jax.Array) -> jax.Array:
    """σ [B] -> the timestep this model expects (config `time_convention`)."""
    return timestep_from_sigma(sigma, self.config.time_convention)

  def velocity(self, x: jax.Array, sigma: jax.Array, encoder_hidden_states: jax.Array,
               encoder_mask: jax.Array | None = None, **kwargs) -> jax.Array:
    """Velocity in the jaxmodels convention: v ≈ ε − x₀ [B, H, W, C] at noise level σ [B].

    Converts σ to the model's timestep, runs the network and maps its output (dropping learned-sigma
    channels and fixing the sign), so it plugs into `jaxmodels.flow.sample` / `flow_matching_loss`.
    `kwargs` go to `__call__` (RoPE factors, base_sequence_length).
    """
    c = self.config
    out = self(x, self.timestep_from_sigma(sigma), encoder_hidden_states, encoder_mask, **kwargs)
    return velocity_from_output(out, c.time_convention, c.in_channels)
