"""Deep Compression Autoencoder (DC-AE; diffusers `AutoencoderDC`), in Flax NNX.

SANA's image tokenizer: a deterministic conv autoencoder with 32x spatial compression (f32c32:
[B, 1024, 1024, 3] <-> [B, 32, 32, 32]). Images are NHWC in [-1, 1]:

    vae = jaxmodels.hf.from_pretrained("/ckpts/dc-ae-f32c32-sana-1.1-diffusers")
    z = vae.encode(images) * vae.scaling_factor        # diffusion-space latents (SANA shift = 0)
    images = vae.decode(z / vae.scaling_factor)

`encode` / `decode` return the raw encoder output / decoder input of diffusers (its
`.encode(x).latent` and `.decode(z).sample`); scaling is the caller's, as in diffusers pipelines.

Layout (stage i has width C_i; the last stage is the latent resolution):
  encoder: conv_in → per stage [blocks..., down-sample to stage i+1] → conv_out (+ channel-averaging
           shortcut to the latent channels)
  decoder: conv_in (+ channel-repeat shortcut) → per stage, last first, [up-sample from stage i+1,
           blocks...] → RMSNorm → act → conv_out
  blocks:  ResBlock (3x3 conv, act, 3x3 conv, RMSNorm, + x) or EfficientViTBlock (multi-scale ReLU
           linear attention + GLUMBConv); down/up-samplers add a pixel-(un)shuffle shortcut that
           averages / repeats channel groups ("residual autoencoding").
A stage with 0 layers has no blocks and no sampler; with layers_per_block[0] == 0, conv_in and
conv_out are themselves (shortcut-free) down/up-samplers to stage 1 (the DC-AE "in"/"mix" models).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.layers.conv import ChannelRMSNorm, Conv2d, GLUMBConv
from jaxmodels.layers.linear import Linear

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
NORM_TYPES = ("rms_norm",)                              # "batch_norm" (in/mix models) is not ported
ACTIVATIONS = {                                         # diffusers `get_activation` names
    "silu": jax.nn.silu, "swish": jax.nn.silu, "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}
ATTENTION_EPS = 1e-15


def _per_stage(value, n: int, name: str) -> tuple:
  if isinstance(value, str):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ConfigError(f"DCAEConfig.{name} has {len(value)} entries for {n} stages")
  return value


@dataclasses.dataclass(frozen=True)
class DCAEConfig:
  """`AutoencoderDC` hyper-parameters: diffusers names and defaults (diffusers 0.42.1).

  Per-stage fields accept one string for all stages (as diffusers) and are stored as tuples.
  `downsample_block_type` "pixel_unshuffle" uses conv + pixel-unshuffle, anything else ("conv",
  "Conv") a stride-2 conv; `upsample_block_type` "interpolate" uses nearest-2x + conv, anything
  else ("pixel_shuffle") conv + pixel-shuffle. See `dcae_f32c32_config()` for SANA's autoencoder.
  """
  in_channels: int = 3
  latent_channels: int = 32
  attention_head_dim: int = 32
  encoder_block_types: Any = "ResBlock"
  decoder_block_types: Any = "ResBlock"
  encoder_block_out_channels: tuple = (128, 256, 512, 512, 1024, 1024)
  decoder_block_out_channels: tuple = (128, 256, 512, 512, 1024, 1024)
  encoder_layers_per_block: tuple = (2, 2, 2, 3, 3, 3)
  decoder_layers_per_block: tuple = (3, 3, 3, 3, 3, 3)
  encoder_qkv_multiscales: tuple = ((), (), (), (5,), (5,), (5,))
  decoder_qkv_multiscales: tuple = ((), (), (), (5,), (5,), (5,))
  upsample_block_type: str = "pixel_shuffle"
  downsample_block_type: str = "pixel_unshuffle"
  decoder_norm_types: Any = "rms_norm"
  decoder_act_fns: Any = "silu"
  encoder_out_shortcut: bool = True
  decoder_in_shortcut: bool = True
  decoder_conv_act_fn: str = "relu"
  scaling_factor: float = 1.0
  # Execution choices (not part of the checkpoint).
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    ne, nd = len(self.encoder_block_out_channels), len(self.decoder_block_out_channels)
    fix = {
        "encoder_block_types": _per_stage(self.encoder_block_types, ne, "encoder_block_types"),
        "decoder_block_types": _per_stage(self.decoder_block_types, nd, "decoder_block_types"),
        "decoder_norm_types": _per_stage(self.decoder_norm_types, nd, "decoder_norm_types"),
        "decoder_act_fns": _per_stage(self.decoder_act_fns, nd, "decoder_act_fns"),
        "encoder_block_out_channels": tuple(self.encoder_block_out_channels),
        "decoder_block_out_channels": tuple(self.decoder_block_out_channels),
        "encoder_layers_per_block": _per_stage(self.encoder_layers_per_block, ne, "encoder_layers_per_block"),
        "decoder_layers_per_block": _per_stage(self.decoder_layers_per_block, nd, "decoder_layers_per_block"),
        "encoder_qkv_multiscales": tuple(tuple(s) for s in _per_stage(
            self.encoder_qkv_multiscales, ne, "encoder_qkv_multiscales")),
        "decoder_qkv_multiscales": tuple(tuple(s) for s in _per_stage(
            self.decoder_qkv_multiscales, nd, "decoder_qkv_multiscales")),
    }
    for k, v in fix.items():
      object.__setattr__(self, k, v)
    for name in ("encoder_block_types", "decoder_block_types"):
      for v in getattr(self, name):
        if v not in BLOCK_TYPES:
          raise ConfigError(f"DCAEConfig.{name}: block type {v!r} is not supported ({', '.join(BLOCK_TYPES)})")
    for v in self.decoder_norm_types:
      if v not in NORM_TYPES:
        raise ConfigError(f"DCAEConfig.decoder_norm_types: {v!r} is not supported ({', '.join(NORM_TYPES)})")
    for v in self.decoder_act_fns + (self.decoder_conv_act_fn,):
      if v not in ACTIVATIONS:
        raise ConfigError(f"DCAEConfig: activation {v!r} is not supported ({', '.join(ACTIVATIONS)})")
    if ne != nd:
      raise ConfigError(f"DCAEConfig: encoder has {ne} stages but decoder {nd}")

  @property
  def spatial_compression_ratio(self) -> int:
    return 2 ** (len(self.encoder_block_out_channels) - 1)

  def replace(self, **kw: Any) -> "DCAEConfig":
    return dataclasses.replace(self, **kw)


def dcae_f32c32_config(**overrides) -> DCAEConfig:
  """SANA's DC-AE f32c32 (`mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers`; 1.1 has the same layout).

  Sources: diffusers scripts/convert_dcae_to_diffusers.py, config "dc-ae-f32c32-sana-1.0":
  ResBlock ×3 then EfficientViTBlock ×3 stages in encoder and decoder; widths (128, 256, 512, 512,
  1024, 1024); encoder depths (2, 2, 2, 3, 3, 3), decoder depths (3, 3, 3, 3, 3, 3); multi-scale
  qkv kernel 5 on the attention stages; stride-2 conv down-sampling ("conv") and nearest-interpolate
  up-sampling ("interpolate"); RMSNorm + SiLU in the decoder; scaling_factor 0.41407. The remaining
  fields (latent 32 channels, head dim 32, shortcuts on, ReLU before conv_out) are diffusers'
  defaults. 312,250,275 parameters (diffusers 0.42.1 built with this config).
  """
  stages = ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3
  return DCAEConfig(in_channels=3, latent_channels=32, attention_head_dim=32,
                    encoder_block_types=stages, decoder_block_types=stages,
                    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
                    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                    decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                    downsample_block_type="Conv", upsample_block_type="interpolate",
                    decoder_norm_types="rms_norm", decoder_act_fns="silu",
                    scaling_factor=0.41407).replace(**overrides)


# ----------------------------------------------------------------------------------------------
# Space <-> channel rearrangements (NHWC versions of torch's pixel_(un)shuffle, same channel order).
# ----------------------------------------------------------------------------------------------

def pixel_unshuffle(x: jax.Array, r: int) -> jax.Array:
  """[B, H·r, W·r, C] -> [B, H, W, C·r²]; output channel c·r² + i·r + j holds offset (i, j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // r, r, w // r, r, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x: jax.Array, r: int) -> jax.Array:
  """Inverse of `pixel_unshuffle`: [B, H, W, C·r²] -> [B, H·r, W·r, C]."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, c // (r * r), r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, c // (r * r))


def channel_average(x: jax.Array, out_channels: int) -> jax.Array:
  """Means of consecutive channel groups: [..., C] -> [..., out_channels]."""
  return x.reshape(x.shape[:-1] + (out_channels, x.shape[-1] // out_channels)).mean(axis=-1)


def channel_repeat(x: jax.Array, repeats: int) -> jax.Array:
  """Each channel repeated in place (torch repeat_interleave): [..., C] -> [..., C·repeats]."""
  return jnp.repeat(x, repeats, axis=-1)


# ----------------------------------------------------------------------------------------------
# Blocks.
# ----------------------------------------------------------------------------------------------

class ResBlock(nnx.Module):
  """x + RMSNorm(conv2(act(conv1(x)))): [B, H, W, C] -> [B, H, W, C] (conv2 has no bias)."""

  def __init__(self, channels: int, *, act: str, dtype, param_dtype, rngs: nnx.Rngs | None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.act_name = act
    self.conv1 = Conv2d(channels, channels, 3, **kw)
    self.conv2 = Conv2d(channels, channels, 3, use_bias=False, **kw)
    self.norm = ChannelRMSNorm(channels, eps=1e-5, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return x + self.norm(self.conv2(ACTIVATIONS[self.act_name](self.conv1(x))))


class MultiscaleProjection(nnx.Module):
  """One extra attention scale: depthwise k×k conv then a 1x1 conv grouped per (q|k|v, head)."""

  def __init__(self, channels: int, num_groups: int, kernel_size: int, *, dtype, param_dtype,
               rngs: nnx.Rngs | None):
    kw = dict(use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.proj_in = Conv2d(channels, channels, kernel_size, groups=channels, **kw)
    self.proj_out = Conv2d(channels, channels, 1, groups=num_groups, **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nnx.Module):
  """EfficientViT multi-scale ReLU linear attention with residual: [B, H, W, C] -> [B, H, W, C].

  q, k, v = to_q/k/v(x) (C -> I = heads·d each) are concatenated to 3I channels; each kernel size
  adds a `MultiscaleProjection` of them; all scales are concatenated and cut into consecutive
  groups of 3d channels, each group's thirds being that head's (q, k, v). (This follows diffusers,
  whose to_q/to_k/to_v are the three row blocks of EfficientViT's fused qkv conv.) Per head:
  out = Σ_j v_j relu(k_j)ᵀrelu(q) / (Σ_j relu(k_j)ᵀrelu(q) + 1e-15), computed as linear attention
  in float32 when H·W > d and as the equivalent explicit N×N form otherwise (as diffusers). Then
  to_out (no bias), RMSNorm, + x.
  """

  def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], *, dtype,
               param_dtype, rngs: nnx.Rngs | None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    heads = channels // head_dim
    inner = heads * head_dim
    self.head_dim, self.dtype = head_dim, dtype
    lin = dict(axes=("conv_in", "conv_out"), use_bias=False, **kw)
    self.to_q = Linear(channels, inner, **lin)
    self.to_k = Linear(channels, inner, **lin)
    self.to_v = Linear(channels, inner, **lin)
    self.to_qkv_multiscale = nnx.List([
        MultiscaleProjection(3 * inner, 3 * heads, k, **kw) for k in kernel_sizes])
    self.to_out = Linear(inner * (1 + len(kernel_sizes)), channels, **lin)
    self.norm_out = ChannelRMSNorm(channels, eps=1e-5, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    d = self.head_dim
    qkv = jnp.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)
    qkv = jnp.concatenate([qkv] + [proj(qkv) for proj in self.to_qkv_multiscale], axis=-1)
    linear = h * w > d
    if linear:
      qkv = qkv.astype(jnp.float32)
    qkv = qkv.reshape(b, h * w, -1, 3, d)                          # [B, N, G, (q|k|v), d]
    q, k, v = jax.nn.relu(qkv[:, :, :, 0]), jax.nn.relu(qkv[:, :, :, 1]), qkv[:, :, :, 2]
    if linear:
      v = jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)
      kv = jnp.einsum("bngv,bngk->bgvk", v, k)                     # [B, G, d+1, d]
      out = jnp.einsum("bgvk,bngk->bngv", kv, q)
      out = (out[..., :-1] / (out[..., -1:] + ATTENTION_EPS)).astype(self.dtype)
    else:
      scores = jnp.einsum("bmgk,bngk->bgmn", k, q).astype(jnp.float32)     # [B, G, N_k, N_q]
      scores = scores / (jnp.sum(scores, axis=2, keepdims=True) + ATTENTION_EPS)
      out = jnp.einsum("bmgv,bgmn->bngv", v, scores.astype(v.dtype))
    out = out.reshape(b, h, w, -1)
    return x + self.norm_out(self.to_out(out))


class EfficientViTBlock(nnx.Module):
  """Multi-scale linear attention then GLUMBConv (expand 4, RMSNorm, residual): [B,H,W,C] -> same."""

  def __init__(self, channels: int, *, head_dim: int, kernel_sizes: tuple[int, ...], dtype,
               param_dtype, rngs: nnx.Rngs | None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn = MultiscaleLinearAttention(channels, head_dim, kernel_sizes, **kw)
    self.conv_out = GLUMBConv(channels, channels, 4 * channels, norm=True, residual=True,
                              axes=("conv_in", "conv_out"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv_out(self.attn(x))


class DownBlock(nnx.Module):
  """2x down-sampler C_in -> C_out: stride-2 3x3 conv, or 3x3 conv to C_out/4 + pixel-unshuffle;
  with `shortcut`, plus the pixel-unshuffled input averaged over channel groups."""

  def __init__(self, in_channels: int, out_channels: int, *, pixel_unshuffle: bool, shortcut: bool,
               dtype, param_dtype, rngs: nnx.Rngs | None):
    if pixel_unshuffle and out_channels % 4:
      raise ConfigError(f"DC-AE pixel-unshuffle down-sampler needs out channels divisible by 4, "
                        f"got {out_channels}")
    self.unshuffle, self.shortcut, self.out_channels = pixel_unshuffle, shortcut, out_channels
    self.conv = Conv2d(in_channels, out_channels // 4 if pixel_unshuffle else out_channels, 3,
                       stride=1 if pixel_unshuffle else 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(x)
    if self.unshuffle:
      y = pixel_unshuffle(y, 2)
    if self.shortcut:
      y = y + channel_average(pixel_unshuffle(x, 2), self.out_channels)
    return y


class UpBlock(nnx.Module):
  """2x up-sampler C_in -> C_out: nearest-2x + 3x3 conv, or 3x3 conv to 4·C_out + pixel-shuffle;
  with `shortcut`, plus the input with channels repeated and pixel-shuffled."""

  def __init__(self, in_channels: int, out_channels: int, *, interpolate: bool, shortcut: bool,
               dtype, param_dtype, rngs: nnx.Rngs | None):
    self.interpolate, self.shortcut = interpolate, shortcut
    self.repeats = out_channels * 4 // in_channels
    self.conv = Conv2d(in_channels, out_channels if interpolate else 4 * out_channels, 3, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.interpolate:
      y = self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    else:
      y = pixel_shuffle(self.conv(x), 2)
    if self.shortcut:
      y = y + pixel_shuffle(channel_repeat(x, self.repeats), 2)
    return y


def _block(kind: str, channels: int, *, act: str, head_dim: int, scales: tuple[int, ...], **kw):
  if kind == "ResBlock":
    return ResBlock(channels, act=act, **kw)
  return EfficientViTBlock(channels, head_dim=head_dim, kernel_sizes=scales, **kw)


# ----------------------------------------------------------------------------------------------
# Encoder, decoder, autoencoder.
# ----------------------------------------------------------------------------------------------

class Encoder(nnx.Module):
  """images [B, H, W, in_channels] -> latents [B, H/f, W/f, latent_channels], f = 2^(stages − 1)."""

  def __init__(self, c: DCAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    widths, depths = c.encoder_block_out_channels, c.encoder_layers_per_block
    unshuffle = c.downsample_block_type == "pixel_unshuffle"
    if depths[0] > 0:
      self.conv_in = Conv2d(c.in_channels, widths[0], 3, **kw)
    else:
      self.conv_in = DownBlock(c.in_channels, widths[1], pixel_unshuffle=unshuffle, shortcut=False, **kw)
    stages = []
    for i, (width, depth) in enumerate(zip(widths, depths)):
      layers = [_block(c.encoder_block_types[i], width, act="silu", head_dim=c.attention_head_dim,
                       scales=c.encoder_qkv_multiscales[i], **kw) for _ in range(depth)]
      if i < len(widths) - 1 and depth > 0:
        layers.append(DownBlock(width, widths[i + 1], pixel_unshuffle=unshuffle, shortcut=True, **kw))
      stages.append(nnx.List(layers))
    self.down_blocks = nnx.List(stages)
    self.conv_out = Conv2d(widths[-1], c.latent_channels, 3, **kw)
    self.out_shortcut, self.latent_channels = c.encoder_out_shortcut, c.latent_channels

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv_in(x)
    for stage in self.down_blocks:
      for layer in stage:
        x = layer(x)
    y = self.conv_out(x)
    return y + channel_average(x, self.latent_channels) if self.out_shortcut else y


class Decoder(nnx.Module):
  """latents [B, h, w, latent_channels] -> images [B, h·f, w·f, in_channels]."""

  def __init__(self, c: DCAEConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    widths, depths = c.decoder_block_out_channels, c.decoder_layers_per_block
    interpolate = c.upsample_block_type == "interpolate"
    self.conv_in = Conv2d(c.latent_channels, widths[-1], 3, **kw)
    self.in_shortcut = c.decoder_in_shortcut
    self.in_repeats = widths[-1] // c.latent_channels
    stages = []
    for i, (width, depth) in enumerate(zip(widths, depths)):
      layers = []
      if i < len(widths) - 1 and depth > 0:
        layers.append(UpBlock(widths[i + 1], width, interpolate=interpolate, shortcut=True, **kw))
      layers += [_block(c.decoder_block_types[i], width, act=c.decoder_act_fns[i],
                        head_dim=c.attention_head_dim, scales=c.decoder_qkv_multiscales[i], **kw)
                 for _ in range(depth)]
      stages.append(nnx.List(layers))
    self.up_blocks = nnx.List(stages)
    channels = widths[0] if depths[0] > 0 else widths[1]
    self.norm_out = ChannelRMSNorm(channels, eps=1e-5, param_dtype=param_dtype, rngs=rngs)
    self.conv_act = c.decoder_conv_act_fn
    if depths[0] > 0:
      self.conv_out = Conv2d(channels, c.in_channels, 3, **kw)
    else:
      self.conv_out = UpBlock(channels, c.in_channels, interpolate=interpolate, shortcut=False, **kw)

  def __call__(self, z: jax.Array) -> jax.Array:
    x = self.conv_in(z)
    if self.in_shortcut:
      x = x + channel_repeat(z.astype(x.dtype), self.in_repeats)
    for stage in reversed(self.up_blocks):
      for layer in stage:
        x = layer(x)
    return self.conv_out(ACTIVATIONS[self.conv_act](self.norm_out(x)))


class AutoencoderDC(nnx.Module):
  """DC-AE: `encode` [B, H, W, 3] -> [B, H/f, W/f, C]; `decode` back; `__call__` = decode(encode(x)).

  H and W must be multiples of f = `config.spatial_compression_ratio` (32 for f32c32). No tiling.
  """

  def __init__(self, config: DCAEConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=rngs)
    self.encoder = Encoder(c, **kw)
    self.decoder = Decoder(c, **kw)

  @property
  def scaling_factor(self) -> float:
    """Multiply `encode` outputs by this to get unit-variance diffusion latents (divide before decode)."""
    return self.config.scaling_factor

  def encode(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, in_channels] (in [-1, 1]) -> unscaled latents [B, H/f, W/f, latent_channels]."""
    f = self.config.spatial_compression_ratio
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not a multiple of the "
                       f"compression ratio {f}")
    return self.encoder(images.astype(jnp.dtype(self.config.dtype)))

  def decode(self, latents: jax.Array) -> jax.Array:
    """unscaled latents [B, h, w, latent_channels] -> images [B, h·f, w·f, in_channels] (≈[-1, 1])."""
    return self.decoder(latents.astype(jnp.dtype(self.config.dtype)))

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.decode(self.encode(images))
