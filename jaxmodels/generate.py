"""Autoregressive text decoding with a KV cache, compiled as one program.

The prompt is prefilled once; then one token per step runs inside `lax.scan`, so there is no
per-token Python dispatch. Left-padded batches are supported through `attention_mask` (positions are
counted from each row's first real token, as transformers does).

    out = generate(model, input_ids, 32, attention_mask=mask)                 # greedy
    out = generate(model, input_ids, 32, temperature=0.7, top_p=0.9, rng=jax.random.key(0))
    # out: [B, T + 32] = prompt followed by the new tokens (pad_token_id after an eos)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers.block import unstack_layers


_NEG = float(jnp.finfo(jnp.float32).min)


def sample_logits(logits: jax.Array, rng: jax.Array | None, *, temperature: float | jax.Array = 0.0,
                  top_k: int = 0, top_p: float | jax.Array = 1.0, greedy: bool = True) -> jax.Array:
  """logits [B, V] -> token ids [B]. Greedy = argmax; otherwise temperature, then top-k, then top-p
  (nucleus: the smallest set of most likely tokens whose probability reaches top_p).

  With top_k > 0 the nucleus and the draw work on `lax.top_k`'s k sorted values and map the chosen
  position back to its id: the same distribution as masking the whole vocabulary, without sorting or
  drawing over V ids for every token (BLIP3o-NEXT's image tokens: k 16-1200 of a vocabulary of 10^5)."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k > 0:
    values, ids = jax.lax.top_k(logits, top_k)                # [B, k], sorted descending
    choice = jax.random.categorical(rng, _nucleus(values, top_p), axis=-1)
    return jnp.take_along_axis(ids, choice[..., None], axis=-1)[..., 0].astype(jnp.int32)
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  kept = _nucleus(sorted_logits, top_p)
  cutoff = jnp.min(jnp.where(kept > _NEG, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  logits = jnp.where(logits < cutoff, _NEG, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _nucleus(sorted_logits: jax.Array, top_p: float | jax.Array) -> jax.Array:
  """sorted_logits [B, n] (descending) with every token outside the top-p nucleus set to the f32 minimum:
  a token stays when the mass before it is < top_p (so the best one always stays)."""
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  return jnp.where(keep, sorted_logits, _NEG)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "greedy",
                                             "fuse_projections", "transpose_kernels"))
def _generate(graphdef, state, input_ids, attention_mask, rng, temperature, top_p, eos_ids, pad_id,
              inputs_embeds, positions, *, max_new_tokens: int, top_k: int, greedy: bool,
              fuse_projections: bool, transpose_kernels: str):
  # Per-layer weights sliced once here, not at every token inside the loop (BlockStack.unstack), and
  # q/k/v and gate/up joined into one matmul each (fewer kernels per token).
  model = unstack_layers(nnx.merge(graphdef, state), fuse_projections=fuse_projections,
                         transpose_kernels=transpose_kernels)
  b, t = input_ids.shape
  total = t + max_new_tokens
  cache = model.init_cache(b, total, per_layer=True)   # in-place per-layer token writes
  kv_mask = jnp.concatenate([attention_mask, jnp.ones((b, max_new_tokens), attention_mask.dtype)], 1)
  if positions is None:
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
  out = model.forward(input_ids, positions, kv_mask, cache=cache, cache_index=0, inputs_embeds=inputs_embeds)
  logits = model.logits(out.hidden[:, -1])
  next_pos = next_positions(positions, attention_mask)

  def step(carry, i):
    cache, logits, done, rng = carry
    rng, key = jax.random.split(rng)
    token = sample_logits(logits, key, temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    token = jnp.where(done, pad_id, token)
    done = done | jnp.any(token[:, None] == eos_ids[None, :], axis=-1)
    out = model.forward(token[:, None], (next_pos + i)[:, None], kv_mask, cache=cache,
                        cache_index=t + i)
    return (out.cache, model.logits(out.hidden[:, -1]), done, rng), token

  done = jnp.zeros((b,), bool)
  _, tokens = jax.lax.scan(step, (out.cache, logits, done, rng), jnp.arange(max_new_tokens))
  return jnp.concatenate([input_ids, tokens.T.astype(input_ids.dtype)], axis=1)


def next_positions(positions: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """Position of the first generated token of each row: 1 + the largest position of the row's real
  prompt tokens (0 for a row without any). positions [B, T] or [3, B, T] (M-RoPE), attention_mask
  [B, T] -> [B] int32. For prompt positions counted 0, 1, ... this is the number of real tokens; for
  Qwen2.5-VL's M-RoPE positions it is that number plus transformers' `rope_deltas`, the offset every
  later (text) token keeps."""
  b, t = attention_mask.shape
  per_axis = positions.reshape(-1, b, t)
  real = jnp.where(attention_mask[None] > 0, per_axis, -1)
  return (jnp.max(real, axis=(0, 2)) + 1).astype(jnp.int32)


def default_transpose_kernels(batch: int, platform: str | None = None) -> str:
  """`generate`'s default for `transpose_kernels`: "small" at batch 1 on a GPU backend, else "none".
  On an H200 (bf16), transposing every layer kernel took batch-1 decoding from 1.15 to 1.00 ms per
  token (xl) and 0.42 to 0.29 (large): the gain is in the kernels XLA runs as multiply + reduce (the
  xl o projection 16 -> 3.75 µs), while a kernel large enough for a GEMM ran slower transposed (the
  xl fused q/k/v, cuBLAS 9.5 µs stored, Triton 12.3 µs transposed), so only the former are
  transposed. On the CPU the stored layout is faster; larger batches are matrix products. `platform`:
  the one compiled for (default: JAX's default backend; "cuda" / "rocm" count as "gpu")."""
  platform = platform or jax.default_backend()
  return "small" if platform in ("gpu", "cuda", "rocm") and batch == 1 else "none"


def generate(model: nnx.Module, input_ids: jax.Array, max_new_tokens: int, *,
             attention_mask: jax.Array | None = None, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int = 0, rng: jax.Array | None = None, eos_token_id: int | list[int] | None = None,
             pad_token_id: int | None = None, inputs_embeds: jax.Array | None = None,
             positions: jax.Array | None = None, fuse_projections: bool = True,
             transpose_kernels: bool | str | None = None) -> jax.Array:
  """Decodes `max_new_tokens` tokens after `input_ids` [B, T] (left-padded where attention_mask is 0).

  `inputs_embeds` [B, T, D] replaces the prompt's token embeddings in the prefill (multimodal prompts
  with image features spliced in); `input_ids` still gives the prompt's length and is returned.
  `positions` [B, T], or [3, B, T] for an M-RoPE model (Qwen2.5-VL's image grid positions), replaces
  the prompt's default positions (counted over each row's real tokens); new tokens then continue
  from `next_positions` (the largest real prompt position + 1, the same on every M-RoPE axis).
  temperature 0 is greedy. eos/pad ids default to the model config's; after a row emits eos its
  remaining tokens are pad_token_id (as transformers does). `fuse_projections` runs each layer's
  q/k/v and gate/up projections as one matmul each, on a concatenated copy of their weights made once
  per call (`unstack_layers`); the tokens are the same either way. `transpose_kernels` keeps
  layer kernels as [K_out, K_in] copies for the call (`Linear.transpose_kernel`): "all" (or True)
  every one in the block stacks, "small" those XLA's GPU compiler runs as multiply + reduce, "none"
  (or False) none; None (default): `default_transpose_kernels(B)`, "small" at batch 1 on a GPU
  backend (BENCHMARKS.md). Tokens agree up to summation-order rounding.
  Returns [B, T + max_new_tokens] int32.
  """
  args, static = _generate_args(model, input_ids, max_new_tokens, attention_mask=attention_mask,
                                temperature=temperature, top_p=top_p, top_k=top_k, rng=rng,
                                eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                inputs_embeds=inputs_embeds, positions=positions,
                                fuse_projections=fuse_projections, transpose_kernels=transpose_kernels)
  return _generate(*args, **static)


def lower_generate(model: nnx.Module, input_ids: jax.Array, max_new_tokens: int, *,
                   device: jax.Device | None = None, **options) -> jax.stages.Lowered:
  """`generate`'s program for these arguments (the same `options`), lowered and not run:
  `.compile().as_text()` is its optimised HLO. `model` may be abstract (`nnx.eval_shape`). `device`
  (e.g. a compile-only device of `jax.experimental.topologies.get_topology_desc`) places every
  argument there, so the program compiles for that device's platform — a GPU's on a machine without
  one (tools/profile_kernels.py --gpu_target); the kernel-layout default follows that platform."""
  platform = device.platform if device is not None else None
  args, static = _generate_args(model, input_ids, max_new_tokens, platform=platform, **options)
  if device is not None:
    sharding = jax.sharding.SingleDeviceSharding(device)
    args = (args[0],) + jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                     args[1:])     # args[0]: the graphdef (static)
  return _generate.lower(*args, **static)


def _generate_args(model, input_ids, max_new_tokens, *, attention_mask=None, temperature=0.0, top_p=1.0,
                   top_k=0, rng=None, eos_token_id=None, pad_token_id=None, inputs_embeds=None,
                   positions=None, fuse_projections=True, transpose_kernels=None,
                   platform=None) -> tuple[tuple, dict]:
  """`_generate`'s positional arguments and static keywords for `generate`'s arguments."""
  config = model.config
  input_ids = jnp.asarray(input_ids, jnp.int32)
  attention_mask = (jnp.ones_like(input_ids) if attention_mask is None
                    else jnp.asarray(attention_mask, jnp.int32))
  eos = config.eos_token_id if eos_token_id is None else eos_token_id
  eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
  pad = pad_token_id if pad_token_id is not None else (config.pad_token_id if config.pad_token_id
                                                       is not None else (eos[0] if eos else 0))
  greedy = temperature == 0.0
  if not greedy and rng is None:
    raise ValueError("generate: sampling (temperature > 0) needs an rng key")
  rng = jax.random.key(0) if rng is None else rng
  eos_ids = jnp.asarray(eos if eos else [-1], jnp.int32)
  graphdef, state = nnx.split(model)
  args = (graphdef, state, input_ids, attention_mask, rng, jnp.float32(max(temperature, 1e-6)),
          jnp.float32(top_p), eos_ids, jnp.int32(pad), inputs_embeds,
          None if positions is None else jnp.asarray(positions, jnp.int32))
  static = dict(max_new_tokens=max_new_tokens, top_k=top_k, greedy=greedy, fuse_projections=fuse_projections,
                transpose_kernels=_kernel_layout(transpose_kernels, input_ids.shape[0], platform))
  return args, static


def _kernel_layout(transpose_kernels: bool | str | None, batch: int, platform: str | None = None) -> str:
  if transpose_kernels is None:
    return default_transpose_kernels(batch, platform)
  if isinstance(transpose_kernels, bool):
    return "all" if transpose_kernels else "none"
  return transpose_kernels      # unstack_layers checks it against KERNEL_LAYOUTS
