"""Sparse palette-patch image tokens: the LLM draws an image as the list of its non-background patches.

BLIP3o-NEXT's generation path at toy scale: the LLM itself generates discrete image tokens with the
cross-entropy loss that the understanding path already learns fast with. For a palette image (ShapesWorld:
a flat background and objects in 10 flat colours) a lossless tokenizer needs no training:

  * the image is cut into p×p patches (32 px, p = 4: an 8×8 grid); every pixel is classified to the
    nearest palette colour (class 0 = background);
  * a patch is background, or a token (position, pattern, colour): its raster index in the grid, its
    foreground bit pattern (p² bits) looked up in a codebook of the patterns seen in training renders
    (`fit_codebook`; an unseen pattern maps to its nearest by Hamming distance), and the majority
    colour of its foreground pixels;
  * the image is the raster-ordered list of its foreground tokens, then <eoi>: `max_patches` + 1 slots,
    position `g²` marking <eoi> and the padding after it.

Why sparse rather than the dense g² grid of codes: the first token chooses where an object starts (the
dense grid spends most of its tokens on background and, sampled at a temperature below 1, often leaves
the canvas empty), and a 32 px ShapesWorld image has ~17 foreground patches against 64, so a training
step costs about half. The trade is measured in BENCHMARKS.md ("generation: image tokens").

Each token is one LLM position. Its input embedding is the sum of its pattern, colour, row and column
embeddings (<eoi>: row g); the hidden state at a position predicts the next token in two steps
(`PatchTokenHead`): its position (a softmax over the g² cells and <eoi>; sampling masks cells at or
before the previous one, the list being sorted), then its pattern and colour given that position (an
MLP on the state plus the position's query embedding and, with `neighbours`, embeddings of the patterns
already drawn above and to the left of it; teacher-forced in training).

Shapes: images [B, S, S, 3] in [-1, 1]; tokens: pos, pattern, colour [B, L] int32 with L = max_patches + 1;
LLM hidden states [B, T, D].

    tok = PatchTokenizer(PatchTokensConfig(palette=PALETTE))
    pos, pattern, colour = tok.encode(images)          # [B, 49] each
    images2 = tok.decode(pos, pattern, colour)         # == images up to unseen patterns
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.layers import Linear, param
from jaxmodels.unified.edit_canvas import ReferenceCanvas, canvas_of

CODEBOOK_DIR = os.path.join(os.path.dirname(__file__), "codebooks")
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1))   # (row, column) offsets, all earlier in raster order
EDIT_REFERENCES = ("encoder", "patch_tokens", "copy")
KEEP_POOLS = ("object", "token")
COPY_GATES = 4   # the copy path's per-state gates: occupied cells, the next source cell, its pattern, its colour


@dataclasses.dataclass(frozen=True)
class PatchTokensConfig:
  """image_size S, patch_size p (p² <= 16: a pattern is a 16-bit key), `palette` ((r, g, b), ...) with
  the background first, `codebook`: a file name in jaxmodels/unified/codebooks/ or a path (JSON from
  `save_codebook`), `max_patches`: foreground patches kept per image (raster order; the rest dropped),
  `head_hidden`: width of the pattern/colour MLP (0: 2 × the LLM width), `temperature`: default
  sampling temperature of the next position (below 1 trades variety for cleaner outlines; BENCHMARKS.md),
  `pattern_temperature`: of the pattern and colour (None: `temperature`), `neighbours`: the pattern/colour
  head also reads the patterns already drawn in the next cell's above-left, above, above-right and left
  neighbours (all earlier in raster order), so that adjacent patches of one outline agree.
  `edit_reference`: how an edit prompt's source image enters the LLM: "encoder" (the understanding
  encoder's pooled tokens at its placeholders) or "patch_tokens" (the source's own `num_slots` patch
  tokens, embedded as drawn tokens are plus a learned reference vector: BLIP3o-NEXT puts the reference's
  discrete tokens in the AR context, so an edit can copy the patches it leaves untouched) or "copy" (as
  "patch_tokens", plus a copy path in the head: the next position's logits get gated bonuses for the
  source's occupied cells and for its next occupied cell after the last one drawn, and the pattern and
  colour logits for the source's patch at the chosen cell, which the pattern/colour MLP also reads, so an
  edit keeps what it does not change without learning to copy by attention; UNCONFIRMED design, not in
  BLIP3o-NEXT). `copy_keep` (with "copy"): the LLM's states at the source's tokens in the prompt predict,
  per source patch, whether the edit keeps its pattern and whether it keeps its colour (two binary CEs
  against the target's pattern and colour at that cell: a recolour keeps every pattern and changes one
  object's colour), and the copy bonuses apply to kept patches only — position and pattern bonuses to
  kept patterns, the colour bonus to kept colours (teacher-forced with the true labels in training, the
  predicted ones when sampling), so the head copies what stays and draws what changes; it pays with the instruction before the source (data.edit_layout="instruction_first"),
  whose tokens a causal LLM otherwise reads without knowing the instruction. UNCONFIRMED design.
  `keep_pool`: "object" (the default) averages the keep logits over each source object (its 8-connected
  same-colour patches, jaxmodels/unified/edit_canvas.py), so an object is kept or changed whole and its
  decision can come from its last patches, whose causal states have seen the rest of its outline (an
  instruction usually names the object by its shape alone); "token": every patch decides alone."""
  image_size: int = 32
  patch_size: int = 4
  palette: tuple = ()
  codebook: str = "shapes_world_res32_p4.json"
  max_patches: int = 48
  head_hidden: int = 0
  temperature: float = 0.7
  pattern_temperature: float | None = None
  neighbours: bool = True
  edit_reference: str = "encoder"
  copy_keep: bool = False
  keep_pool: str = "object"

  def __post_init__(self):
    if self.edit_reference not in EDIT_REFERENCES:
      raise ConfigError(f"config.model.patch_tokens.edit_reference={self.edit_reference!r}: expected one "
                        f"of {EDIT_REFERENCES}")
    if self.image_size % self.patch_size:
      raise ConfigError(f"config.model.patch_tokens.patch_size={self.patch_size} must divide "
                        f"image_size={self.image_size}")
    if self.patch_size ** 2 > 16:
      raise ConfigError(f"config.model.patch_tokens.patch_size={self.patch_size}: at most 4 (16-bit patterns)")
    if len(self.palette) < 2:
      raise ConfigError("config.model.patch_tokens.palette: needs the background and at least one colour")
    if self.keep_pool not in KEEP_POOLS:
      raise ConfigError(f"config.model.patch_tokens.keep_pool={self.keep_pool!r}: expected one of {KEEP_POOLS}")
    if self.copy_keep and self.edit_reference != "copy":
      raise ConfigError("config.model.patch_tokens.copy_keep=True needs edit_reference='copy'")

  @property
  def reference_tokens(self) -> bool:
    """Whether an edit's source enters the prompt as its own patch tokens ("patch_tokens", "copy")."""
    return self.edit_reference != "encoder"

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_slots(self) -> int:
    return self.max_patches + 1

  @property
  def eoi(self) -> int:
    """The position id of <eoi> (and of the padding after it)."""
    return self.grid_size ** 2


# ------------------------------------------------------------------------------------ codebook (host)
def palette_classes(images_u8: np.ndarray, palette) -> np.ndarray:
  """uint8 images [N, H, W, 3] -> nearest palette index [N, H, W] (0 = background)."""
  pal = np.asarray(palette, np.int32)
  x = images_u8.astype(np.int32)[..., None, :]
  return ((x - pal) ** 2).sum(-1).argmin(-1)


def patch_keys(classes: np.ndarray, patch_size: int) -> np.ndarray:
  """Class maps [N, H, W] -> foreground bit patterns [N, g²] (bit i = pixel i of the patch, raster)."""
  n, h, w = classes.shape
  p = patch_size
  fg = (classes > 0).reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4).reshape(n, -1, p * p)
  return (fg.astype(np.int64) << np.arange(p * p)).sum(-1)


def fit_codebook(images_u8: np.ndarray, palette, patch_size: int) -> list[int]:
  """The foreground patterns of `images_u8` [N, H, W, 3], most frequent first, the empty pattern 0
  first of all (index 0 = background)."""
  counts = collections.Counter(patch_keys(palette_classes(images_u8, palette), patch_size).ravel().tolist())
  counts.pop(0, None)
  return [0] + [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def save_codebook(path: str, keys: list[int], *, patch_size: int, source: str) -> None:
  with open(path, "w") as f:
    json.dump({"patch_size": patch_size, "source": source, "patterns": [int(k) for k in keys]}, f)
    f.write("\n")


@functools.lru_cache(maxsize=8)
def load_codebook(name: str, patch_size: int) -> np.ndarray:
  """Pattern keys [K] of a shipped codebook (file name) or a JSON path."""
  path = name if os.path.sep in name else os.path.join(CODEBOOK_DIR, name)
  try:
    with open(path) as f:
      data = json.load(f)
    keys = np.asarray(data["patterns"], np.int64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"config.model.patch_tokens.codebook={name!r}: cannot read patterns from {path} "
                      f"({type(e).__name__}: {e})") from None
  if data.get("patch_size") != patch_size or keys.size < 2 or keys[0] != 0:
    raise ConfigError(f"config.model.patch_tokens.codebook={name!r}: {path} holds patch_size "
                      f"{data.get('patch_size')} patterns starting {keys[:1].tolist()}; expected "
                      f"patch_size {patch_size}, background pattern 0 first")
  return keys


@functools.lru_cache(maxsize=8)
def nearest_pattern_table(name: str, patch_size: int) -> np.ndarray:
  """[2^(p²)] int32: codebook index of the nearest pattern (Hamming; ties -> the more frequent) of
  every possible bit pattern, so `encode` is a lookup."""
  keys = load_codebook(name, patch_size)
  bits = patch_size * patch_size
  allp = np.arange(1 << bits, dtype=np.int64)
  popcount = np.zeros(allp.shape, np.int32)
  for b in range(bits):
    popcount += ((allp >> b) & 1).astype(np.int32)
  best = np.zeros(allp.shape, np.int32)
  best_d = np.full(allp.shape, bits + 1, np.int32)
  for i, k in enumerate(keys):        # one gather over the 2^(p²) patterns per codebook entry
    d = popcount[allp ^ k]
    better = d < best_d
    best = np.where(better, i, best)
    best_d = np.where(better, d, best_d)
  return best


# ------------------------------------------------------------------------------------ tokenizer (jit)
class PatchTokenizer:
  """Images <-> sparse (position, pattern, colour) tokens; jit-compatible, no parameters."""

  def __init__(self, config: PatchTokensConfig):
    self.config = c = config
    keys = load_codebook(c.codebook, c.patch_size)
    self.codebook_size = len(keys)
    self.num_colours = len(c.palette) - 1
    p2 = c.patch_size ** 2
    # numpy, not jax arrays: traced code embeds them as literals (a jax array captured by a jitted
    # function becomes an extra argument, which AOT-compiled steps reject).
    self._bits = ((keys[:, None] >> np.arange(p2)) & 1).astype(bool)                  # [K, p²]
    self._table = nearest_pattern_table(c.codebook, c.patch_size)                      # [2^p²]
    self._palette = np.asarray(c.palette, np.float32) / 127.5 - 1.0                     # [C+1, 3]

  def _patches(self, x: jax.Array) -> jax.Array:
    """[B, S, S, ...] -> [B, g², p², ...] (raster patches, raster pixels)."""
    c = self.config
    b, g, p = x.shape[0], c.grid_size, c.patch_size
    x = x.reshape((b, g, p, g, p) + x.shape[3:])
    return jnp.moveaxis(x, 2, 3).reshape((b, g * g, p * p) + x.shape[5:])

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """images [B, S, S, 3] in [-1, 1] -> (pos, pattern, colour) [B, L]: foreground patches in raster
    order, then <eoi> (pos g², pattern 0, colour 0) in every remaining slot."""
    c = self.config
    if images.shape[1:3] != (c.image_size, c.image_size):
      images = jax.image.resize(images, (images.shape[0], c.image_size, c.image_size, 3), "nearest")
    d = ((images[..., None, :].astype(jnp.float32) - jnp.asarray(self._palette)) ** 2).sum(-1)
    cls = self._patches(jnp.argmin(d, axis=-1))                           # [B, g², p²]
    fg = cls > 0
    key = (fg.astype(jnp.int32) << jnp.arange(c.patch_size ** 2)).sum(-1)
    pattern = jnp.asarray(self._table)[key]                               # [B, g²]
    votes = jax.nn.one_hot(cls - 1, self.num_colours, dtype=jnp.int32).sum(2)   # class 0 -> no vote
    colour = jnp.argmax(votes, axis=-1).astype(jnp.int32)
    g2 = c.grid_size ** 2
    cell = jnp.arange(g2)
    order = jnp.argsort(jnp.where(pattern > 0, cell, g2 + cell), axis=1)[:, :c.max_patches]
    keep = jnp.take_along_axis(pattern, order, 1) > 0
    pos = jnp.where(keep, order, c.eoi).astype(jnp.int32)
    pattern = jnp.where(keep, jnp.take_along_axis(pattern, order, 1), 0)
    colour = jnp.where(keep, jnp.take_along_axis(colour, order, 1), 0)
    pad = lambda a, v: jnp.pad(a, ((0, 0), (0, 1)), constant_values=v)  # noqa: E731  (the <eoi> slot)
    return pad(pos, c.eoi), pad(pattern, 0).astype(jnp.int32), pad(colour, 0).astype(jnp.int32)

  def decode(self, pos: jax.Array, pattern: jax.Array, colour: jax.Array) -> jax.Array:
    """Tokens [B, L] -> images [B, S, S, 3] in [-1, 1]. Slots from the first <eoi> on are ignored; a
    later token at an already drawn cell overwrites it."""
    c = self.config
    b, g, p = pos.shape[0], c.grid_size, c.patch_size
    live = jnp.cumsum(pos >= c.eoi, axis=1) == 0
    cell = jnp.where(live, pos, c.eoi)
    cls = jnp.where(jnp.asarray(self._bits)[pattern], colour[..., None] + 1, 0)   # [B, L, p²]
    canvas = jnp.zeros((b, g * g + 1, p * p), jnp.int32)
    canvas = canvas.at[jnp.arange(b)[:, None], cell].set(cls)[:, :g * g]
    canvas = jnp.moveaxis(canvas.reshape(b, g, g, p, p), 2, 3).reshape(b, g * p, g * p)
    return jnp.asarray(self._palette)[canvas]


# ------------------------------------------------------------------------------------ LLM head
class PatchTokenHead(nnx.Module):
  """Embeddings of patch tokens into the LLM and the two-step prediction of the next one (module
  docstring). `dim` is the LLM width."""

  def __init__(self, config: PatchTokensConfig, dim: int, codebook_size: int, num_colours: int, *,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = c = config
    g = c.grid_size
    hidden = c.head_hidden or 2 * dim
    init = nnx.initializers.normal(dim ** -0.5)
    emb = lambda n: param(rngs, init, (n, dim), (None, "embed"), param_dtype)  # noqa: E731
    self.boi = param(rngs, init, (dim,), ("embed",), param_dtype)            # <boi>: starts the image
    # Added to an edit source's tokens in the prompt, so they differ from the tokens being drawn.
    self.reference = (param(rngs, init, (dim,), ("embed",), param_dtype)
                      if c.reference_tokens else None)
    self.pattern_embed, self.colour_embed = emb(codebook_size), emb(num_colours)
    copy = c.edit_reference == "copy"
    self.ref_pattern_embed = emb(codebook_size) if copy else None         # the source's patch at the next cell
    self.ref_colour_embed = emb(num_colours + 1) if copy else None        # row 0: no source patch there
    self.row_embed, self.col_embed = emb(g + 1), emb(g)                     # <eoi> sits on row g
    self.next_row, self.next_col = emb(g + 1), emb(g)
    # One table per neighbour direction (NEIGHBOURS); row 0 = nothing drawn there.
    self.neighbour_embed = (param(rngs, init, (len(NEIGHBOURS), codebook_size, dim), (None, None, "embed"),
                                  param_dtype) if c.neighbours else None)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pos_out = Linear(dim, g * g + 1, axes=("embed", None), use_bias=True, **kw)
    self.hidden = Linear(dim, hidden, axes=("embed", "mlp"), use_bias=True, **kw)
    self.pattern_out = Linear(hidden, codebook_size, axes=("mlp", None), use_bias=True, **kw)
    self.colour_out = Linear(hidden, num_colours, axes=("mlp", None), use_bias=True, **kw)
    self.copy_gate = Linear(dim, COPY_GATES, axes=("embed", None), use_bias=True, **kw) if copy else None
    # copy_keep: whether the edit keeps a source token's pattern and its colour, from the LLM's state at
    # that token in the prompt.
    self.keep_out = Linear(dim, 2, axes=("embed", None), use_bias=True, **kw) if c.copy_keep else None
    self.dtype = dtype

  def embed(self, pos, pattern, colour) -> jax.Array:
    """Tokens [B, L] -> input embeddings [B, L, D]."""
    g = self.config.grid_size
    take = lambda t, i: jnp.take(t[...], i, axis=0)  # noqa: E731
    e = (take(self.pattern_embed, pattern) + take(self.colour_embed, colour)
         + take(self.row_embed, pos // g) + take(self.col_embed, pos % g))
    return e.astype(self.dtype)

  def reference_embed(self, pos, pattern, colour) -> jax.Array:
    """An edit source's tokens [B, L] -> prompt embeddings [B, L, D] (`edit_reference` "patch_tokens" or
    "copy")."""
    return (self.embed(pos, pattern, colour) + self.reference[...].astype(self.dtype)).astype(self.dtype)

  def boi_embed(self, b: int) -> jax.Array:
    return jnp.broadcast_to(self.boi[...].astype(self.dtype), (b, 1, self.boi.shape[0]))

  def keep_logits(self, prompt_hidden: jax.Array, ref: ReferenceCanvas) -> jax.Array:
    """The LLM's prompt states [B, T, D] -> keep logits [B, L, 2] (pattern, colour) of the source's tokens
    (copy_keep), averaged over each source object with keep_pool="object"."""
    h = jnp.take_along_axis(prompt_hidden, ref.slot_index[..., None], axis=1)
    logits = self.keep_out(h).astype(jnp.float32)
    return ref.object_mean(logits) if self.config.keep_pool == "object" else logits

  def predicted_keep(self, prompt_hidden: jax.Array, ref: ReferenceCanvas | None,
                     rng: jax.Array | None = None) -> ReferenceCanvas | None:
    """`ref` with the keep mask the head predicts (sampling): kept where the logit is > 0, or with `rng`
    drawn with probability sigmoid(logit), one draw per object (keep_pool="object") or per token (GRPO's
    keep actions); unchanged without copy_keep."""
    if ref is None or self.keep_out is None:
      return ref
    logits = self.keep_logits(prompt_hidden, ref)
    if rng is None:
      return ref.with_keep(logits > 0.0)
    group = ref.slot_object if self.config.keep_pool == "object" else ref.slot_cells
    u = jax.random.uniform(rng, ref.pattern.shape + (2,))
    u = jnp.take_along_axis(u, group[..., None], axis=1)
    return ref.with_keep(u < jax.nn.sigmoid(logits))

  def keep_logprobs(self, prompt_hidden: jax.Array, ref: ReferenceCanvas, keep: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
    """Log-probabilities [B, L] of keep decisions `keep` [B, L, 2] (pattern and colour summed) under the
    head, and their weights [B, L]: 1 / the object's size at the real source tokens of rows with a
    source (keep_pool="object": one decision per object, shared by its tokens), else 0."""
    z = self.keep_logits(prompt_hidden, ref)
    lp = (keep * jax.nn.log_sigmoid(z) + (1.0 - keep) * jax.nn.log_sigmoid(-z)).sum(-1)
    real = ((ref.slot_cells < self.config.eoi) & ref.has[:, None]).astype(jnp.float32)
    if self.config.keep_pool == "object":
      real = real / ref.object_sizes()
    return lp * (real > 0), real

  def keep_loss(self, prompt_hidden: jax.Array, ref: ReferenceCanvas, pos, pattern, colour
                ) -> tuple[jax.Array, jax.Array, ReferenceCanvas]:
    """Binary CE (pattern and colour summed) and accuracy (their mean) of the keep logits against the
    target tokens [B, L], over the real source tokens of rows with a source; and `ref` with the true keep
    masks (teacher forcing)."""
    eoi = self.config.eoi
    labels = ref.keep_labels(pos, pattern, colour, eoi)
    logits = self.keep_logits(prompt_hidden, ref)
    w = ((ref.slot_cells < eoi) & ref.has[:, None]).astype(jnp.float32)[..., None]
    denom = jnp.maximum(w.sum(), 1.0)
    bce = (optax.sigmoid_binary_cross_entropy(logits, labels) * w).sum() / denom
    acc = (((logits > 0) == (labels > 0.5)) * w).sum() / (2 * denom)
    return bce, acc, ref.with_keep(labels)

  def _gates(self, h: jax.Array, ref: ReferenceCanvas) -> jax.Array:
    """Copy gates [B, (L,) COPY_GATES] f32, zero on rows without a source."""
    gate = self.copy_gate(h).astype(jnp.float32)
    return jnp.where(ref.has.reshape((-1,) + (1,) * (gate.ndim - 1)), gate, 0.0)

  def pos_logits(self, h: jax.Array, last: jax.Array | None = None,
                 ref: ReferenceCanvas | None = None) -> jax.Array:
    """[B, (L,) D] -> logits over the next token's position [B, (L,) g² + 1] (f32). With a copy path and
    a source `ref`: plus gate₀ on the source's occupied cells and gate₁ on its next occupied cell after
    `last` [B, (L)], the last position drawn (−1 before the first)."""
    logits = self.pos_out(h).astype(jnp.float32)
    if ref is None or self.copy_gate is None:
      return logits
    gate = self._gates(h, ref)
    occupied = ref.keep.reshape((h.shape[0],) + (1,) * (h.ndim - 2) + (-1,))
    return logits + gate[..., :1] * occupied + gate[..., 1:2] * ref.next_cell(last)

  def pattern_colour_logits(self, h: jax.Array, next_pos: jax.Array, canvas: jax.Array | None = None,
                            ref: ReferenceCanvas | None = None) -> tuple[jax.Array, jax.Array]:
    """States [B, (L,) D], the next token's position [B, (L)] and the canvas [B, g² + 1] of patterns
    drawn so far (`canvas_of`; needed with `neighbours`) -> (pattern [B, (L,) K], colour [B, (L,) C]) f32.
    With a copy path and a source `ref`: the MLP also reads the source's patch at `next_pos`, and its
    pattern and colour get gated bonuses (gates 2 and 3)."""
    g = self.config.grid_size
    q = jnp.take(self.next_row[...], next_pos // g, axis=0) + jnp.take(self.next_col[...], next_pos % g, axis=0)
    copy = ref is not None and self.copy_gate is not None
    if copy:
      ref_pattern, ref_colour = ref.at(next_pos)
      has = ref.has.reshape((-1,) + (1,) * (next_pos.ndim - 1) + (1,))
      q = q + jnp.where(has, jnp.take(self.ref_pattern_embed[...], ref_pattern, axis=0)
                        + jnp.take(self.ref_colour_embed[...], ref_colour, axis=0), 0.0)
    if self.neighbour_embed is not None:
      row, col = next_pos // g, next_pos % g
      flat = canvas.reshape(canvas.shape[0], -1)
      for k, (dr, dc) in enumerate(NEIGHBOURS):
        r, cc = row + dr, col + dc
        inside = (r >= 0) & (cc >= 0) & (cc < g) & (row < g)
        cell = jnp.where(inside, r * g + cc, g * g).reshape(flat.shape[0], -1)
        drawn = jnp.take_along_axis(flat, cell, axis=1).reshape(next_pos.shape)
        q = q + jnp.take(self.neighbour_embed[k], drawn, axis=0)
    z = jax.nn.gelu(self.hidden(h + q.astype(h.dtype)))
    pl, cl = self.pattern_out(z).astype(jnp.float32), self.colour_out(z).astype(jnp.float32)
    if copy:
      gate = self._gates(h, ref)
      # Only a kept source pattern / colour at next_pos is copied (without copy_keep: every occupied cell).
      flat = next_pos.reshape(next_pos.shape[0], -1)
      kept = lambda m: jnp.take_along_axis(m, flat, axis=1).reshape(next_pos.shape)[..., None]  # noqa: E731
      pl = pl + kept(ref.keep) * gate[..., 2:3] * jax.nn.one_hot(ref_pattern, pl.shape[-1], dtype=jnp.float32)
      cl = cl + kept(ref.keep_colour) * gate[..., 3:4] * jax.nn.one_hot(ref_colour - 1, cl.shape[-1],
                                                                        dtype=jnp.float32)
    return pl, cl

  def loss(self, hidden: jax.Array, pos, pattern, colour,
           ref: ReferenceCanvas | None = None) -> tuple[jax.Array, dict]:
    """hidden [B, L, D]: the LLM's states at <boi> and at tokens 0..L-2; targets tokens [B, L]; `ref`: an
    edit's source for the copy path. The CE of every target up to and including the first <eoi>; pattern
    and colour only at real patches."""
    eoi = self.config.eoi
    w = jnp.concatenate([jnp.ones_like(pos[:, :1]), (pos[:, :-1] < eoi).astype(pos.dtype)], 1)
    w = w.astype(jnp.float32)
    wp = w * (pos < eoi)
    mean = lambda nll, wt: (nll * wt).sum() / jnp.maximum(wt.sum(), 1.0)  # noqa: E731
    last = jnp.concatenate([jnp.full_like(pos[:, :1], -1), pos[:, :-1]], 1)
    lp = mean(optax.softmax_cross_entropy_with_integer_labels(self.pos_logits(hidden, last, ref), pos), w)
    pl, cl = self.pattern_colour_logits(hidden, pos, canvas_of(pos, pattern, eoi), ref)
    lq = mean(optax.softmax_cross_entropy_with_integer_labels(pl, pattern), wp)
    lc = mean(optax.softmax_cross_entropy_with_integer_labels(cl, colour), wp)
    return lp + lq + lc, {"gen_pos_ce": lp, "gen_pattern_ce": lq, "gen_colour_ce": lc}


# ------------------------------------------------------------------------------------ with the LLM
def positions_of(mask: jax.Array) -> jax.Array:
  """Left-padded mask [B, T] -> RoPE positions [B, T], counted from each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)


def training_loss(llm, head: PatchTokenHead, tokenizer: PatchTokenizer, prompt_embeds: jax.Array,
                  mask: jax.Array, images: jax.Array,
                  ref: ReferenceCanvas | None = None) -> tuple[jax.Array, dict]:
  """Teacher-forced loss of drawing `images` [B, S, S, 3] after the (left-padded) prompt
  `prompt_embeds` [B, T, D] / `mask` [B, T]: one LLM pass over [prompt, <boi>, tokens 0..L-2]; `ref`:
  the edit sources of the copy path (None: text to image)."""
  b, t = mask.shape
  pos, pattern, colour = tokenizer.encode(images)
  x = jnp.concatenate([prompt_embeds, head.boi_embed(b).astype(prompt_embeds.dtype),
                       head.embed(pos[:, :-1], pattern[:, :-1], colour[:, :-1]).astype(prompt_embeds.dtype)], 1)
  full = jnp.concatenate([mask.astype(jnp.int32), jnp.ones((b, 1), jnp.int32),
                          (pos[:, :-1] < head.config.eoi).astype(jnp.int32)], 1)
  states = llm.forward(None, positions_of(full), full, inputs_embeds=x).hidden
  keep_bce = None
  if ref is not None and head.keep_out is not None:
    keep_bce, keep_acc, ref = head.keep_loss(states[:, :t], ref, pos, pattern, colour)
  loss, metrics = head.loss(states[:, t:], pos, pattern, colour, ref)
  if keep_bce is not None:
    loss, metrics = loss + keep_bce, {**metrics, "gen_keep_bce": keep_bce, "gen_keep_acc": keep_acc}
  metrics["gen_patches"] = jnp.mean(jnp.sum(pos < head.config.eoi, axis=1).astype(jnp.float32))
  return loss, metrics


def _draw(rng, logits, temperature: float) -> jax.Array:
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)


def sample(llm, head: PatchTokenHead, prompt_embeds: jax.Array, mask: jax.Array, rng: jax.Array, *,
           guidance: float = 1.0, temperature: float = 0.7, pattern_temperature: float | None = None,
           ref: ReferenceCanvas | None = None, keep_rng: jax.Array | None = None) -> tuple[jax.Array, ...]:
  """Tokens (pos, pattern, colour) [B, L] drawn after the prompt, one LLM step per token with a KV
  cache. `guidance` != 1: classifier-free guidance on all three logits against the empty prompt (every
  prompt token masked, as `cond_dropout` trains it); `temperature` (position) and `pattern_temperature`
  (pattern and colour; None: the same) 0 are greedy. Cells at or before the
  previous token's are masked (the list is sorted); a drawn patch is never the empty pattern. `ref`: the
  edit sources [B] of the copy path (the unconditional CFG branch has none), whose keep mask the head
  predicts from the prompt pass: kept where its logit is > 0, or drawn with `keep_rng` (GRPO's keep
  actions, `PatchTokenHead.predicted_keep`), which also returns the drawn keeps [B, L, 2] as a fourth
  output."""
  c = head.config
  b, t = mask.shape
  num, eoi = c.num_slots, c.eoi
  cfg = guidance != 1.0
  mask = mask.astype(jnp.int32)
  if cfg:
    prompt_embeds = jnp.concatenate([prompt_embeds, prompt_embeds])
    mask = jnp.concatenate([mask, jnp.zeros_like(mask)])
    ref = None if ref is None else ref.twice()
  bb = prompt_embeds.shape[0]
  first = jnp.concatenate([mask, jnp.ones((bb, 1), jnp.int32)], 1)
  kv_mask = jnp.concatenate([first, jnp.zeros((bb, num), jnp.int32)], 1)
  out = llm.forward(None, positions_of(first), kv_mask, cache=llm.init_cache(bb, t + 1 + num), cache_index=0,
                    inputs_embeds=jnp.concatenate([prompt_embeds, head.boi_embed(bb).astype(prompt_embeds.dtype)], 1))
  start = jnp.sum(first, axis=1)
  ref = head.predicted_keep(out.hidden[:, :t], ref, keep_rng)

  def guide(logits):
    if not cfg:
      return logits
    cond, uncond = jnp.split(logits, 2)
    return uncond + guidance * (cond - uncond)

  def twice(x):
    return jnp.concatenate([x, x]) if cfg else x

  cells = jnp.arange(eoi + 1)

  pattern_temperature = temperature if pattern_temperature is None else pattern_temperature

  def step(carry, i):
    h, cache, kv_mask, last, done, canvas, rng = carry
    rng, k_pos, k_pat, k_col = jax.random.split(rng, 4)
    lp = guide(head.pos_logits(h, twice(last), ref))
    lp = jnp.where((cells[None] > last[:, None]) | (cells[None] == eoi), lp, -jnp.inf)
    pos = jnp.where(done, eoi, _draw(k_pos, lp, temperature))
    pl, cl = head.pattern_colour_logits(h, twice(pos), twice(canvas), ref)
    pl, cl = guide(pl), guide(cl)
    pattern = jnp.where(pos < eoi, _draw(k_pat, pl.at[:, 0].set(-jnp.inf), pattern_temperature), 0)
    colour = jnp.where(pos < eoi, _draw(k_col, cl, pattern_temperature), 0)
    canvas = canvas.at[jnp.arange(b), pos].set(pattern).at[:, eoi].set(0)
    slot = t + 1 + i
    kv_mask = kv_mask.at[:, slot].set(1)
    e = head.embed(twice(pos), twice(pattern), twice(colour))[:, None].astype(prompt_embeds.dtype)
    o = llm.forward(None, (start + i)[:, None], kv_mask, inputs_embeds=e, cache=cache, cache_index=slot)
    last = jnp.where(pos < eoi, pos, last)
    return (o.hidden[:, 0], o.cache, kv_mask, last, done | (pos >= eoi), canvas, rng), (pos, pattern, colour)

  init = (out.hidden[:, -1], out.cache, kv_mask, jnp.full((b,), -1, jnp.int32), jnp.zeros((b,), bool),
          jnp.zeros((b, eoi + 1), jnp.int32), rng)
  _, (pos, pattern, colour) = jax.lax.scan(step, init, jnp.arange(num))
  if keep_rng is not None:
    return pos.T, pattern.T, colour.T, ref.slot_keep()[:b]
  return pos.T, pattern.T, colour.T
