"""Vision transformers: SigLIP / SigLIP2 (fixed resolution and NaFlex) and CLIP vision towers.

Images are NHWC float arrays, normalised as the tower's HF image processor does (SigLIP/SigLIP2: mean
0.5, std 0.5, i.e. [-1, 1]; CLIP: OpenAI mean/std). The variants share every layer and differ in config:

  SigLIP: conv patch embed with bias, no class token, post-LayerNorm on all tokens, optional
          attention-pooling ("MAP") head for `pooler_output`, gelu-tanh MLP.
  CLIP:   conv patch embed without bias, class token, pre-LayerNorm, post-LayerNorm on the class
          token only (`pooler_output`), quick-gelu MLP; `last_hidden_state` is not post-normed.
  SigLIP2 NaFlex (HF `siglip2`, `num_patches` set): SigLIP, except that the patch embedding is stored
          as a Linear over flattened (p, p, C) patches (`patch_embed="linear"`; the same map as the
          conv), and the learned g×g position table (g² = num_patches) is resized to each image's
          patch grid with bilinear, antialiased, align_corners=False interpolation (computed in f32).
          Images of any size divisible by the patch size are accepted, with a padding mask in
          `encode_patches` for batches of differently shaped images.

Option (no HF counterpart): `stem="conv"` replaces the patchify embedding by a convolutional stem
(after Xiao et al. 2021, "Early Convolutions Help Transformers See Better"): a stride-1 3×3 convolution at
full resolution, log2(p) stride-2 3×3 convolutions (widths stem_width·2^i, GELU after each) and a 1×1
convolution to D, giving the same (H/p)×(W/p) token grid.
Tiny towers trained from scratch need it: on ShapesWorld single-object shape classification (32 px,
p = 4, width 64, 2 layers, 600 Adam steps) the patchify tower stays near chance (~0.31 for 6 shapes)
while the conv-stem tower reaches ~0.95 (BENCHMARKS.md, "Learning levers").

    tower = jaxmodels.hf.from_pretrained("/ckpts/siglip-so400m-patch14-384")
    tokens = tower(pixels)                                   # [B, 384, 384, 3] -> [B, 729, 1152]
    out = tower(pixels, output_hidden_states=True)           # out.hidden_states: [L+1, B, N, D]
    pooled = avg_pool_tokens(tokens_32x32, 4)                # [B, 1024, D] -> [B, 64, D]

    naflex = jaxmodels.hf.from_pretrained("/ckpts/siglip2-so400m-patch16-naflex")
    tokens = naflex(pixels_256x384)                          # grid 16x24, no padding
    out = naflex.encode_patches(batch["pixel_values"], batch["spatial_shapes"],
                                batch["pixel_attention_mask"], output_hidden_states=True)
                                                             # Siglip2ImageProcessor's outputs as-is
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels import sharding
from jaxmodels.errors import ConfigError
from jaxmodels.layers import (MLP, Attention, BlockStack, LayerNorm, TransformerBlock, make_attention_mask,
                              param)
from jaxmodels.layers.conv import Conv2d
from jaxmodels.layers.linear import fan_in_normal


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  """ViT hyper-parameters (HF names where they exist). Defaults: SigLIP-so400m-patch14-384."""
  model_type: str = "siglip_vision_model"     # or "clip_vision_model", "siglip2_vision_model"
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 27
  num_heads: int = 16
  image_size: int = 384
  patch_size: int = 14
  num_channels: int = 3
  hidden_act: str = "gelu_pytorch_tanh"
  layer_norm_eps: float = 1e-6
  use_head: bool = True                       # SigLIP attention-pooling head
  projection_dim: int | None = None           # CLIP (kept for export only)
  # How the patch-embedding kernel [p, p, C, D] is stored in HF checkpoints: "conv" (Conv2d weight
  # [D, C, p, p]) or "linear" (SigLIP2: nn.Linear weight [D, p·p·C] over (row, col, channel)-flattened
  # patches). The computation is the same either way.
  patch_embed: str = "conv"
  # "patch": HF's patchify embedding; "conv": a convolutional stem (module docstring), ours only.
  stem: str = "patch"
  stem_width: int = 32
  # SigLIP2 NaFlex: size of the learned square position table (g×g, g = √num_patches), bilinearly
  # resized to each image's patch grid, so any image whose sides are multiples of patch_size works.
  # None: a fixed table for image_size×image_size images (SigLIP / CLIP).
  num_patches: int | None = None
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.patch_embed not in ("conv", "linear"):
      raise ConfigError(f"VisionConfig.patch_embed must be 'conv' or 'linear', got {self.patch_embed!r}")
    if self.stem not in ("patch", "conv"):
      raise ConfigError(f"VisionConfig.stem must be 'patch' or 'conv', got {self.stem!r}")
    if self.stem == "conv":
      if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
        raise ConfigError(f"VisionConfig.stem='conv' needs a power-of-two patch_size, got {self.patch_size}")
      if self.num_patches is not None:
        raise ConfigError("VisionConfig.stem='conv' is not supported with NaFlex (num_patches)")
    if self.num_patches is not None:
      g = math.isqrt(self.num_patches)
      if self.num_patches <= 0 or g * g != self.num_patches:
        raise ConfigError(f"VisionConfig.num_patches must be a positive square (a g×g position table), "
                          f"got {self.num_patches}")
      if self.is_clip:
        raise ConfigError("VisionConfig.num_patches (resizable positions) is not supported for CLIP towers")
    elif self.model_type.startswith("siglip2"):
      raise ConfigError(f"VisionConfig: model_type {self.model_type!r} (NaFlex) needs num_patches")

  @property
  def is_clip(self) -> bool:
    return self.model_type.startswith("clip")

  @property
  def naflex(self) -> bool:
    """True when positions are resized to each image's grid (SigLIP2 NaFlex)."""
    return self.num_patches is not None

  @property
  def grid_size(self) -> int:
    """Patches per side of the (native) square image: image_size / patch_size."""
    return self.image_size // self.patch_size

  @property
  def position_grid(self) -> int:
    """Side of the learned position table: √num_patches (NaFlex) or grid_size."""
    return math.isqrt(self.num_patches) if self.naflex else self.grid_size

  @property
  def num_positions(self) -> int:
    return self.position_grid ** 2 + (1 if self.is_clip else 0)

  def replace(self, **kw: Any) -> "VisionConfig":
    return dataclasses.replace(self, **kw)


@flax.struct.dataclass   # a pytree: can be returned from jit
class VisionOutput:
  last_hidden_state: jax.Array                # [B, N, D]
  hidden_states: jax.Array | None = None      # [L+1, B, N, D]: embeddings, then every layer
  pooler_output: jax.Array | None = None      # [B, D]


class PatchEmbed(nnx.Module):
  """Non-overlapping p×p patches (a stride-p convolution): [B, H, W, C] -> [B, (H/p)·(W/p), D]."""

  def __init__(self, patch: int, channels: int, dim: int, *, use_bias: bool, dtype, param_dtype,
               rngs: nnx.Rngs | None):
    self.patch, self.dtype = patch, dtype
    self.kernel = param(rngs, fan_in_normal(patch * patch * channels), (patch, patch, channels, dim),
                        ("patch", "patch", "conv_in", "embed"), param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",), param_dtype) if use_bias else None

  def embed_patches(self, patches: jax.Array) -> jax.Array:
    """Already flattened patches [B, N, p·p·C] ((row, col, channel) order, as HF's Siglip2ImageProcessor
    writes them) -> [B, N, D]."""
    k = self.kernel[...].astype(self.dtype)
    y = jnp.einsum("bnk,kd->bnd", patches.astype(self.dtype), k.reshape(-1, k.shape[-1]))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    p = self.patch
    gh, gw = h // p, w // p
    x = x[:, :gh * p, :gw * p].astype(self.dtype).reshape(b, gh, p, gw, p, c)
    y = jnp.einsum("bhiwjc,ijcd->bhwd", x, self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y.reshape(b, gh * gw, -1)


class ConvStem(nnx.Module):
  """Convolutional stem: [B, H, W, C] -> [B, (H/p)·(W/p), D] through a stride-1 3×3 convolution (width
  w), log2(p) stride-2 3×3 convolutions (widths 2w, 4w, ...), GELU after each, and a 1×1 convolution to D."""

  def __init__(self, patch: int, channels: int, dim: int, width: int, *, dtype, param_dtype,
               rngs: nnx.Rngs | None):
    convs, c_in = [], channels
    for i in range(patch.bit_length()):            # one stride-1 convolution, then log2(p) stride-2
      convs.append(Conv2d(c_in, width << i, 3, stride=2 if i else 1, dtype=dtype, param_dtype=param_dtype,
                          rngs=rngs))
      c_in = width << i
    self.convs = nnx.List(convs)
    self.out = Conv2d(c_in, dim, 1, padding=0, axes=("conv_in", "embed"), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.convs:
      x = jax.nn.gelu(conv(x))
    y = self.out(x)
    return y.reshape(y.shape[0], -1, y.shape[-1])


class AttentionPoolingHead(nnx.Module):
  """SigLIP's MAP head: a learned probe attends over the tokens, then LayerNorm + MLP residual."""

  def __init__(self, c: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    d = c.hidden_size
    self.probe = param(rngs, nnx.initializers.normal(0.02), (1, 1, d), (None, None, "embed"), param_dtype)
    self.attn = Attention(d, c.num_heads, qkv_bias=True, out_bias=True, impl=c.attention_impl,
                          dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.mlp = MLP(d, c.intermediate_size, activation=c.hidden_act, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x [B, N, D]; mask [B, N] (True/1 = real token) keeps the probe off padding tokens."""
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    if mask is not None:
      mask = mask.astype(bool)[:, None, None, :]                  # [B, 1, 1, N]
    h, _ = self.attn(probe, kv_input=x, mask=mask)
    h = h + self.mlp(self.norm(h))
    return h[:, 0]


class VisionTransformer(nnx.Module):
  """pixel_values [B, H, W, C] -> last_hidden_state [B, N, D] (see module docstring)."""

  def __init__(self, config: VisionConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    d = c.hidden_size
    if c.stem == "conv":
      self.patch_embed = ConvStem(c.patch_size, c.num_channels, d, c.stem_width, dtype=dtype,
                                  param_dtype=pdtype, rngs=rngs)
    else:
      self.patch_embed = PatchEmbed(c.patch_size, c.num_channels, d, use_bias=not c.is_clip,
                                    dtype=dtype, param_dtype=pdtype, rngs=rngs)
    self.class_embedding = (param(rngs, nnx.initializers.normal(0.02), (d,), ("embed",), pdtype)
                            if c.is_clip else None)
    self.position_embedding = param(rngs, nnx.initializers.normal(0.02), (c.num_positions, d),
                                    (None, "embed"), pdtype)
    self.pre_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs) if c.is_clip else None

    def make_block(r):
      return TransformerBlock(d, c.num_heads, c.intermediate_size, norm="layer", norm_eps=c.layer_norm_eps,
                              mlp="plain", activation=c.hidden_act, qkv_bias=True, out_bias=True,
                              mlp_bias=True, attention_impl=c.attention_impl, dtype=dtype,
                              param_dtype=pdtype, rngs=r)

    self.layers = BlockStack(c.num_layers, make_block, scan=c.scan_layers, remat=c.remat, rngs=rngs)
    self.post_norm = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.head = (AttentionPoolingHead(c, dtype=dtype, param_dtype=pdtype, rngs=rngs)
                 if c.use_head and not c.is_clip else None)

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """[B, H, W, C] -> token embeddings [B, N, D] (class token first for CLIP)."""
    c = self.config
    b, h, w, _ = pixel_values.shape
    if c.naflex:
      p = c.patch_size
      if h % p or w % p or h < p or w < p:
        raise ValueError(f"pixel_values {tuple(pixel_values.shape)}: height and width must be positive "
                         f"multiples of the patch size {p}")
      x = self.patch_embed(pixel_values)
      return self._add_positions(x, np.array([[h // p, w // p]], np.int32))
    x = self.patch_embed(pixel_values)
    if x.shape[1] != c.grid_size ** 2:
      raise ValueError(f"pixel_values {tuple(pixel_values.shape)} give {x.shape[1]} patches; this tower "
                       f"expects {c.image_size}x{c.image_size} images ({c.grid_size ** 2} patches)")
    if self.class_embedding is not None:
      cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.position_embedding[...].astype(x.dtype)[None]
    if self.pre_norm is not None:
      x = self.pre_norm(x)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

  def _add_positions(self, x: jax.Array, spatial_shapes) -> jax.Array:
    """NaFlex: x [B, N, D] + the position table resized to each row's (h, w) grid ([B|1, 2])."""
    g = self.config.position_grid
    table = self.position_embedding[...]
    if isinstance(spatial_shapes, np.ndarray) and spatial_shapes.shape[0] == 1 and \
        tuple(spatial_shapes[0]) == (g, g) and x.shape[1] == g * g:
      pos = table[None]                                      # native grid: the resize is the identity
    else:
      weights = position_resize_weights(spatial_shapes, x.shape[1], g)        # [B|1, N, g²] f32
      pos = jnp.einsum("bnk,kd->bnd", weights, table.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST).astype(table.dtype)
    x = x + pos.astype(x.dtype)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

  def _encode(self, x0: jax.Array, mask: jax.Array | None, output_hidden_states: bool):
    attn_mask = None
    if mask is not None:
      slots = jnp.arange(x0.shape[1])
      attn_mask = make_attention_mask(slots, slots, mask, causal=False)      # [B, 1, N, N]
    x, _, layer_outputs = self.layers(x0, mask=attn_mask, return_hidden=output_hidden_states)
    if self.config.is_clip:
      last = x
      pooled = self.post_norm(x[:, 0])
    else:
      last = self.post_norm(x)
      pooled = self.head(last, mask) if self.head is not None else None
    if not output_hidden_states:
      return last
    hidden = jnp.concatenate([x0[None], layer_outputs], axis=0)
    return VisionOutput(last, hidden, pooled)

  def __call__(self, pixel_values: jax.Array, *, output_hidden_states: bool = False):
    """Returns last_hidden_state [B, N, D], or a `VisionOutput` when output_hidden_states=True.

    NaFlex towers take any H, W that are multiples of the patch size; every row then has the grid
    (H/p, W/p), N = H·W/p², tokens in row-major patch order, and no padding."""
    return self._encode(self.embed(pixel_values), None, output_hidden_states)

  def encode_patches(self, patches: jax.Array, spatial_shapes, mask: jax.Array | None = None, *,
                     output_hidden_states: bool = False):
    """NaFlex (SigLIP2) entry point taking HF `Siglip2ImageProcessor` outputs as they are.

    patches [B, N, p·p·C]: each row holds its image's h·w patches in row-major order, each flattened
    in (row, col, channel) order, then padding; spatial_shapes [B, 2] int: each row's (h, w) patch
    grid; mask [B, N] (1/True = real patch; HF's `pixel_attention_mask`), default: the first h·w
    patches of each row. Padding patches are ignored as keys by every layer and by the MAP head, and
    get the position of patch (0, 0) like HF (their own outputs are not meaningful).

    Shapes and jit: only B and N are static. spatial_shapes may be a traced array — the resize is a
    linear map [N, g²] per row whose weights are computed from the (h, w) values (see
    `position_resize_weights`) — so one compiled function serves every mix of grids of a given (B, N).
    Returns last_hidden_state [B, N, D] or a `VisionOutput` (pooler_output from the masked MAP head).
    """
    c = self.config
    if not c.naflex:
      raise ValueError("encode_patches needs a NaFlex (SigLIP2) tower: config.num_patches is not set")
    p = c.patch_size
    if patches.ndim != 3 or patches.shape[-1] != p * p * c.num_channels:
      raise ValueError(f"patches {tuple(patches.shape)}: expected [B, N, {p * p * c.num_channels}] "
                       f"(patch size {p}, {c.num_channels} channels)")
    b, n, _ = patches.shape
    if not isinstance(spatial_shapes, jax.core.Tracer):
      shapes = np.asarray(spatial_shapes)
      if shapes.shape != (b, 2):
        raise ValueError(f"spatial_shapes {shapes.shape}: expected ({b}, 2)")
      if (shapes <= 0).any() or (shapes.prod(-1) > n).any():
        raise ValueError(f"spatial_shapes {shapes.tolist()}: every grid needs 1..{n} patches")
    spatial_shapes = jnp.asarray(spatial_shapes, jnp.int32)
    if mask is None:
      mask = jnp.arange(n)[None] < spatial_shapes.prod(-1, keepdims=True)
    x0 = self._add_positions(self.patch_embed.embed_patches(patches), spatial_shapes)
    return self._encode(x0, mask.astype(bool), output_hidden_states)

  def pooled(self, pixel_values: jax.Array) -> jax.Array:
    """HF's `pooler_output` [B, D] (SigLIP MAP head / CLIP post-normed class token)."""
    return self(pixel_values, output_hidden_states=True).pooler_output


def position_resize_weights(spatial_shapes, length: int, grid: int) -> jax.Array:
  """Interpolation weights [B, length, grid²] (f32) that resize a grid×grid table to each row's grid.

  spatial_shapes [B, 2] int (h, w), possibly traced. Output slot i < h·w is patch (i // w, i % w);
  later (padding) slots take patch (0, 0). Along each axis the weights are those of
  `F.interpolate(mode="bilinear", align_corners=False, antialias=True)` — a triangle filter centred
  at (i + ½)·s − ½ (s = grid / size) and widened to s when downsampling, normalised to sum 1; for
  upsampling this is plain bilinear with edge clamping. The 2-D weights are the outer product.
  """
  sizes = jnp.maximum(jnp.asarray(spatial_shapes, jnp.int32), 1)              # [B, 2]
  h, w = sizes[:, :1], sizes[:, 1:]
  slot = jnp.arange(length, dtype=jnp.int32)[None]                           # [1, N]
  real = slot < h * w
  row = jnp.where(real, slot // w, 0)
  col = jnp.where(real, slot % w, 0)
  src = jnp.arange(grid, dtype=jnp.float32)

  def axis_weights(index, size):                                             # [B, N], [B, 1]
    scale = grid / size.astype(jnp.float32)
    support = jnp.maximum(scale, 1.0)
    centre = (index.astype(jnp.float32) + 0.5) * scale - 0.5
    wts = jnp.maximum(1.0 - jnp.abs(src - centre[..., None]) / support[..., None], 0.0)
    return wts / wts.sum(-1, keepdims=True)                                  # [B, N, grid]

  wr, wc = axis_weights(row, h), axis_weights(col, w)
  return (wr[..., :, None] * wc[..., None, :]).reshape(sizes.shape[0], length, grid * grid)


def avg_pool_tokens(tokens: jax.Array, factor: int) -> jax.Array:
  """Average-pools a square grid of patch tokens with a factor×factor window and stride.

  tokens [B, N, D] with N = g² (drop any class token first) -> [B, (g/factor)², D]. BLIP3-o and
  Pisces pool the generation encoder's 32×32 grid with factor 4 into 64 tokens.
  """
  b, n, d = tokens.shape
  g = math.isqrt(n)
  if g * g != n or g % factor:
    raise ValueError(f"cannot pool {n} tokens with factor {factor}: need a square grid divisible by it")
  x = tokens.reshape(b, g // factor, factor, g // factor, factor, d)
  return x.mean(axis=(2, 4)).reshape(b, (g // factor) ** 2, d)
