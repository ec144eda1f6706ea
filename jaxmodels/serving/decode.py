"""Batched text decoding for serving: one prefill program, then compiled chunks of `chunk` tokens.

`jaxmodels.generate.generate` decodes all `max_new_tokens` in one scan; a server needs more between
tokens: streaming the tokens of each chunk as it lands, stopping once every live row has emitted
eos or reached its own `max_tokens` (a judge that asks 3000 tokens and answers in 40 costs 40, not
3000), dropping a batch whose clients all left, and per-row sampling settings so requests with
different temperature / top_p / seed share one batch. The model calls are the LLM's own
(`init_cache`, `forward` with a per-layer KV cache, `logits`, the scanned stack unstacked as in
`generate`), and each token is drawn by `generate.sample_logits`; greedy rows agree with `generate`
token for token (tests/test_serve.py).

    decoder = ChunkedDecoder(model.llm, eos_id=2, pad_id=0, chunk=8)
    for tokens in decoder.run(ids, mask, embeds, new_tokens=32, temperature=t, top_p=p, keys=keys):
      ...   # tokens: int32 [B, 8] per chunk; stop iterating to stop decoding
"""
from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.generate import next_positions, sample_logits
from jaxmodels.layers.block import unstack_layers


def _decoder_model(graphdef, state):
  return unstack_layers(nnx.merge(graphdef, state))


@functools.partial(jax.jit, static_argnames=("graphdef", "total"))
def _prefill(graphdef, state, ids, mask, embeds, positions, *, total: int):
  """ids/mask [B, T] (left-padded), embeds [B, T, D] or None, positions [B, T] / [3, B, T] (M-RoPE) or
  None (0.. over the real tokens) -> (per-layer cache for `total` slots, kv mask [B, total], logits of
  the next token [B, V], next positions [B])."""
  model = _decoder_model(graphdef, state)
  b, t = ids.shape
  cache = model.init_cache(b, total, per_layer=True)
  kv_mask = jnp.concatenate([mask, jnp.ones((b, total - t), mask.dtype)], axis=1)
  if positions is None:
    positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
  out = model.forward(ids, positions, kv_mask, cache=cache, cache_index=0, inputs_embeds=embeds)
  return out.cache, kv_mask, model.logits(out.hidden[:, -1]), next_positions(positions, mask)


def _draw(logits, keys, temperature, top_p):
  """One token per row [B]: argmax where temperature is 0, else `sample_logits` with the row's own
  key, temperature and top_p."""
  def row(lg, key, temp, p):
    return sample_logits(lg[None], key, temperature=jnp.maximum(temp, 1e-6), top_p=p, greedy=False)[0]
  sampled = jax.vmap(row)(logits, keys, temperature, top_p)
  return jnp.where(temperature == 0.0, jnp.argmax(logits, axis=-1).astype(jnp.int32), sampled)


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk"), donate_argnames=("cache",))
def _decode_chunk(graphdef, state, cache, kv_mask, logits, done, positions, slot, index, keys,
                  temperature, top_p, eos_ids, pad_id, *, chunk: int):
  """`chunk` tokens into cache slots slot.. (token numbers index..; positions [B] of the first)
  -> (tokens [B, chunk], cache, logits, done)."""
  model = _decoder_model(graphdef, state)

  def step(carry, i):
    cache, logits, done = carry
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, index + i))(keys)
    token = _draw(logits, step_keys, temperature, top_p)
    token = jnp.where(done, pad_id, token)
    done = done | jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
    out = model.forward(token[:, None], (positions + i)[:, None], kv_mask, cache=cache,
                        cache_index=slot + i)
    return (out.cache, model.logits(out.hidden[:, -1]), done), token

  (cache, logits, done), tokens = jax.lax.scan(step, (cache, logits, done), jnp.arange(chunk))
  return tokens.T, cache, logits, done


class ChunkedDecoder:
  """Decodes a left-padded batch chunk by chunk (see the module docstring). `eos_id`: int, a list
  of ids, or None (the LLM config's)."""

  def __init__(self, llm: nnx.Module, *, eos_id, pad_id: int, chunk: int = 8):
    self.graphdef, self.state = nnx.split(llm)
    eos = llm.config.eos_token_id if eos_id is None else eos_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    self.eos_ids = jnp.asarray(eos or [-1], jnp.int32)
    self.pad_id, self.chunk = int(pad_id), int(chunk)

  def run(self, ids, mask, embeds, *, new_tokens: int, temperature, top_p, keys,
          positions=None) -> Iterator[np.ndarray]:
    """Yields int32 [B, chunk] host arrays, `new_tokens` / chunk times at most (new_tokens is a
    multiple of `chunk`); the caller stops early by not asking for more. temperature / top_p: float
    [B]; keys: PRNG keys [B] (row i's token j uses fold_in(keys[i], j)); positions: the prompt's
    rotary positions (M-RoPE [3, B, T]) or None; generated tokens continue after their largest."""
    b, t = ids.shape
    cache, kv_mask, logits, positions = _prefill(self.graphdef, self.state, ids, mask, embeds, positions,
                                                 total=t + new_tokens)
    done = jnp.zeros((b,), bool)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    for start in range(0, new_tokens, self.chunk):
      tokens, cache, logits, done = _decode_chunk(
          self.graphdef, self.state, cache, kv_mask, logits, done, positions + start, jnp.int32(t + start),
          jnp.int32(start), keys, temperature, top_p, self.eos_ids, jnp.int32(self.pad_id), chunk=self.chunk)
      yield np.asarray(tokens)
