"""An edit source as the patch-token copy path reads it: its tokens drawn onto the g×g grid of cells.

The copy path (jaxmodels/unified/patch_tokens.py, `edit_reference="copy"`) looks up the source's patch at
the cell it is about to draw, and, with `copy_keep`, whether the edit keeps that patch's pattern and
colour. Cells are the raster indices 0..g²-1 of the patch grid, and g² is <eoi>'s (and padding's) cell,
so every canvas here is [B, g² + 1]. Objects are the source's 8-connected groups of same-colour patches
(`object_cells`): a ShapesWorld object is one such group, since its patches touch and share a colour.

    ref = ReferenceCanvas.of(pos, pattern, colour, has, eoi)      # source tokens [B, L] -> canvases
    ref.at(cells)                                                  # the source's (pattern, colour) there
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def canvas_of(pos: jax.Array, pattern: jax.Array, eoi: int) -> jax.Array:
  """Tokens [B, L] -> the pattern drawn at every cell [B, g² + 1] (0: none; the last slot, <eoi>'s,
  stays 0). Teacher forcing reads only cells before the predicted one, so the whole image's canvas
  leaks nothing."""
  b = pos.shape[0]
  canvas = jnp.zeros((b, eoi + 1), jnp.int32).at[jnp.arange(b)[:, None], pos].set(pattern.astype(jnp.int32))
  return canvas.at[:, eoi].set(0)


def colour_canvas(pos: jax.Array, colour: jax.Array, eoi: int) -> jax.Array:
  """Tokens [B, L] -> the colour drawn at every cell [B, g² + 1] (palette index + 1; 0: none)."""
  return canvas_of(pos, jnp.where(pos < eoi, colour + 1, 0), eoi)


def object_cells(pattern: jax.Array, colour: jax.Array) -> jax.Array:
  """Canvases [B, g² + 1] (`canvas_of`, `colour_canvas`) -> each occupied cell's object [B, g² + 1]: the
  smallest cell index of its 8-connected group of same-colour cells; empty cells and <eoi>'s keep their
  own index. Label propagation, g² rounds (the longest path in the grid)."""
  b, e = pattern.shape
  g = int(round((e - 1) ** 0.5))
  grid = lambda x: x[:, :g * g].reshape(b, g, g)  # noqa: E731
  on, col = grid(pattern) > 0, grid(colour)
  big = jnp.int32(e)
  label0 = jnp.where(on, jnp.arange(g * g, dtype=jnp.int32).reshape(g, g), big)
  shifts = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
  pad = lambda x, v: jnp.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=v)  # noqa: E731
  col_p = pad(col, -1)

  def spread(_, label):
    lab_p = pad(label, big)
    for dr, dc in shifts:
      nb = lambda x: x[:, 1 + dr:1 + dr + g, 1 + dc:1 + dc + g]  # noqa: E731
      label = jnp.where(on & (nb(col_p) == col), jnp.minimum(label, nb(lab_p)), label)
    return label

  label = jax.lax.fori_loop(0, g * g, spread, label0)
  own = jnp.arange(e, dtype=jnp.int32)
  flat = jnp.where(on.reshape(b, g * g), label.reshape(b, g * g), own[:g * g])
  return jnp.concatenate([flat, jnp.full((b, 1), e - 1, jnp.int32)], 1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ReferenceCanvas:
  """An edit source as the copy path reads it: `pattern` and `colour` [B, g² + 1] at every cell (0:
  none; colour is the palette colour index + 1), `has` [B] bool: rows whose prompt holds a source
  (text-to-image rows and the CFG branch without a prompt have none: the copy path is off there);
  `keep` / `keep_colour` [B, g² + 1] f32: 1 where the edit keeps the source's pattern / colour there (every
  occupied cell unless `copy_keep` says otherwise); `slot_cells` / `slot_index` / `slot_object` [B, L]:
  each source token's cell (<eoi> for padding), its position in the prompt and its object
  (`object_cells`; padding: <eoi>)."""
  pattern: jax.Array
  colour: jax.Array
  has: jax.Array
  keep: jax.Array
  keep_colour: jax.Array
  slot_cells: jax.Array
  slot_index: jax.Array
  slot_object: jax.Array

  @classmethod
  def of(cls, pos, pattern, colour, has, eoi: int, slot_index=None) -> "ReferenceCanvas":
    """From a source's tokens [B, L], `has` [B] and the prompt positions of its tokens [B, L] (None:
    zeros; only copy_keep reads them)."""
    on = has[:, None]
    pat = jnp.where(on, canvas_of(pos, pattern, eoi), 0)
    col = jnp.where(on, colour_canvas(pos, colour, eoi), 0)
    occupied = (pat > 0).astype(jnp.float32)
    objects = jnp.take_along_axis(object_cells(pat, col), pos, axis=1)
    return cls(pat, col, has, occupied, occupied, pos,
               jnp.zeros_like(pos) if slot_index is None else slot_index, objects)

  def with_keep(self, keep_slots: jax.Array) -> "ReferenceCanvas":
    """The canvas with `keep` / `keep_colour` from per-source-token values [B, L, 2] (1 = kept; pattern,
    colour), scattered to their cells."""
    b, e = self.pattern.shape
    cells = jnp.zeros((b, e, 2), jnp.float32).at[jnp.arange(b)[:, None], self.slot_cells].set(
        keep_slots.astype(jnp.float32)) * (self.pattern > 0)[..., None]   # <eoi>'s cell: pattern 0
    return dataclasses.replace(self, keep=cells[..., 0], keep_colour=cells[..., 1])

  def keep_labels(self, pos, pattern, colour, eoi: int) -> jax.Array:
    """Per source token [B, L, 2]: whether the edit target (tokens [B, L]) has the same pattern, and the
    same colour, at that token's cell."""
    on = self.pattern > 0
    same = jnp.stack([(canvas_of(pos, pattern, eoi) == self.pattern) & on,
                      (colour_canvas(pos, colour, eoi) == self.colour) & on], -1)
    return jnp.take_along_axis(same, self.slot_cells[..., None], axis=1).astype(jnp.float32)

  def _same_object(self) -> jax.Array:
    """[B, L, L] f32: 1 where two source tokens belong to one object."""
    return (self.slot_object[:, :, None] == self.slot_object[:, None, :]).astype(jnp.float32)

  def object_sizes(self) -> jax.Array:
    """[B, L] f32: how many source tokens share each token's object."""
    return self._same_object().sum(-1)

  def slot_keep(self) -> jax.Array:
    """The keep masks at each source token [B, L, 2] (pattern, colour): `with_keep`'s input."""
    take = lambda m: jnp.take_along_axis(m, self.slot_cells, axis=1)  # noqa: E731
    return jnp.stack([take(self.keep), take(self.keep_colour)], -1)

  def object_mean(self, values: jax.Array) -> jax.Array:
    """Per-source-token values [B, L, ...] -> their mean over each token's object (padding: its own)."""
    same = self._same_object().astype(values.dtype)
    flat = values.reshape(values.shape[:2] + (-1,))
    out = jnp.einsum("bij,bjk->bik", same, flat) / same.sum(-1, keepdims=True)
    return out.reshape(values.shape)

  def twice(self) -> "ReferenceCanvas":
    """Stacked for classifier-free guidance: the conditional rows, then the same rows without a source."""
    cat = lambda x: jnp.concatenate([x, x])  # noqa: E731
    return ReferenceCanvas(cat(self.pattern), cat(self.colour),
                           jnp.concatenate([self.has, jnp.zeros_like(self.has)]), cat(self.keep),
                           cat(self.keep_colour), cat(self.slot_cells), cat(self.slot_index),
                           cat(self.slot_object))

  def at(self, cells: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The source's (pattern, colour) at `cells` [B, (L)]."""
    flat = cells.reshape(cells.shape[0], -1)
    take = lambda x: jnp.take_along_axis(x, flat, axis=1).reshape(cells.shape)  # noqa: E731
    return take(self.pattern), take(self.colour)

  def next_cell(self, last: jax.Array) -> jax.Array:
    """The first occupied source cell after `last` [B, (L)] (−1: none drawn yet), or <eoi> when none is
    left -> one-hot [B, (L,) g² + 1]."""
    e = self.pattern.shape[1]
    occupied = (self.keep > 0.5).reshape((last.shape[0],) + (1,) * (last.ndim - 1) + (e,))
    after = occupied & (jnp.arange(e) > last[..., None])
    nxt = jnp.where(after.any(-1), jnp.argmax(after, axis=-1), e - 1)
    return jax.nn.one_hot(nxt, e, dtype=jnp.float32)
