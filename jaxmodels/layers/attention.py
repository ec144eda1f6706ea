"""Multi-head attention with grouped KV heads (MHA/GQA/MQA), optional qkv bias, per-head qk-norm,
rotary embeddings, boolean masks and a KV cache.

Shapes: x [B, T, D]; q [B, T, N, H]; k, v [B, S, K, H] with N % K == 0; mask [B, 1|N, T, S] (True =
attend). The cache for one layer is a pair (k, v) of [B, S_max, K, H]; new keys/values are written at
slot `cache_index` and queries attend over the whole cache (the mask decides which slots are valid).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.layers.linear import Linear, concat_linears
from jaxmodels.layers.norms import RMSNorm
from jaxmodels.layers.rotary import apply_rope

LayerCache = tuple[jax.Array, jax.Array]


def make_attention_mask(q_slots: jax.Array, k_slots: jax.Array, kv_valid: jax.Array | None = None, *,
                        causal: bool = True, sliding_window: int | None = None) -> jax.Array:
  """Boolean mask [B|1, 1, T, S].

  q_slots [T] and k_slots [S] are indices in the (cache) sequence; kv_valid [B, S] marks real keys
  (False for padding). Causal: key slot <= query slot. Sliding window: query − key < window.
  """
  q = q_slots[:, None]
  k = k_slots[None, :]
  mask = jnp.ones((q_slots.shape[0], k_slots.shape[0]), bool)
  if causal:
    mask &= k <= q
  if sliding_window is not None:
    mask &= (q - k) < sliding_window
  mask = mask[None, None]
  if kv_valid is not None:
    mask = mask & kv_valid.astype(bool)[:, None, None, :]
  return mask


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          *, scale: float, impl: str = "einsum", causal: bool = False) -> jax.Array:
  """softmax(q·kᵀ·scale + mask) · v with grouped KV heads -> [B, T, N, H].

  impl "einsum" (portable, float32 softmax, fully-masked rows give a uniform average instead of NaN);
  "xla" / "cudnn" call `jax.nn.dot_product_attention` (cudnn = fused flash attention on GPU).
  `causal` (with mask None, T == S): the causal mask, which the fused kernels apply themselves
  (`is_causal`, no [T, S] mask or bias in memory); einsum builds it.
  """
  if causal and (mask is not None or q.shape[1] != k.shape[1]):
    raise ValueError("causal=True takes no mask and needs as many queries as keys "
                     f"(got mask {mask is not None}, T={q.shape[1]}, S={k.shape[1]})")
  if impl == "cudnn" and (q.shape[1] % 2 or k.shape[1] % 2):
    return _even_lengths(q, k, v, mask, scale, impl, causal)
  if impl in ("xla", "cudnn"):
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, is_causal=causal,
                                        implementation=impl)
  if causal:
    slots = jnp.arange(q.shape[1])
    mask = make_attention_mask(slots, slots, causal=True)
  if impl != "einsum":
    raise ValueError(f"unknown attention impl {impl!r}")
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  g = n // kh
  # Laid out for XLA:CPU (measured, tools/bench_train.py): heads-major operands with the g query heads
  # of a KV group stacked along the query axis, so both dots are plain batched matmuls over [B, K]
  # with contiguous [g·T, H] x [S, H] tiles; and the softmax normalisation applied to the [.., H]
  # output instead of the [.., S] probabilities (exp(l - max) · v / Σ exp(l - max), the same function).
  # Faster than the [B, T, N, H] einsum with a normalised softmax (BENCHMARKS.md, "Attention layout").
  qg = q.reshape(b, t, kh, g, h).transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, h)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bkqh,bksh->bkqs", qg, kt, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    m = mask.reshape(mask.shape[0], -1, 1, *mask.shape[-2:]) if mask.shape[1] == 1 else \
        mask.reshape(mask.shape[0], kh, g, *mask.shape[-2:])
    logits = jnp.where(m, logits.reshape(b, kh, g, t, s), jnp.finfo(jnp.float32).min)
    logits = logits.reshape(b, kh, g * t, s)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = jnp.einsum("bkqs,bksh->bkqh", weights.astype(v.dtype), vt, preferred_element_type=jnp.float32)
  out = (out / weights.sum(-1, keepdims=True)).astype(q.dtype)
  return out.reshape(b, kh, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def _even_lengths(q, k, v, mask, scale, impl="cudnn", causal=False):
  """cuDNN's fused attention rejects odd T or S when training (seen on an H200 with jax 0.11:
  "Unsupported sequence length Q 255, KV 255", also with `is_causal`): pad queries and keys by one
  and slice the padded query rows away. Padded keys are masked out (causal: they come after every
  real query); a padded query row attends to key 0, so it stays finite."""
  t, s = q.shape[1], k.shape[1]
  pt, ps = t % 2, s % 2
  pad = lambda x, p: jnp.pad(x, ((0, 0), (0, p), (0, 0), (0, 0)))   # noqa: E731
  if mask is None and not causal and ps:
    mask = jnp.ones((1, 1, t, s), bool)          # the padded key must still be masked out
  if mask is not None:
    mask = jnp.pad(jnp.broadcast_to(mask, (*mask.shape[:2], t, s)), ((0, 0), (0, 0), (0, pt), (0, ps)))
    if pt:
      mask = mask.at[:, :, t, 0].set(True)
  out = jax.nn.dot_product_attention(pad(q, pt), pad(k, ps), pad(v, ps), mask=mask, scale=scale,
                                     is_causal=causal, implementation=impl)
  return out[:, :t]


class Attention(nnx.Module):
  """Self- (or cross-) attention: [B, T, D] -> [B, T, D]."""

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None,
               head_dim: int | None = None, *, qkv_bias: bool = False, out_bias: bool = False,
               qk_norm: bool = False, norm_eps: float = 1e-6, kv_dim: int | None = None,
               impl: str = "einsum", causal: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    num_kv_heads = num_kv_heads or num_heads
    self.causal = causal         # mask=None then means the causal mask (see `dot_product_attention`)
    head_dim = head_dim or dim // num_heads
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    self.num_heads, self.num_kv_heads, self.head_dim, self.impl = num_heads, num_kv_heads, head_dim, impl
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    kv_dim = kv_dim or dim
    self.q = Linear(dim, (num_heads, head_dim), axes=("embed", "heads", "head_dim"),
                    use_bias=qkv_bias, **kw)
    self.k = Linear(kv_dim, (num_kv_heads, head_dim), axes=("embed", "kv_heads", "head_dim"),
                    use_bias=qkv_bias, **kw)
    self.v = Linear(kv_dim, (num_kv_heads, head_dim), axes=("embed", "kv_heads", "head_dim"),
                    use_bias=qkv_bias, **kw)
    self.o = Linear((num_heads, head_dim), dim, axes=("heads", "head_dim", "embed"),
                    use_bias=out_bias, **kw)
    self.qkv = None              # set by fuse_qkv() (decoding)
    if qk_norm:
      self.q_norm = RMSNorm(head_dim, eps=norm_eps, axes=("head_dim",), param_dtype=param_dtype, rngs=rngs)
      self.k_norm = RMSNorm(head_dim, eps=norm_eps, axes=("head_dim",), param_dtype=param_dtype, rngs=rngs)
    else:
      self.q_norm = self.k_norm = None

  def fuse_qkv(self) -> None:
    """Adds `qkv`, the q, k and v projections as one [D, N + 2K, H] matmul, used for self-attention
    from then on (in place; outputs unchanged; cross-attention keeps the separate ones). For
    decoding (`generate` does it on its traced copy): per token, one kernel instead of three."""
    if self.qkv is None and self.q.in_shape == self.k.in_shape:
      fused = concat_linears([self.q, self.k, self.v], axis=0, axes=("embed", "heads", "head_dim"))
      self.qkv = nnx.data(fused)

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
               rope: tuple[jax.Array, jax.Array] | None = None, kv_input: jax.Array | None = None,
               cache: LayerCache | None = None, cache_index: jax.Array | int = 0,
               ) -> tuple[jax.Array, LayerCache | None]:
    """Returns (y [B, T, D], updated cache or None). `rope` = (cos, sin) for the query positions.
    With `causal` set at construction, mask=None means the causal mask (no cache, T == S)."""
    if self.qkv is not None and kv_input is None:
      n, kh = self.num_heads, self.num_kv_heads
      qkv = self.qkv(x)
      q, k, v = qkv[..., :n, :], qkv[..., n:n + kh, :], qkv[..., n + kh:, :]
    else:
      kv_input = x if kv_input is None else kv_input
      q, k, v = self.q(x), self.k(kv_input), self.v(kv_input)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    q = sharding.constrain(q, ("act_batch", "act_length", "act_heads", None))
    if cache is not None:
      zero = jnp.zeros((), jnp.int32)
      idx = (zero, jnp.asarray(cache_index, jnp.int32), zero, zero)
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), idx)
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), idx)
      cache = (k, v)
    out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                                scale=self.head_dim ** -0.5, impl=self.impl,
                                causal=self.causal and mask is None)
    return self.o(out), cache
