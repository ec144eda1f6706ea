"""The query kinds of the "queries" generation path: what is appended after a prompt so that the LLM's
hidden states there become the DiT's condition (`UnifiedConfig.queries` names one of `QUERY_KINDS`).

  "learnable"   BLIP3-o, Pisces: N free vectors `model.queries` [N, D] (initialised randn, as BLIP3-o
                does) appended after the prompt embeddings; the condition is the last N states.
  "vocab"       MetaQuery: N + 2 new vocabulary rows <img0..N-1>, <boi>, <eoi> (ids vocab_size ..) in
                their own trainable table `model.query_embed` [N + 2, D] (normal 0.02), so only they train
                while the LLM embedding stays frozen; the suffix is <boi> <img0..N-1> <eoi> and the
                condition is the N states strictly between <boi> and <eoi>.

A kind owns its parameter (created here, stored on the model under `attribute` so checkpoints and
released key maps keep their paths), the suffix embeddings [B, S, D] and which of the suffix's states
[B, T + S, D] form the condition [B, N, D].

    kind = QUERY_KINDS[config.queries]
    setattr(model, kind.attribute, kind.init(config, rngs))
    states = kind.states(hidden, config.num_queries)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers import param


class QueryKind:
  attribute: str
  init_std: float

  def init(self, config, rngs: nnx.Rngs) -> nnx.Param:
    """The kind's parameter [rows, D] (logical axes (None, "embed"))."""
    d = config.llm.hidden_size
    return param(rngs, nnx.initializers.normal(self.init_std), (self.rows(config.num_queries), d),
                 (None, "embed"), jnp.dtype(config.llm.param_dtype))

  def rows(self, n: int) -> int:
    raise NotImplementedError

  def suffix(self, model, b: int, dtype) -> jax.Array:
    """Embeddings [B, S, D] appended after the prompt."""
    raise NotImplementedError

  def states(self, hidden: jax.Array, n: int) -> jax.Array:
    """hidden [B, T + S, D] of prompt + suffix -> the condition's states [B, n, D]."""
    raise NotImplementedError


class LearnableQueries(QueryKind):
  attribute, init_std = "queries", 1.0

  def rows(self, n):
    return n

  def suffix(self, model, b, dtype):
    q = model.queries[...].astype(dtype)
    return jnp.broadcast_to(q[None], (b,) + q.shape)

  def states(self, hidden, n):
    return hidden[:, -n:]


class VocabQueries(QueryKind):
  attribute, init_std = "query_embed", 0.02

  def rows(self, n):
    return n + 2

  def suffix(self, model, b, dtype):
    v, n = model.config.llm.vocab_size, model.config.num_queries
    ids = jnp.concatenate([jnp.array([v + n]), v + jnp.arange(n), jnp.array([v + n + 1])])
    return model.embed_tokens(jnp.broadcast_to(ids[None], (b, n + 2))).astype(dtype)

  def states(self, hidden, n):
    return hidden[:, -(n + 1):-1]


QUERY_KINDS: dict[str, QueryKind] = {"learnable": LearnableQueries(), "vocab": VocabQueries()}
