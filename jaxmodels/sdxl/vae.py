"""The KL autoencoder of Stable Diffusion / SDXL (diffusers `AutoencoderKL`), in Flax NNX, NHWC.

    vae = jaxmodels.hf.from_pretrained("/ckpts/sdxl/vae")               # -> AutoencoderKL
    mean, logvar = vae.encode(images)                  # images [B, H, W, 3] in [-1, 1]
    latents = vae.to_diffusion(mean)                   # what the UNet sees (x scaling_factor)
    images = vae.decode_latents(latents)               # = decode(from_diffusion(latents))

`encode` / `decode` are diffusers' `encode(x).latent_dist` (mean, clamped logvar) and
`decode(z).sample` on *unscaled* latents; the latent scaling is applied where diffusers' SDXL
pipelines and training scripts apply it, outside the network, by `to_diffusion` /
`from_diffusion`: z·scaling_factor (0.13025 for SDXL; 0.18215 for SD 1.x), or
(z − shift_factor)·scaling_factor when the config has a shift (SD3/Flux VAEs), or
(z − latents_mean)·scaling_factor / latents_std when it has per-channel statistics.

Layout (as diffusers; stage i has width C_i and, except the last, halves the resolution):
  encoder: conv_in -> per stage [ResnetBlock2D × layers_per_block, Downsample2D (padding 0)] ->
           mid (ResnetBlock2D, single-head spatial self-attention, ResnetBlock2D) -> GroupNorm ->
           act -> conv_out to 2·latent channels (mean ‖ logvar) -> quant_conv (1x1)
  decoder: post_quant_conv (1x1) -> conv_in -> mid -> per stage, last first,
           [ResnetBlock2D × (layers_per_block + 1), Upsample2D] -> GroupNorm -> act -> conv_out
No tiling or slicing (diffusers' memory options); the output is the same without them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.layers.activations import get_activation
from jaxmodels.layers.attention import Attention
from jaxmodels.layers.conv import Conv2d
from jaxmodels.layers.group_norm import GroupNorm
from jaxmodels.layers.key_stream import KeyStream
from jaxmodels.sdxl.blocks import Downsample2D, ResnetBlock2D, Upsample2D
from jaxmodels.sdxl.config_checks import check_block_types, freeze_lists

DOWN_BLOCK_TYPES = ("DownEncoderBlock2D",)
UP_BLOCK_TYPES = ("UpDecoderBlock2D",)
RESNET_EPS = 1e-6                 # diffusers' Encoder/Decoder fix eps for every norm
LOGVAR_RANGE = (-30.0, 20.0)      # DiagonalGaussianDistribution's clamp


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """`AutoencoderKL` hyper-parameters: diffusers names and defaults (diffusers 0.42).

  See `sdxl_vae_config()` for SDXL's. `sample_size` and `force_upcast` only matter to diffusers'
  tiling and fp16 pipelines; they are kept so an export round-trips.
  """
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple = ("DownEncoderBlock2D",)
  up_block_types: tuple = ("UpDecoderBlock2D",)
  block_out_channels: tuple = (64,)
  layers_per_block: int = 1
  act_fn: str = "silu"
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: Any = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  latents_mean: tuple | None = None
  latents_std: tuple | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  # Execution choices (not part of the checkpoint).
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    freeze_lists(self)
    check_block_types(self, DOWN_BLOCK_TYPES, UP_BLOCK_TYPES)
    for c in self.block_out_channels:
      if c % self.norm_num_groups:
        raise ConfigError(f"AutoencoderKLConfig: block width {c} is not divisible by "
                          f"norm_num_groups={self.norm_num_groups}")
    if (self.latents_mean is None) != (self.latents_std is None):
      raise ConfigError("AutoencoderKLConfig: latents_mean and latents_std must be given together")
    get_activation(self.act_fn)

  @property
  def spatial_compression_ratio(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def replace(self, **kw: Any) -> "AutoencoderKLConfig":
    return dataclasses.replace(self, **kw)


def sdxl_vae_config(**overrides) -> AutoencoderKLConfig:
  """SDXL's VAE (`stabilityai/stable-diffusion-xl-base-1.0`, `vae/config.json`; also
  `madebyollin/sdxl-vae-fp16-fix`): widths (128, 256, 512, 512), 2 resnets per stage, 4 latent
  channels, 32 groups, 8x compression, scaling_factor 0.13025."""
  return AutoencoderKLConfig(
      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
      block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
      norm_num_groups=32, sample_size=1024, scaling_factor=0.13025).replace(**overrides)


class SpatialSelfAttention(nnx.Module):
  """x + attn(GroupNorm(x)) over the H·W positions: [B, H, W, C] -> [B, H, W, C].

  diffusers' `Attention(residual_connection=True, norm_num_groups=...)` as the autoencoder's mid
  block builds it: C // head_dim heads (one head of width C in every published VAE), q/k/v and
  output projections with bias.
  """

  def __init__(self, channels: int, head_dim: int, *, groups: int, eps: float, impl: str, dtype,
               param_dtype, rngs: nnx.Rngs | None):
    self.group_norm = GroupNorm(channels, groups, eps=eps, param_dtype=param_dtype, rngs=rngs)
    self.attn = Attention(channels, channels // head_dim, head_dim=head_dim, qkv_bias=True,
                          out_bias=True, impl=impl, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y, _ = self.attn(self.group_norm(x).reshape(b, h * w, c))
    return x + y.reshape(b, h, w, c).astype(x.dtype)


class MidBlock(nnx.Module):
  """ResnetBlock2D -> [SpatialSelfAttention] -> ResnetBlock2D at the lowest resolution."""

  def __init__(self, channels: int, c: AutoencoderKLConfig, **kw):
    block = dict(temb_channels=None, groups=c.norm_num_groups, eps=RESNET_EPS, act=c.act_fn, **kw)
    self.resnets = nnx.List([ResnetBlock2D(channels, channels, **block) for _ in range(2)])
    self.attentions = nnx.List([SpatialSelfAttention(
        channels, channels, groups=c.norm_num_groups, eps=RESNET_EPS, impl=c.attention_impl, **kw)]
        if c.mid_block_add_attention else [])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    for attn in self.attentions:
      x = attn(x)
    return self.resnets[1](x)


class Stage(nnx.Module):
  """One encoder stage (resnets, then a stride-2 `Downsample2D`) or decoder stage (resnets, then
  `Upsample2D`); the last encoder stage and the first decoder stage have no sampler."""

  def __init__(self, in_channels: int, out_channels: int, num_layers: int, c: AutoencoderKLConfig, *,
               down: bool, resample: bool, **kw):
    block = dict(temb_channels=None, groups=c.norm_num_groups, eps=RESNET_EPS, act=c.act_fn, **kw)
    self.resnets = nnx.List([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, **block)
                             for i in range(num_layers)])
    self.down = down
    if not resample:
      self.sampler = None
    elif down:
      self.sampler = Downsample2D(out_channels, padding=0, **kw)
    else:
      self.sampler = Upsample2D(out_channels, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    for resnet in self.resnets:
      x = resnet(x)
    return x if self.sampler is None else self.sampler(x)


class Encoder(nnx.Module):
  """images [B, H, W, in_channels] -> moments [B, H/f, W/f, 2·latent_channels] (before quant_conv)."""

  def __init__(self, c: AutoencoderKLConfig, **kw):
    widths = c.block_out_channels
    self.act = get_activation(c.act_fn)
    self.conv_in = Conv2d(c.in_channels, widths[0], 3, **kw)
    self.down_blocks = nnx.List([
        Stage(widths[max(i - 1, 0)], widths[i], c.layers_per_block, c, down=True,
              resample=i < len(widths) - 1, **kw) for i in range(len(widths))])
    self.mid_block = MidBlock(widths[-1], c, **kw)
    self.conv_norm_out = GroupNorm(widths[-1], c.norm_num_groups, eps=RESNET_EPS,
                                   param_dtype=kw["param_dtype"], rngs=kw["rngs"])
    self.conv_out = Conv2d(widths[-1], 2 * c.latent_channels, 3, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for stage in self.down_blocks:
      x = stage(x)
    x = self.mid_block(x)
    return self.conv_out(self.act(self.conv_norm_out(x)))


class Decoder(nnx.Module):
  """latents [B, h, w, latent_channels] (after post_quant_conv) -> images [B, h·f, w·f, out_channels]."""

  def __init__(self, c: AutoencoderKLConfig, **kw):
    widths = tuple(reversed(c.block_out_channels))
    self.act = get_activation(c.act_fn)
    self.conv_in = Conv2d(c.latent_channels, widths[0], 3, **kw)
    self.mid_block = MidBlock(widths[0], c, **kw)
    self.up_blocks = nnx.List([
        Stage(widths[max(i - 1, 0)], widths[i], c.layers_per_block + 1, c, down=False,
              resample=i < len(widths) - 1, **kw) for i in range(len(widths))])
    self.conv_norm_out = GroupNorm(widths[-1], c.norm_num_groups, eps=RESNET_EPS,
                                   param_dtype=kw["param_dtype"], rngs=kw["rngs"])
    self.conv_out = Conv2d(widths[-1], c.out_channels, 3, **kw)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.mid_block(self.conv_in(z))
    for stage in self.up_blocks:
      x = stage(x)
    return self.conv_out(self.act(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """The KL autoencoder: `encode` [B, H, W, 3] -> (mean, logvar) [B, H/f, W/f, C_lat]; `decode` back.

  H and W must be multiples of f = `config.spatial_compression_ratio` (8 for SDXL) for `decode` to
  return the input size. `__call__` = decode(mean of encode(x)).
  """

  def __init__(self, config: AutoencoderKLConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=KeyStream(rngs))
    self.encoder = Encoder(c, **kw)
    self.decoder = Decoder(c, **kw)
    n = c.latent_channels
    self.quant_conv = Conv2d(2 * n, 2 * n, 1, padding=0, **kw) if c.use_quant_conv else None
    self.post_quant_conv = Conv2d(n, n, 1, padding=0, **kw) if c.use_post_quant_conv else None

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, in_channels] in [-1, 1] -> (mean, logvar), each [B, H/f, W/f, latent_channels]
    (unscaled; logvar clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution)."""
    moments = self.encoder(images.astype(jnp.dtype(self.config.dtype)))
    if self.quant_conv is not None:
      moments = self.quant_conv(moments)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents [B, h, w, latent_channels] -> images [B, h·f, w·f, out_channels] (≈[-1, 1])."""
    z = z.astype(jnp.dtype(self.config.dtype))
    if self.post_quant_conv is not None:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.decode(self.encode(images)[0])

  # -- diffusion-space latents ------------------------------------------------------------------

  def _stats(self, ndim: int):
    c = self.config
    if c.latents_mean is None:
      return (c.shift_factor or 0.0), 1.0
    shape = (1,) * (ndim - 1) + (-1,)
    return (jnp.asarray(c.latents_mean, jnp.float32).reshape(shape),
            jnp.asarray(c.latents_std, jnp.float32).reshape(shape))

  def to_diffusion(self, z: jax.Array) -> jax.Array:
    """Unscaled latents -> the UNet's latents: (z − shift)·scaling_factor / std, where shift/std
    are latents_mean/latents_std when configured, else shift_factor (or 0) and 1."""
    shift, std = self._stats(z.ndim)
    return ((z - shift) * self.config.scaling_factor / std).astype(z.dtype)

  def from_diffusion(self, latents: jax.Array) -> jax.Array:
    """Inverse of `to_diffusion` (what diffusers' pipelines do before `vae.decode`)."""
    shift, std = self._stats(latents.ndim)
    return (latents * std / self.config.scaling_factor + shift).astype(latents.dtype)

  def decode_latents(self, latents: jax.Array) -> jax.Array:
    """Diffusion-space latents [B, h, w, C_lat] (a sampler's output) -> images [B, h·f, w·f, 3]."""
    return self.decode(self.from_diffusion(latents))


def sample_posterior(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
  """A draw z = mean + exp(logvar / 2)·ε from `encode`'s diagonal Gaussian (same shape as mean)."""
  noise = jax.random.normal(rng, mean.shape, jnp.float32)
  return (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * noise).astype(mean.dtype)
