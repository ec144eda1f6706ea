"""Token embeddings; `attend` reuses the table as a tied output projection."""
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
