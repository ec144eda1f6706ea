"""SDXL's conditional UNet (diffusers `UNet2DConditionModel`), in Flax NNX, NHWC.

    unet = jaxmodels.hf.from_pretrained("/ckpts/sdxl/unet")       # -> UNet2DConditionModel
    eps = unet(latents, t, context, text_embeds=pooled, time_ids=time_ids)

latents [B, h, w, 4]; t [B] or a scalar (float timesteps in [0, 1000)); context [B, S, D_cross]
(`encoder_hidden_states`); with addition_embed_type="text_time", text_embeds [B, P] and time_ids
[B, K] (SDXL: K = 6, P + 256·6 = projection_class_embeddings_input_dim). Returns the network's
prediction (ε for SDXL) [B, h, w, out_channels].

Structure (as diffusers):
  t -> sinusoid(C_0) -> time_embedding MLP -> temb (4·C_0)
  [text_time] temb += add_embedding(concat(text_embeds, sinusoid_256(time_ids) per id))
  conv_in -> down blocks (skips) -> mid block -> up blocks (skip concatenation) -> GroupNorm -> act
  -> conv_out
Per level i: block_out_channels[i], layers_per_block[i] resnets (+1 in the up blocks),
transformer_layers_per_block[i] layers in each Transformer2DModel, and attention_head_dim[i]
*heads* (diffusers reads the misnamed attention_head_dim as the head count; head width =
channels // heads); cross_attention_dim may also vary per level.
Only the options SD/SDXL checkpoints use are implemented; the others are rejected by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.flow.embeddings import TimestepEmbedding, timestep_embedding
from jaxmodels.layers.activations import get_activation
from jaxmodels.layers.block import REMAT_POLICIES
from jaxmodels.layers.conv import Conv2d
from jaxmodels.layers.group_norm import GroupNorm
from jaxmodels.layers.key_stream import KeyStream
from jaxmodels.sdxl.config_checks import check_block_types, freeze_lists
from jaxmodels.sdxl.unet_blocks import DownBlock, LevelSpec, MidBlock, UpBlock

DOWN_BLOCK_TYPES = ("DownBlock2D", "CrossAttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "CrossAttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2DCrossAttn", None)
ADDITION_EMBED_TYPES = (None, "text_time")

# Options accepted only at the value SD/SDXL use (diffusers default); anything else is a ConfigError.
_FIXED = {
    "only_cross_attention": (False,), "mid_block_only_cross_attention": (None, False),
    "dual_cross_attention": (False,), "class_embed_type": (None,), "num_class_embeds": (None,),
    "class_embeddings_concat": (False,), "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,),
    "num_attention_heads": (None,), "time_embedding_type": ("positional",),
    "timestep_post_act": (None,), "time_cond_proj_dim": (None,), "attention_type": ("default",),
    "cross_attention_norm": (None,), "dropout": (0.0,),
}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """`UNet2DConditionModel` hyper-parameters: diffusers names and defaults (diffusers 0.42).

  See `sdxl_unet_config()` for SDXL base. Per-level fields take one value or one per level;
  `transformer_layers_per_block` may also give one count per resnet of each level (then
  `reverse_transformer_layers_per_block` gives the up blocks' counts, as in diffusers).
  `upcast_attention` is accepted and has no effect: softmax is always computed in float32.
  `resnet_skip_time_act` and `resnet_out_scale_factor` are accepted and, as in diffusers, unused by
  the block types implemented here (only its ResnetDownsample / SimpleCrossAttn blocks read them).
  """
  sample_size: Any = None
  in_channels: int = 4
  out_channels: int = 4
  center_input_sample: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0
  down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "DownBlock2D")
  mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
  up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                           "CrossAttnUpBlock2D")
  only_cross_attention: Any = False
  block_out_channels: tuple = (320, 640, 1280, 1280)
  layers_per_block: Any = 2
  downsample_padding: int = 1
  mid_block_scale_factor: float = 1.0
  dropout: float = 0.0
  act_fn: str = "silu"
  norm_num_groups: int = 32
  norm_eps: float = 1e-5
  cross_attention_dim: Any = 1280
  transformer_layers_per_block: Any = 1
  reverse_transformer_layers_per_block: Any = None
  encoder_hid_dim: int | None = None
  encoder_hid_dim_type: str | None = None
  attention_head_dim: Any = 8
  num_attention_heads: Any = None
  dual_cross_attention: bool = False
  use_linear_projection: bool = False
  class_embed_type: str | None = None
  addition_embed_type: str | None = None
  addition_time_embed_dim: int | None = None
  num_class_embeds: int | None = None
  upcast_attention: bool | None = False
  resnet_time_scale_shift: str = "default"
  resnet_skip_time_act: bool = False
  resnet_out_scale_factor: float = 1.0
  time_embedding_type: str = "positional"
  time_embedding_dim: int | None = None
  time_embedding_act_fn: str | None = None
  timestep_post_act: str | None = None
  time_cond_proj_dim: int | None = None
  conv_in_kernel: int = 3
  conv_out_kernel: int = 3
  projection_class_embeddings_input_dim: int | None = None
  attention_type: str = "default"
  class_embeddings_concat: bool = False
  mid_block_only_cross_attention: bool | None = None
  cross_attention_norm: str | None = None
  addition_embed_type_num_heads: int = 64
  # Execution choices (not part of the checkpoint).
  scan_layers: bool = False          # each Transformer2DModel's layers as one lax.scan
  remat: str = "none"                # per transformer layer, see layers.block.REMAT_POLICIES
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    freeze_lists(self)
    for name, allowed in _FIXED.items():
      value = getattr(self, name)
      values = value if isinstance(value, tuple) else (value,)
      if any(v not in allowed for v in values):
        raise ConfigError(f"UNetConfig.{name}={value!r} is not supported (only {allowed[0]!r})")
    check_block_types(self, DOWN_BLOCK_TYPES, UP_BLOCK_TYPES)
    n = len(self.block_out_channels)
    if self.mid_block_type not in MID_BLOCK_TYPES:
      raise ConfigError(f"UNetConfig.mid_block_type {self.mid_block_type!r} is not supported "
                        f"(UNetMidBlock2DCrossAttn or null)")
    if self.addition_embed_type not in ADDITION_EMBED_TYPES:
      raise ConfigError(f"UNetConfig.addition_embed_type {self.addition_embed_type!r} is not supported "
                        "(null or 'text_time')")
    if self.addition_embed_type == "text_time" and (self.addition_time_embed_dim is None or
                                                    self.projection_class_embeddings_input_dim is None):
      raise ConfigError("UNetConfig: addition_embed_type='text_time' needs addition_time_embed_dim and "
                        "projection_class_embeddings_input_dim")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"UNetConfig.remat {self.remat!r} is not one of {sorted(REMAT_POLICIES)}")
    for name in ("attention_head_dim", "cross_attention_dim", "layers_per_block",
                 "transformer_layers_per_block"):
      value = getattr(self, name)
      if isinstance(value, tuple) and len(value) != n:
        raise ConfigError(f"UNetConfig.{name} has {len(value)} entries for {n} levels")
    for act in (self.act_fn, self.time_embedding_act_fn):
      if act is not None:
        get_activation(act)

  def per_level(self, name: str) -> tuple:
    """A per-level field as one value per level (down-block order)."""
    value = getattr(self, name)
    return value if isinstance(value, tuple) else (value,) * len(self.block_out_channels)

  @property
  def time_embed_dim(self) -> int:
    return self.time_embedding_dim or 4 * self.block_out_channels[0]

  def replace(self, **kw: Any) -> "UNetConfig":
    return dataclasses.replace(self, **kw)


def sdxl_unet_config(**overrides) -> UNetConfig:
  """SDXL base 1.0's UNet (`stabilityai/stable-diffusion-xl-base-1.0`, `unet/config.json`): widths
  (320, 640, 1280), a plain first level then two cross-attention levels with 1, 2 and 10 transformer
  layers and 5, 10, 20 heads (head width 64), 2048-d context, text_time added conditioning (1280-d
  pooled text + 6 size/crop ids × 256 = 2816), linear projections."""
  return UNetConfig(
      sample_size=128, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
      block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
      transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
      use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
      projection_class_embeddings_input_dim=2816, upcast_attention=None).replace(**overrides)


def _depths(value, num_layers: int) -> tuple[int, ...]:
  """A level's transformer depth(s) as one count per resnet."""
  return tuple(value) if isinstance(value, tuple) else (value,) * num_layers


class UNet2DConditionModel(nnx.Module):
  """ε-prediction UNet: (latents [B, h, w, C_in], t, context) -> [B, h, w, C_out]; see the module doc."""

  def __init__(self, config: UNetConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), rngs=KeyStream(rngs))
    widths, n = c.block_out_channels, len(c.block_out_channels)
    temb = c.time_embed_dim
    heads, cross, layers = (c.per_level(k) for k in ("attention_head_dim", "cross_attention_dim",
                                                     "layers_per_block"))
    depths = c.per_level("transformer_layers_per_block")
    up_depths = (c.reverse_transformer_layers_per_block if c.reverse_transformer_layers_per_block
                 is not None else tuple(reversed(depths)))
    self.act = get_activation(c.act_fn)
    self.time_embed_act = get_activation(c.time_embedding_act_fn) if c.time_embedding_act_fn else None

    def spec(cross_attn: bool, level: int, transformer_layers, scale: float = 1.0):
      return LevelSpec(
          temb_channels=temb, groups=c.norm_num_groups, eps=c.norm_eps, act=c.act_fn,
          time_embedding_norm=c.resnet_time_scale_shift, output_scale_factor=scale,
          transformer_layers=transformer_layers if cross_attn else None, num_heads=heads[level],
          cross_attention_dim=cross[level], use_linear_projection=c.use_linear_projection,
          scan=c.scan_layers, remat=c.remat, attention_impl=c.attention_impl)

    pad = (c.conv_in_kernel - 1) // 2
    self.conv_in = Conv2d(c.in_channels, widths[0], c.conv_in_kernel, padding=pad, **kw)
    self.time_embedding = TimestepEmbedding(widths[0], temb, activation=c.act_fn, **kw)
    if c.addition_embed_type == "text_time":
      self.add_embedding = TimestepEmbedding(c.projection_class_embeddings_input_dim, temb, **kw)
    else:
      self.add_embedding = None

    down = []
    for i, kind in enumerate(c.down_block_types):
      s = spec(kind == "CrossAttnDownBlock2D", i, _depths(depths[i], layers[i]))
      down.append(DownBlock(widths[max(i - 1, 0)], widths[i], layers[i], s, add_downsample=i < n - 1,
                            downsample_padding=c.downsample_padding, **kw))
    self.down_blocks = nnx.List(down)

    mid_depth = depths[-1] if isinstance(depths[-1], int) else depths[-1][0]
    self.mid_block = (MidBlock(widths[-1], spec(True, n - 1, (mid_depth,), c.mid_block_scale_factor), **kw)
                      if c.mid_block_type is not None else None)

    up, rev = [], tuple(reversed(widths))
    for i, kind in enumerate(c.up_block_types):
      num_layers = layers[n - 1 - i] + 1
      s = spec(kind == "CrossAttnUpBlock2D", n - 1 - i, _depths(up_depths[i], num_layers))
      up.append(UpBlock(rev[min(i + 1, n - 1)], rev[max(i - 1, 0)], rev[i], num_layers, s,
                        add_upsample=i < n - 1, **kw))
    self.up_blocks = nnx.List(up)

    self.conv_norm_out = GroupNorm(widths[0], c.norm_num_groups, eps=c.norm_eps,
                                   param_dtype=kw["param_dtype"], rngs=kw["rngs"])
    pad = (c.conv_out_kernel - 1) // 2
    self.conv_out = Conv2d(widths[0], c.out_channels, c.conv_out_kernel, padding=pad, **kw)

  def time_embeddings(self, timesteps: jax.Array, batch: int, text_embeds: jax.Array | None = None,
                      time_ids: jax.Array | None = None) -> jax.Array:
    """The embedding every resnet receives: [B, time_embed_dim]."""
    c = self.config
    dtype = jnp.dtype(c.dtype)
    t = jnp.broadcast_to(jnp.asarray(timesteps, jnp.float32).reshape(-1), (batch,))
    freqs = timestep_embedding(t, c.block_out_channels[0], flip_sin_to_cos=c.flip_sin_to_cos,
                               downscale_freq_shift=c.freq_shift)
    emb = self.time_embedding(freqs.astype(dtype))
    if self.add_embedding is not None:
      if text_embeds is None or time_ids is None:
        raise ValueError("this UNet has addition_embed_type='text_time': pass text_embeds [B, P] and "
                         "time_ids [B, K]")
      ids = timestep_embedding(jnp.asarray(time_ids, jnp.float32).reshape(-1), c.addition_time_embed_dim,
                               flip_sin_to_cos=c.flip_sin_to_cos, downscale_freq_shift=c.freq_shift)
      added = jnp.concatenate([text_embeds.astype(jnp.float32), ids.reshape(text_embeds.shape[0], -1)], -1)
      emb = emb + self.add_embedding(added.astype(dtype))
    return emb if self.time_embed_act is None else self.time_embed_act(emb)

  def __call__(self, sample: jax.Array, timesteps: jax.Array | float, encoder_hidden_states: jax.Array,
               *, text_embeds: jax.Array | None = None, time_ids: jax.Array | None = None) -> jax.Array:
    """sample [B, h, w, C_in], timesteps [B] or scalar, encoder_hidden_states [B, S, D_cross],
    text_embeds [B, P] and time_ids [B, K] (text_time only) -> [B, h, w, C_out]."""
    c = self.config
    x = sample.astype(jnp.dtype(c.dtype))
    if c.center_input_sample:
      x = 2 * x - 1.0
    emb = self.time_embeddings(timesteps, x.shape[0], text_embeds, time_ids)
    context = encoder_hidden_states.astype(x.dtype)
    factor = 2 ** (len(self.up_blocks) - 1)
    forward_size = x.shape[1] % factor != 0 or x.shape[2] % factor != 0

    x = self.conv_in(x)
    skips = [x]
    for block in self.down_blocks:
      x, res = block(x, emb, context)
      skips.extend(res)
    if self.mid_block is not None:
      x = self.mid_block(x, emb, context)
    for i, block in enumerate(self.up_blocks):
      n = len(block.resnets)
      res, skips = tuple(skips[-n:]), skips[:-n]
      size = tuple(skips[-1].shape[1:3]) if forward_size and i < len(self.up_blocks) - 1 else None
      x = block(x, res, emb, context, size)
    return self.conv_out(self.act(self.conv_norm_out(x)))
