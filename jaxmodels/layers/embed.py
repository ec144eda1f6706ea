"""Token embeddings (`attend` reuses the table as a tied output projection), and placeholders in a
token sequence replaced by image tokens (`splice_image_tokens`, shared by every model that reads images)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers.linear import param


class Embed(nnx.Module):
  """ids [B, T] -> [B, T, D] from a table [V, D] (axes vocab, embed)."""

  def __init__(self, vocab_size: int, dim: int, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.dtype = dtype
    self.embedding = param(rngs, nnx.initializers.normal(0.02), (vocab_size, dim), ("vocab", "embed"),
                           param_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """x [..., D] -> logits [..., V] with the transposed table."""
    return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


def splice_image_tokens(text: jax.Array, ids: jax.Array, image_tokens: jax.Array,
                        image_token_id: int) -> jax.Array:
  """text [B, T, D] with the i-th `image_token_id` placeholder of each row replaced by
  image_tokens[b, i mod n] ([B, n, D]): a row holds the image once (n placeholders) or k times (k·n
  placeholders, e.g. one copy per turn of a question-first conversation, `data.und_layout`)."""
  is_img = ids == image_token_id
  index = jnp.maximum(jnp.cumsum(is_img, axis=1) - 1, 0) % image_tokens.shape[1]
  spliced = jnp.take_along_axis(image_tokens.astype(text.dtype), index[..., None], axis=1)
  return jnp.where(is_img[..., None], spliced, text)
