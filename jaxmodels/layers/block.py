"""The pre-norm transformer block and a stack of them (Python loop or `nnx.scan`).

One block serves every tower: decoder LLMs use RMSNorm + gated MLP + causal RoPE attention, vision
encoders use LayerNorm + plain GELU MLP + bidirectional attention.

    h = x + attn(attn_norm(x));  y = h + mlp(mlp_norm(h))          x, y: [B, T, D]
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.layers.attention import Attention, LayerCache
from jaxmodels.layers.linear import Linear
from jaxmodels.layers.mlp import MLP, GatedMLP
from jaxmodels.layers.norms import make_norm

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
KERNEL_LAYOUTS = ("none", "small", "all")    # unstack_layers(transpose_kernels=...)

# Scanned stacks of at most this many layers run their lax.scan fully unrolled on the CPU backend.
# There XLA fills each stacked residual buffer the backward pass reads ([L, B, ...] per saved
# activation) with zeros before the loop writes it, a pass over memory as large as the activations;
# unrolled, the same stacked parameters are read by static slices and nothing is pre-filled. Deeper
# stacks, and every stack on accelerators, keep the loop (compile time grows with unrolled depth).
CPU_UNROLL_MAX_LAYERS = 8
_unroll_limit: contextvars.ContextVar[int | None] = contextvars.ContextVar("scan_unroll_limit", default=None)


@contextlib.contextmanager
def scan_unroll_limit(max_layers: int) -> Iterator[None]:
  """Within the block, stacks traced with at most `max_layers` layers are unrolled whatever the
  backend (0: every scanned stack keeps its loop). For A/B benchmarks and tests. It acts when a
  function is traced: jit reuses a Python function's cached trace, so jit a new function (a fresh
  wrapper) to see the setting (`trainer.metrics.step_flops` does)."""
  token = _unroll_limit.set(max_layers)
  try:
    yield
  finally:
    _unroll_limit.reset(token)


def scan_unroll(num_layers: int) -> bool:
  """Whether a scanned stack of `num_layers` layers is traced fully unrolled (lax.scan's `unroll`)."""
  limit = _unroll_limit.get()
  if limit is None:
    limit = CPU_UNROLL_MAX_LAYERS if jax.default_backend() == "cpu" else 0
  return num_layers <= limit


class TransformerBlock(nnx.Module):
  """Pre-norm attention + MLP block: [B, T, D] -> [B, T, D]."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, num_kv_heads: int | None = None,
               head_dim: int | None = None, norm: str = "rms", norm_eps: float = 1e-6,
               mlp: str = "gated", activation: str = "silu", qkv_bias: bool = False,
               out_bias: bool = False, mlp_bias: bool = False, qk_norm: bool = False,
               attention_impl: str = "einsum", causal: bool = False, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attn_norm = make_norm(norm, dim, eps=norm_eps, param_dtype=param_dtype, rngs=rngs)
    self.attn = Attention(dim, num_heads, num_kv_heads, head_dim, qkv_bias=qkv_bias,
                          out_bias=out_bias, qk_norm=qk_norm, norm_eps=norm_eps,
                          impl=attention_impl, causal=causal, **kw)
    self.mlp_norm = make_norm(norm, dim, eps=norm_eps, param_dtype=param_dtype, rngs=rngs)
    if mlp == "gated":
      self.mlp = GatedMLP(dim, mlp_dim, activation=activation, use_bias=mlp_bias, **kw)
    elif mlp == "plain":
      self.mlp = MLP(dim, mlp_dim, activation=activation, use_bias=mlp_bias, **kw)
    else:
      raise ValueError(f"unknown mlp kind {mlp!r} (expected 'gated' or 'plain')")

  def __call__(self, x: jax.Array, *, mask=None, rope=None, cache: LayerCache | None = None,
               cache_index=0) -> tuple[jax.Array, LayerCache | None]:
    a, cache = self.attn(self.attn_norm(x), mask=mask, rope=rope, cache=cache, cache_index=cache_index)
    h = x + a
    y = h + self.mlp(self.mlp_norm(h))
    return sharding.constrain(y, ("act_batch", "act_length", "act_embed")), cache


class BlockStack(nnx.Module):
  """`num_layers` blocks built by `make_block(rngs)`, run as a loop or as one `nnx.scan`.

  With `scan=True` the parameters are stacked on a leading `layers` axis ([L, ...]); outputs are
  identical to the loop. A KV cache is a pair (k, v) of [L, B, S, K, H] in both modes, or (loop only)
  a pair of tuples of L [B, S, K, H] (`LLM.init_cache(per_layer=True)`). `unstack()` turns a scanned
  stack into the loop (decoding); a short scanned stack is traced unrolled on the CPU (`scan_unroll`).
  `remat` is one of REMAT_POLICIES ("none", "full", "dots").
  """

  def __init__(self, num_layers: int, make_block: Callable[[nnx.Rngs], nnx.Module], *,
               scan: bool = False, remat: str = "none", rngs: nnx.Rngs):
    if remat not in REMAT_POLICIES:
      raise ValueError(f"unknown remat policy {remat!r}; expected one of {sorted(REMAT_POLICIES)}")
    self.num_layers, self.scan, self.remat = num_layers, scan, remat
    if scan:
      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def create(r):
        return make_block(r)
      self.blocks = create(rngs)
    else:
      self.blocks = nnx.List([make_block(rngs) for _ in range(num_layers)])

  def _call_block(self):
    def call(block, x, mask, rope, cache, cache_index):
      return block(x, mask=mask, rope=rope, cache=cache, cache_index=cache_index)
    if self.remat == "none":
      return call
    policy = REMAT_POLICIES[self.remat]

    def remat_call(block, x, mask, rope, cache, cache_index):
      # jax.checkpoint over the block's state, split/merged by hand as in `_scan`: nnx.remat raised
      # TraceContextError for a block of an unstacked stack called inside another trace (the
      # decode loop of `generate`, which unstacks a remat'd scanned model).
      graphdef, state = nnx.split(block)

      def pure(state, x, mask, rope, cache, cache_index):
        return nnx.merge(graphdef, state, copy=True)(x, mask=mask, rope=rope, cache=cache,
                                                      cache_index=cache_index)
      return jax.checkpoint(pure, policy=policy, prevent_cse=False)(state, x, mask, rope, cache,
                                                                     cache_index)
    return remat_call

  def __call__(self, x: jax.Array, *, mask=None, rope=None,
               cache: LayerCache | None = None, cache_index=0, return_hidden: bool = False):
    """Returns (x [B,T,D], cache or None, per-layer outputs [L,B,T,D] or None)."""
    per_layer = cache is not None and isinstance(cache[0], (tuple, list))
    if self.scan:
      if per_layer:
        raise ValueError("a per-layer KV cache needs an unstacked BlockStack (BlockStack.unstack)")
      return self._scan(x, mask, rope, cache, cache_index, return_hidden)
    call = self._call_block()
    hiddens = []
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else (cache[0][i], cache[1][i])
      x, layer_cache = call(block, x, mask, rope, layer_cache, cache_index)
      if per_layer:
        cache = tuple(c[:i] + (u,) + c[i + 1:] for c, u in zip(cache, layer_cache))
      elif cache is not None:
        cache = (cache[0].at[i].set(layer_cache[0]), cache[1].at[i].set(layer_cache[1]))
      if return_hidden:
        hiddens.append(x)
    return x, cache, (jnp.stack(hiddens) if return_hidden else None)

  def unstack(self) -> None:
    """Turns a scanned stack into a loop over L blocks in place (each holding slices of the
    stacked state; outputs unchanged). For decoding (`generate` does it on its traced copy of the
    model, outside the token loop): inside a loop, a scan over stacked weights slices (copies) every
    layer's weights at every step, which is slower per token on CPU (BENCHMARKS.md)."""
    if not self.scan:
      return
    graphdef, state = nnx.split(self.blocks)
    self.blocks = nnx.List([nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
                            for i in range(self.num_layers)])
    self.scan = False

  def _scan(self, x, mask, rope, cache, cache_index, return_hidden):
    # A plain lax.scan over the stacked block state (split/merge by hand rather than nnx.scan), so
    # the stack works inside any outer JAX transform (jit, grad, lax.scan of a sampler) alike.
    graphdef, state = nnx.split(self.blocks)

    def body(h, xs):
      layer_state, layer_cache = xs
      block = nnx.merge(graphdef, layer_state, copy=True)
      h, layer_cache = block(h, mask=mask, rope=rope, cache=layer_cache, cache_index=cache_index)
      return h, (layer_cache, h if return_hidden else None)

    policy = REMAT_POLICIES[self.remat]
    if self.remat != "none":
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, (cache, hidden) = jax.lax.scan(body, x, (state, cache), unroll=scan_unroll(self.num_layers))
    return x, cache, hidden


def unstack_layers(module: nnx.Module, fuse_projections: bool = False,
                   transpose_kernels: str = "none") -> nnx.Module:
  """`BlockStack.unstack()` on every scanned stack inside `module` (in place); returns `module`.
  `fuse_projections`: then also `Attention.fuse_qkv()` and `GatedMLP.fuse_gate_up()` on every
  attention and gated MLP (one matmul each instead of three / two; for decoding).
  `transpose_kernels` (batch-1 decoding on a GPU; the output head keeps its layout): "all" calls
  `Linear.transpose_kernel()` on every projection inside the block stacks, "small" only on those
  XLA's GPU compiler runs as multiply + reduce at one row (`Linear.reduced_on_gpu`; larger ones
  stay in the stored layout, which cuBLAS reads faster), "none" on none."""
  if transpose_kernels not in KERNEL_LAYOUTS:
    raise ValueError(f"transpose_kernels must be one of {KERNEL_LAYOUTS}, got {transpose_kernels!r}")
  for _, node in list(nnx.iter_graph(module)):
    if isinstance(node, BlockStack):
      node.unstack()
  if fuse_projections:
    for _, node in list(nnx.iter_graph(module)):
      if isinstance(node, Attention):
        node.fuse_qkv()
      elif isinstance(node, GatedMLP):
        node.fuse_gate_up()
  if transpose_kernels != "none":
    for _, stack in list(nnx.iter_graph(module)):
      if isinstance(stack, BlockStack):
        for _, node in list(nnx.iter_graph(stack)):
          if isinstance(node, Linear) and (transpose_kernels == "all" or node.reduced_on_gpu()):
            node.transpose_kernel()
  return module
