"""EVA-CLIP vision towers (BAAI EVA-CLIP / EVA02-CLIP), the generation target encoder of BLIP3-o.

Structure of the official `EVAVisionTransformer` (baaivision/EVA, EVA-CLIP's `eva_vit_model.py`; BLIP3-o
carries a copy under `blip3o/model/multimodal_encoder/`). Names are the official state dict's (under
`visual.` in a full CLIP checkpoint); ours in brackets:

  patch_embed.proj     Conv2d p×p, stride p, with bias: [B, H, W, 3] -> [B, N, D]   [patch_embed]
  cls_token            [1, 1, D], put before the patch tokens: T = 1 + N            [class_embedding]
  pos_embed            [1, 1 + g², D], learned absolute positions, added after it   [position_embedding]
  blocks.{i}           `num_layers` blocks                                          [layers.blocks.{i}]
    norm1, norm2         LayerNorm, eps 1e-6, with weight and bias
    attn.qkv             one Linear D -> 3·D, no bias of its own (q, k, v rows, heads-major)  [attn.q/k/v]
    attn.q_bias, v_bias  the q and v biases; k has none (zero)       [attn.q.bias, attn.v.bias]
    attn.proj            Linear D -> D with bias; softmax scale head_dim^-0.5       [attn.o]
    mlp.fc1, mlp.fc2     Linear D -> F -> D with biases, exact (erf) GELU between   [mlp.fc1 / fc2]
  norm, head           the final LayerNorm and the CLIP projection: not part of this tower

Block (EVA-CLIP-E sets `postnorm: true`): the norms sit on the residual branches' outputs,

    h = x + norm1(attn(x));   y = h + norm2(mlp(h))                                   x, y: [B, T, D]

while `postnorm=False` gives the pre-norm block of the other EVA-CLIP sizes, h = x + attn(norm1(x)).

EVA-CLIP-E/14-plus (BLIP3-o's `model_configs/eva-clip-E-14-plus.json`; the same vision_cfg as the
official `EVA02-CLIP-bigE-14-plus.json` except image_size 448 for 224): width 1792, 64 layers, head
width 112 (16 heads), mlp_ratio 8.571428571428571 (F = int(1792 · ratio) = 15360), patch 14,
postnorm, qkv_bias. It sets none of `rope` (EVA02-B/L's 2-D rotary positions), `naiveswiglu`
(SwiGLU MLP), `subln` (separate q_proj / k_proj / v_proj and inner LayerNorms), `ls_init_value`
(layer scale gamma_1 / gamma_2) or relative position bias, so the official defaults (all off) hold, and
none of them is modelled here; `xattn` only picks xformers' kernel for the same attention, and
drop-path / patch dropout are training-time and 0. The loader refuses checkpoints holding their
tensors. About 4.35B parameters (`tests/test_eva_clip.py` counts the preset).

BLIP3-o reads (spec §2.3) a 448×448 image normalised with the OpenAI-CLIP mean / std, takes the last
block's output with no final norm (`forward_features(x, return_all_features=True)`), drops the class
token — `patch_tokens`: [B, 1024, 1792] — and average-pools the 32×32 grid 4×4 into 64 tokens.

Choices (UNCONFIRMED points are options):
  * qkv bias layout, `qkv_bias`: "qv" (default) is the official q_bias + v_bias with no k bias (also
    what timm's EVA reads). UNCONFIRMED for BLIP3-o's own file: its copy of the tower
    (`eva_clip/eva_vit.py`) declares `qkv = Linear(D, 3D, bias=True)` with q_bias / v_bias commented
    out and loads `jiuhai/eva_clip_vision_tower` with strict=False, so that file may hold one fused
    `attn.qkv.bias` (k included): "qkv". "none": no q/k/v bias. The loader
    (`jaxmodels.hf.eva_clip_family.load_eva_clip`) picks the layout from the file.
  * 448 px positions: the official EVA02-CLIP-E/14-plus weights are trained at 224 px (a 16×16 table);
    the loader resizes a table of another grid as the official `resize_eva_pos_embed` does (bicubic,
    align_corners=False, class position kept). UNCONFIRMED whether BLIP3-o's file already holds the
    32×32 table (its strict-shape load suggests it does).

    tower = EvaClipVisionTransformer(presets.eva_clip_preset("eva-clip-e-14-plus"), rngs=nnx.Rngs(0))
    tower = jaxmodels.hf.eva_clip_family.load_eva_clip("/ckpts/eva_clip_E_14_plus.safetensors")
    tokens = tower.patch_tokens(pixels)                     # [B, 448, 448, 3] -> [B, 1024, 1792]
    out = tower(pixels, output_hidden_states=True)          # out.hidden_states: [L+1, B, 1025, D]
    target = avg_pool_tokens(tokens, 4)                     # [B, 64, 1792]
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.errors import ConfigError
from jaxmodels.layers import MLP, Attention, BlockStack, LayerNorm, param
from jaxmodels.vision.vit import PatchEmbed, VisionOutput

QKV_BIAS = ("qv", "qkv", "none")


@dataclasses.dataclass(frozen=True)
class EvaClipConfig:
  """EVA-CLIP tower hyper-parameters (field names as `VisionConfig`'s; the official vision_cfg name
  in brackets). Defaults: EVA-CLIP-E/14-plus at 448 px as BLIP3-o uses it."""
  model_type: str = "eva_clip_vision"
  hidden_size: int = 1792                     # [width]
  intermediate_size: int = 15360              # int(width · mlp_ratio)
  num_layers: int = 64                        # [layers]
  num_heads: int = 16                         # width / head_width
  image_size: int = 448
  patch_size: int = 14
  num_channels: int = 3
  layer_norm_eps: float = 1e-6
  hidden_act: str = "gelu"                    # torch nn.GELU(): exact erf
  postnorm: bool = True                       # norms on the residual branches' outputs (EVA-CLIP-E)
  qkv_bias: str = "qv"                        # "qv" | "qkv" | "none" (module docstring)
  scan_layers: bool = False
  remat: str = "none"
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.qkv_bias not in QKV_BIAS:
      raise ConfigError(f"EvaClipConfig.qkv_bias must be one of {', '.join(QKV_BIAS)}, got {self.qkv_bias!r}")
    if self.hidden_size % self.num_heads:
      raise ConfigError(f"EvaClipConfig.hidden_size={self.hidden_size} is not a multiple of "
                        f"num_heads={self.num_heads}")
    if self.image_size % self.patch_size:
      raise ConfigError(f"EvaClipConfig.image_size={self.image_size} is not a multiple of "
                        f"patch_size={self.patch_size}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def is_clip(self) -> bool:
    """A class token comes first and pixels take the OpenAI-CLIP normalisation (read by code written
    for `VisionConfig`, e.g. `jaxmodels.unified.encoders`)."""
    return True

  @property
  def grid_size(self) -> int:
    """Patches per side: image_size / patch_size."""
    return self.image_size // self.patch_size

  @property
  def num_positions(self) -> int:
    """Class token + g² patches."""
    return self.grid_size ** 2 + 1

  def replace(self, **kw: Any) -> "EvaClipConfig":
    return dataclasses.replace(self, **kw)


class EvaBlock(nnx.Module):
  """One EVA-CLIP block: [B, T, D] -> [B, T, D], post-norm or pre-norm (module docstring)."""

  def __init__(self, c: EvaClipConfig, *, rngs: nnx.Rngs | None):
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    d = c.hidden_size
    self.postnorm = c.postnorm
    self.norm1 = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.attn = Attention(d, c.num_heads, qkv_bias=c.qkv_bias != "none", out_bias=True,
                          impl=c.attention_impl, dtype=dtype, param_dtype=pdtype, rngs=rngs)
    if c.qkv_bias == "qv":
      self.attn.k.bias = None           # the official key projection has no bias (a fixed zero)
    self.norm2 = LayerNorm(d, eps=c.layer_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.mlp = MLP(d, c.intermediate_size, activation=c.hidden_act, use_bias=True, dtype=dtype,
                   param_dtype=pdtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, mask=None, rope=None, cache=None, cache_index=0):
    """BlockStack's block interface; `rope`, `cache` and `cache_index` are unused (no rotary
    positions, no decoding). Returns (y, cache)."""
    del rope, cache_index
    if self.postnorm:
      a, _ = self.attn(x, mask=mask)
      h = x + self.norm1(a)
      y = h + self.norm2(self.mlp(h))
    else:
      a, _ = self.attn(self.norm1(x), mask=mask)
      h = x + a
      y = h + self.mlp(self.norm2(h))
    return sharding.constrain(y, ("act_batch", "act_length", "act_embed")), cache


class EvaClipVisionTransformer(nnx.Module):
  """pixel_values [B, S, S, C] (S = image_size, OpenAI-CLIP normalised) -> the last block's output
  [B, 1 + g², D], class token first; no final norm."""

  def __init__(self, config: EvaClipConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    d = c.hidden_size
    self.patch_embed = PatchEmbed(c.patch_size, c.num_channels, d, use_bias=True, dtype=dtype,
                                  param_dtype=pdtype, rngs=rngs)
    # The official [1, 1, D] and [1, 1 + g², D] shapes, so tensors keep them both ways.
    self.class_embedding = param(rngs, nnx.initializers.normal(0.02), (1, 1, d), (None, None, "embed"),
                                 pdtype)
    self.position_embedding = param(rngs, nnx.initializers.normal(0.02), (1, c.num_positions, d),
                                    (None, None, "embed"), pdtype)
    self.layers = BlockStack(c.num_layers, lambda r: EvaBlock(c, rngs=r), scan=c.scan_layers,
                             remat=c.remat, rngs=rngs)

  def embed(self, pixel_values: jax.Array) -> jax.Array:
    """[B, S, S, C] -> token embeddings [B, 1 + g², D]: class token, patches, plus positions."""
    c = self.config
    if pixel_values.ndim != 4 or pixel_values.shape[1:3] != (c.image_size, c.image_size):
      raise ValueError(f"pixel_values {tuple(pixel_values.shape)}: this EVA-CLIP tower expects "
                       f"[B, {c.image_size}, {c.image_size}, {c.num_channels}] images")
    x = self.patch_embed(pixel_values)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + self.position_embedding[...].astype(x.dtype)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

  def __call__(self, pixel_values: jax.Array, *, output_hidden_states: bool = False):
    """Returns the last block's output [B, 1 + g², D], or a `VisionOutput` whose hidden_states
    [L+1, B, 1 + g², D] are the embeddings and every block's output (pooler_output None)."""
    x0 = self.embed(pixel_values)
    x, _, layer_outputs = self.layers(x0, return_hidden=output_hidden_states)
    if not output_hidden_states:
      return x
    return VisionOutput(x, jnp.concatenate([x0[None], layer_outputs], axis=0))

  def patch_tokens(self, pixel_values: jax.Array) -> jax.Array:
    """BLIP3-o's target features: the last block's output without the class token [B, g², D]."""
    return self(pixel_values)[:, 1:]
