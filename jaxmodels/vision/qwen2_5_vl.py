"""The Qwen2.5-VL vision tower: a window-attention ViT with 2-D rotary positions and a patch merger.

Structure (HF `Qwen2_5_VisionTransformerPretrainedModel`; names are HF's):

  patch_embed  a Conv3d with kernel = stride = (temporal_patch_size, p, p) and no bias, i.e. a linear
               map of each flattened patch [C·T·p·p] (channel, frame, row, col order) -> [D]
  blocks       `depth` pre-norm blocks: RMSNorm, bidirectional attention (fused qkv with bias, output
               bias, 2-D RoPE), RMSNorm, SwiGLU MLP with biases. Blocks in `fullatt_block_indexes`
               attend over a whole frame; every other block attends inside windows of
               window_size × window_size pixels (8×8 patches for 112 / 14).
  merger       RMSNorm, then each 2×2 group of neighbouring patch tokens (spatial_merge_size 2) is
               concatenated [4·D] -> Linear -> GELU -> Linear -> [out_hidden_size] (the LLM width).

Token order. Like HF's image processor, the packed patch sequence of an image lists its patches
merge-block by merge-block: (h/m, w/m, m, m) for a grid of h×w patches and m = spatial_merge_size, so
every 4 consecutive tokens are one merged output token, and the merged tokens come out in row-major
order of the (h/m)×(w/m) grid. Positions: patch (row, col) rotates the first half of each rotary pair
set by `row` and the second by `col` (HF's axial vision RoPE, frequencies over head_dim / 4).

Windows and segments (computed with numpy: `grid_thw` must be concrete, i.e. static per call).
Before the blocks, the merge units (groups of m² tokens) are reordered window by window (HF's
`window_index`: per image, per frame, windows in row-major order, units inside a window row-major;
edge windows are smaller). In that order every window and every frame is a contiguous segment. For a
layer, the tokens of its segments (windows, or frames for full-attention layers) are gathered into a
padded batch [S, L_max, D] and run through the shared `TransformerBlock`, with a key mask only where
segments have unequal lengths; consecutive layers of the same kind stay in that layout. This is what
HF's per-chunk loop / `cu_seqlens` varlen attention computes, without an N×N mask. Outputs are put
back into the processor's order (HF leaves `last_hidden_state` in window order; we do not).

Scan (`scan_layers=True`): when the kinds of the blocks repeat with a period p (full attention at
7, 15, 23, 31 of 32: p = 8), the parameters are stacked [depth, ...] (a `BlockStack`) and the blocks
run as one lax.scan over depth / p groups, each group's p blocks unrolled with its layout switches
(p − 1 window blocks, one full block). Same outputs as the loop; one compiled group instead of 32
blocks. A non-periodic `fullatt_block_indexes` with scan_layers=True is a ConfigError.

    tower = jaxmodels.hf.from_pretrained("/ckpts/Qwen2.5-VL-7B-Instruct", module=Qwen25VisionTransformer)
    tokens = tower(pixels)                         # [B, 448, 448, 3] -> [B, 256, 3584]
    out = tower.encode_patches(pixel_values, grid_thw)   # Qwen2VLImageProcessor outputs as they are
    out.image_tokens                               # [Σ t·h·w / 4, 3584] (HF's `pooler_output`)

Pixels are expected normalised as the HF processor does (OpenAI-CLIP mean/std, `OPENAI_CLIP_MEAN/STD`);
`__call__` repeats each image over the temporal_patch_size frames, as the processor does for still images.
`image_size` is not an HF field: it is the square input side a composition feeds (e.g. the
understanding encoder of `jaxmodels.unified`, which reads `grid_size` / `num_tokens` / `is_clip` like a
`VisionConfig`'s); the tower itself takes any side that is a multiple of `image_multiple`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.layers import MLP, RMSNorm, TransformerBlock, make_attention_mask, param
from jaxmodels.layers.block import REMAT_POLICIES, BlockStack
from jaxmodels.layers.linear import fan_in_normal

# Qwen2VLImageProcessor's normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class Qwen25VisionConfig:
  """Qwen2.5-VL vision hyper-parameters (HF `Qwen2_5_VLVisionConfig` names). Defaults: Qwen2.5-VL-7B."""
  model_type: str = "qwen2_5_vl_vision"
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  in_channels: int = 3
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112                     # pixels per window side
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  out_hidden_size: int = 3584                # merger output = the LLM's hidden size
  hidden_act: str = "silu"
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6                 # fixed in HF's blocks and merger
  tokens_per_second: int = 2                 # video M-RoPE only (the LLM side); kept for export
  # Ours, not HF's: the square input side when used as a fixed-size encoder (448 -> 16×16 = 256 tokens).
  image_size: int = 448
  remat: str = "none"
  attention_impl: str = "einsum"
  # The blocks alternate window and frame layouts, so they are not one scan over layers; when the
  # full-attention blocks are every p-th block (7, 15, 23, 31: p = 8) they are a lax.scan over
  # depth / p groups of p blocks (p − 1 window blocks, then one full block). See `layer_period`.
  scan_layers: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "fullatt_block_indexes", tuple(int(i) for i in self.fullatt_block_indexes))
    if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 4:
      raise ConfigError(f"Qwen25VisionConfig: hidden_size {self.hidden_size} / num_heads {self.num_heads} "
                        f"must be a head size divisible by 4 (2-D rotary embedding)")
    if self.window_merge < 1:
      raise ConfigError(f"Qwen25VisionConfig: window_size {self.window_size} is smaller than one merged "
                        f"patch ({self.patch_size * self.spatial_merge_size} px)")
    bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
    if bad:
      raise ConfigError(f"Qwen25VisionConfig.fullatt_block_indexes {bad} are outside 0..{self.depth - 1}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"Qwen25VisionConfig.remat {self.remat!r}: expected one of {sorted(REMAT_POLICIES)}")
    if self.scan_layers and self.depth > 1 and self.layer_period == self.depth:
      raise ConfigError(
          f"Qwen25VisionConfig.scan_layers: fullatt_block_indexes {list(self.fullatt_block_indexes)} "
          f"do not repeat with a period dividing depth {self.depth} at least twice (e.g. every 8th "
          "block of 32: 7, 15, 23, 31), so the blocks cannot be scanned as groups; use "
          "scan_layers=False (a loop) with remat")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def block_kinds(self) -> tuple[str, ...]:
    """"full" or "window" for each of the `depth` blocks."""
    return tuple("full" if i in self.fullatt_block_indexes else "window" for i in range(self.depth))

  @property
  def layer_period(self) -> int:
    """Smallest p dividing depth with block_kinds[i] == block_kinds[i % p]: the group a scan repeats."""
    kinds = self.block_kinds
    return next(p for p in range(1, self.depth + 1)
                if self.depth % p == 0 and all(k == kinds[i % p] for i, k in enumerate(kinds)))

  @property
  def merge_unit(self) -> int:
    """Patch tokens per merged token: spatial_merge_size²."""
    return self.spatial_merge_size ** 2

  @property
  def window_merge(self) -> int:
    """Window side in merged tokens: window_size // spatial_merge_size // patch_size (HF's rounding)."""
    return self.window_size // self.spatial_merge_size // self.patch_size

  @property
  def patch_dim(self) -> int:
    """Length of one flattened patch: C · temporal_patch_size · p · p."""
    return self.in_channels * self.temporal_patch_size * self.patch_size ** 2

  @property
  def image_multiple(self) -> int:
    """Image sides must be multiples of this: patch_size · spatial_merge_size (28)."""
    return self.patch_size * self.spatial_merge_size

  @property
  def grid_size(self) -> int:
    """Merged tokens per side of an image_size × image_size input: image_size / (patch · merge)."""
    return self.image_size // self.image_multiple

  @property
  def num_tokens(self) -> int:
    """Output tokens of an image_size × image_size input: grid_size²."""
    return self.grid_size ** 2

  @property
  def is_clip(self) -> bool:
    """No class token (read by code written for `VisionConfig`)."""
    return False

  def replace(self, **kw: Any) -> "Qwen25VisionConfig":
    return dataclasses.replace(self, **kw)


@flax.struct.dataclass   # a pytree: can be returned from jit
class Qwen25VisionOutput:
  image_tokens: jax.Array                     # [N / m², D_out]  (or [B, T', D_out] from __call__)
  last_hidden_state: jax.Array                # [N, D] before the merger, processor order
  hidden_states: jax.Array | None = None      # [L+1, N, D]: patch embeddings, then every block


# ---------------------------------------------------------------------------------------------------
# Static layout (numpy on grid_thw)


def check_grid(grid_thw, merge: int) -> np.ndarray:
  """grid_thw [num_images, 3] (t, h, w in patches) as a concrete int64 array; h, w multiples of merge."""
  if isinstance(grid_thw, jax.core.Tracer):
    raise ValueError("grid_thw must be concrete (numpy / Python ints): the window layout is computed on "
                     "the host; close over it or mark it static when jitting")
  grid = np.asarray(grid_thw, np.int64)
  if grid.ndim != 2 or grid.shape[1] != 3 or grid.shape[0] == 0:
    raise ValueError(f"grid_thw {grid.shape}: expected [num_images, 3] rows of (t, h, w)")
  if (grid <= 0).any() or (grid[:, 1:] % merge).any():
    raise ValueError(f"grid_thw {grid.tolist()}: t, h, w must be positive and h, w multiples of the "
                     f"spatial merge size {merge}")
  return grid


def position_ids(grid: np.ndarray, merge: int) -> np.ndarray:
  """(row, col) of every patch token in processor order -> [N, 2] int32."""
  def block_major(a, h, w):                   # (h, w) -> merge-block order (h/m, w/m, m, m), flattened
    return a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)

  out = []
  for t, h, w in grid:
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out.append(np.tile(np.stack([block_major(rows, h, w), block_major(cols, h, w)], -1), (t, 1)))
  return np.concatenate(out).astype(np.int32)


def window_order(grid: np.ndarray, merge: int, window: int) -> tuple[np.ndarray, np.ndarray]:
  """Window layout of the merge units: (unit_order [N / m²], window lengths in tokens [W]).

  unit_order[j] is the processor-order index of the j-th merge unit in window order; windows hold up
  to window² units (fewer at the right / bottom edges) and never span frames or images.
  """
  order, lengths, offset = [], [], 0
  for t, h, w in grid:
    gh, gw = h // merge, w // merge
    nh, nw = -(-gh // window), -(-gw // window)
    ids = np.full((t, nh * window, nw * window), -1, np.int64)
    ids[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw) + offset
    ids = ids.reshape(t, nh, window, nw, window).transpose(0, 1, 3, 2, 4).reshape(-1, window * window)
    keep = ids >= 0
    order.append(ids[keep])                   # row-major: window by window, units row-major inside
    lengths.append(keep.sum(-1) * merge * merge)
    offset += t * gh * gw
  return np.concatenate(order), np.concatenate(lengths)


@dataclasses.dataclass(frozen=True)
class SegmentLayout:
  """Contiguous segments of a length-N sequence as a padded batch [S, L] (L = longest segment).

  gather [S, L]: sequence index of each slot (N for padding: a zero row appended to the sequence);
  scatter [N]: flat slot (s·L + j) of each token; valid [S, L] or None when no slot is padding.
  """
  gather: np.ndarray
  scatter: np.ndarray
  valid: np.ndarray | None

  @classmethod
  def from_lengths(cls, lengths: np.ndarray) -> "SegmentLayout":
    lengths = np.asarray(lengths, np.int64)
    n, longest = int(lengths.sum()), int(lengths.max())
    starts = np.cumsum(lengths) - lengths
    slot = np.arange(longest)[None]
    valid = slot < lengths[:, None]
    gather = np.where(valid, starts[:, None] + slot, n)
    seg = np.repeat(np.arange(len(lengths)), lengths)
    scatter = seg * longest + (np.arange(n) - starts[seg])
    return cls(gather, scatter, None if valid.all() else valid)

  def to_segments(self, x: jax.Array) -> jax.Array:
    """[N, ...] -> [S, L, ...] (padding slots are zeros)."""
    pad = jnp.concatenate([x, jnp.zeros((1,) + x.shape[1:], x.dtype)])
    return pad[self.gather]

  def to_sequence(self, x: jax.Array) -> jax.Array:
    """[S, L, ...] -> [N, ...]."""
    return x.reshape((-1,) + x.shape[2:])[self.scatter]

  def mask(self) -> jax.Array | None:
    """Key mask [S, 1, L, L] (True = attend) or None."""
    if self.valid is None:
      return None
    slots = jnp.arange(self.valid.shape[1])
    return make_attention_mask(slots, slots, jnp.asarray(self.valid), causal=False)


def vision_rope(positions: np.ndarray, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """2-D rotary tables: positions [N, 2] (row, col) -> (cos, sin) [N, head_dim] float32.

  Frequencies θ^(−2i / (head_dim/2)) for i < head_dim/4; angles = [row·f, col·f], repeated twice
  (HF's "rotate half" layout: channel c pairs with c + head_dim/2).
  """
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (np.arange(0, half, 2, dtype=np.float32) / half))
  pos = jnp.asarray(positions, jnp.float32)
  angles = (pos[:, :, None] * jnp.asarray(inv_freq)).reshape(pos.shape[0], -1)     # [N, half]
  emb = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def images_to_patches(pixel_values: jax.Array, c: Qwen25VisionConfig) -> tuple[jax.Array, np.ndarray]:
  """Still images [B, H, W, C] -> (patches [B·(H/p)·(W/p), C·T·p·p], grid_thw [B, 3]).

  What `Qwen2VLImageProcessor` does after resizing/normalising: each image is repeated over the T =
  temporal_patch_size frames, and patches are listed merge-block by merge-block, each flattened in
  (channel, frame, row, col) order. H and W must be multiples of patch_size · spatial_merge_size.
  """
  b, h, w, ch = pixel_values.shape
  p, m, t = c.patch_size, c.spatial_merge_size, c.temporal_patch_size
  if h % c.image_multiple or w % c.image_multiple or ch != c.in_channels:
    raise ValueError(f"pixel_values {tuple(pixel_values.shape)}: need H and W multiples of "
                     f"{c.image_multiple} (patch {p} × merge {m}) and {c.in_channels} channels")
  gh, gw = h // p, w // p
  x = pixel_values.reshape(b, gh // m, m, p, gw // m, m, p, ch)
  x = jnp.broadcast_to(x[..., None], x.shape + (t,))          # the frame repeated T times
  x = x.transpose(0, 1, 4, 2, 5, 7, 8, 3, 6)                 # b, bh, bw, mh, mw, C, T, ph, pw
  return x.reshape(b * gh * gw, c.patch_dim), np.tile(np.array([[1, gh, gw]]), (b, 1))


# ---------------------------------------------------------------------------------------------------
# Modules


class PatchEmbed3d(nnx.Module):
  """Flattened patches [N, C·T·p·p] -> [N, D] (a Conv3d with stride = kernel, no bias).

  The kernel keeps HF's Conv3d layout [D, C, T, p, p] (output first, unlike `Linear`), so checkpoints
  load by a plain copy: the shared keymap has no 5-D transpose.
  """

  def __init__(self, c: Qwen25VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    self.dtype = dtype
    shape = (c.hidden_size, c.in_channels, c.temporal_patch_size, c.patch_size, c.patch_size)
    self.kernel = param(rngs, fan_in_normal(c.patch_dim), shape, ("embed", "conv_in", None, "patch", "patch"),
                        param_dtype)

  def __call__(self, patches: jax.Array) -> jax.Array:
    k = self.kernel[...].astype(self.dtype)
    return jnp.einsum("nk,dk->nd", patches.astype(self.dtype), k.reshape(k.shape[0], -1))


class PatchMerger(nnx.Module):
  """RMSNorm, then m² consecutive tokens concatenated -> MLP: [N, D] -> [N / m², D_out]."""

  def __init__(self, c: Qwen25VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs | None):
    self.unit = c.merge_unit
    wide = c.hidden_size * c.merge_unit
    self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.mlp = MLP(wide, wide, out_dim=c.out_hidden_size, activation="gelu", use_bias=True, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.norm(x)
    return self.mlp(x.reshape(x.shape[0] // self.unit, -1))


class Qwen25VisionTransformer(nnx.Module):
  """Qwen2.5-VL vision tower (see module docstring): patches + grid_thw, or images -> LLM-width tokens."""

  def __init__(self, config: Qwen25VisionConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.patch_embed = PatchEmbed3d(c, dtype=dtype, param_dtype=pdtype, rngs=rngs)

    def make_block(r):
      return TransformerBlock(c.hidden_size, c.num_heads, c.intermediate_size, norm="rms",
                              norm_eps=c.rms_norm_eps, mlp="gated", activation=c.hidden_act, qkv_bias=True,
                              out_bias=True, mlp_bias=True, attention_impl=c.attention_impl, dtype=dtype,
                              param_dtype=pdtype, rngs=r)

    if c.scan_layers:
      # Stacked [depth, ...] parameters (the HF keymap stacks a BlockStack's layers generically); the
      # stack is run by `_run_grouped`, not by BlockStack.__call__ (layouts switch inside a group).
      self.blocks = BlockStack(c.depth, make_block, scan=True, rngs=rngs)
    else:
      self.blocks = nnx.List([make_block(rngs) for _ in range(c.depth)])
    self.merger = PatchMerger(c, dtype=dtype, param_dtype=pdtype, rngs=rngs)

  def encode_patches(self, patches: jax.Array, grid_thw, *, output_hidden_states: bool = False):
    """HF's forward: patches [N, C·T·p·p] (processor order, all images packed) and grid_thw
    [num_images, 3] (concrete) -> merged tokens [N / m², D_out] (HF's `pooler_output`), or a
    `Qwen25VisionOutput` with last_hidden_state [N, D] and, if asked, hidden_states [L+1, N, D]."""
    c = self.config
    m = c.spatial_merge_size
    grid = check_grid(grid_thw, m)
    n = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).sum())
    if patches.ndim != 2 or patches.shape != (n, c.patch_dim):
      raise ValueError(f"patches {tuple(patches.shape)}: grid_thw {grid.tolist()} needs [{n}, {c.patch_dim}]")
    units, window_lengths = window_order(grid, m, c.window_merge)
    perm = (units[:, None] * c.merge_unit + np.arange(c.merge_unit)).reshape(-1)   # token -> window order
    unperm = np.argsort(perm)
    layouts = {
        "window": SegmentLayout.from_lengths(window_lengths),
        "full": SegmentLayout.from_lengths(np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])),
    }
    cos, sin = vision_rope(position_ids(grid, m)[perm], c.head_dim, c.rope_theta)

    x0 = self.patch_embed(patches)
    run = self._run_grouped if c.scan_layers else self._run_loop
    x, hidden = run(x0[perm], layouts, (cos, sin), output_hidden_states)    # window order
    x = x[unperm]
    tokens = self.merger(x)
    if not output_hidden_states:
      return tokens
    return Qwen25VisionOutput(tokens, x, jnp.concatenate([x0[None], hidden[:, unperm]]))

  def _run_blocks(self, blocks, kinds, x, layouts, rope, output_hidden_states):
    """Runs `blocks` (modules) of `kinds` on x [N, D] (window order) -> (x [N, D], hidden [n, N, D] | None).

    Consecutive blocks of one kind share the segment layout; the sequence is re-gathered on a switch."""
    remat = self.config.remat

    def call(block, x, mask, rope):
      if remat == "none":
        return block(x, mask=mask, rope=rope)[0]
      # jax.checkpoint over split/merge (not nnx.remat): also right for blocks merged inside a scan.
      graphdef, state = nnx.split(block)

      def run(state, x, mask, rope):
        return nnx.merge(graphdef, state)(x, mask=mask, rope=rope)[0]
      return jax.checkpoint(run, policy=REMAT_POLICIES[remat], prevent_cse=False)(state, x, mask, rope)

    kind, hidden = None, []
    for block, want in zip(blocks, kinds):
      if want != kind:                         # switch layouts: back to the sequence, then re-gather
        if kind is not None:
          x = layouts[kind].to_sequence(x)
        kind, layout = want, layouts[want]
        x, mask = layout.to_segments(x), layout.mask()
        seg_rope = (layout.to_segments(rope[0]), layout.to_segments(rope[1]))
      x = call(block, x, mask, seg_rope)
      if output_hidden_states:
        hidden.append(layouts[kind].to_sequence(x))
    x = layouts[kind].to_sequence(x) if kind is not None else x
    return x, (jnp.stack(hidden) if output_hidden_states else None)

  def _run_loop(self, x, layouts, rope, output_hidden_states):
    """The `depth` blocks as a Python loop: x [N, D] -> (x [N, D], hidden [depth, N, D] | None)."""
    return self._run_blocks(list(self.blocks), self.config.block_kinds, x, layouts, rope,
                            output_hidden_states)

  def _run_grouped(self, x, layouts, rope, output_hidden_states):
    """The stacked blocks as a lax.scan over depth / p groups of p = `layer_period` blocks (the
    group's blocks unrolled, layouts switching inside it): same results as `_run_loop`.

    A plain lax.scan over the split state (as BlockStack's), so it nests in any outer transform."""
    c = self.config
    p = c.layer_period
    graphdef, state = nnx.split(self.blocks.blocks)
    groups = jax.tree.map(lambda a: a.reshape((c.depth // p, p) + a.shape[1:]), state)   # [G, p, ...]

    def body(x, group_state):
      blocks = [nnx.merge(graphdef, jax.tree.map(lambda a, j=j: a[j], group_state), copy=True)
                for j in range(p)]
      x, hidden = self._run_blocks(blocks, c.block_kinds[:p], x, layouts, rope, output_hidden_states)
      return x, hidden

    x, hidden = jax.lax.scan(body, x, groups)
    if output_hidden_states:
      hidden = hidden.reshape((c.depth,) + hidden.shape[2:])            # [G, p, N, D] -> [L, N, D]
    return x, hidden

  def __call__(self, pixel_values: jax.Array, *, output_hidden_states: bool = False):
    """Images [B, H, W, C] (H, W multiples of `image_multiple`) -> tokens [B, (H/28)·(W/28), D_out]
    in row-major order of the merged grid; or a `Qwen25VisionOutput` whose fields have a leading B
    (last_hidden_state [B, N, D], hidden_states [L+1, B, N, D], N in processor order)."""
    b = pixel_values.shape[0]
    patches, grid = images_to_patches(pixel_values, self.config)
    out = self.encode_patches(patches, grid, output_hidden_states=output_hidden_states)
    if not output_hidden_states:
      return out.reshape(b, -1, out.shape[-1])
    hidden = out.hidden_states
    return Qwen25VisionOutput(out.image_tokens.reshape(b, -1, out.image_tokens.shape[-1]),
                              out.last_hidden_state.reshape(b, -1, out.last_hidden_state.shape[-1]),
                              hidden.reshape(hidden.shape[0], b, -1, hidden.shape[-1]))
