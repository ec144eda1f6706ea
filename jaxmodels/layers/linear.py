"""Parameters with logical axis names, and a general dense layer.

Every parameter in jaxmodels is an `nnx.Param` whose `out_sharding` metadata holds *logical* axis
names (`embed`, `mlp`, `heads`, ...). They are mapped to mesh axes by `jaxmodels.sharding` through an
ordered rules table; variables are never sharded eagerly at creation (`eager_sharding=False`), so a
model can be built with or without a mesh, and `jaxmodels.sharding.create_sharded` places it.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]
Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

# XLA's GPU compiler rewrites a dot with a vector operand as multiply + reduce when
# (M + N) * K < this (gpu_algebraic_simplifier's IsMatrixMultiplicationTooSmallForRewriting; larger
# ones go to cuBLAS / Triton GEMMs): on an H200 a 2048x2048 kernel (4.2 M) is rewritten, a 2048x6144
# one (12.6 M) is not (BENCHMARKS.md, GPU rows).
XLA_GPU_DOT_REDUCE_SIZE = 10_000_000


def param(rngs: nnx.Rngs | None, init: Initializer, shape: Sequence[int], axes: Axes,
          dtype=jnp.float32) -> nnx.Param:
  """Creates an `nnx.Param` of `shape` with logical `axes` (one name or None per dimension)."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {tuple(shape)}")
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False)


def fan_in_normal(fan_in: int) -> Initializer:
  """Truncated-normal-free LeCun init: N(0, 1/fan_in)."""
  std = 1.0 / math.sqrt(max(fan_in, 1))

  def init(key, shape, dtype):
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

  return init


class Linear(nnx.Module):
  """Dense layer contracting the last `len(in_shape)` input dims into `out_shape`.

  x[..., *in_shape] @ kernel[*in_shape, *out_shape] (+ bias[*out_shape]) -> y[..., *out_shape].
  Multi-dimensional shapes let attention keep heads as their own axis, e.g. the query projection is
  `Linear((D,), (N, H), axes=("embed", "heads", "head_dim"))` with kernel [D, N, H].
  """

  def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int], *, axes: Axes,
               use_bias: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               kernel_init: Initializer | None = None, rngs: nnx.Rngs | None = None):
    in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
    self.in_shape, self.out_shape, self.dtype = in_shape, out_shape, dtype
    init = kernel_init or fan_in_normal(math.prod(in_shape))
    self.kernel = param(rngs, init, in_shape + out_shape, axes, param_dtype)
    self.bias = (param(rngs, nnx.initializers.zeros, out_shape, axes[len(in_shape):], param_dtype)
                 if use_bias else None)
    self.kernel_t = None            # [K_out, K_in] copy, set by transpose_kernel() (GPU decoding)

  def transpose_kernel(self) -> None:
    """Keeps a [K_out, K_in] copy of the kernel (contracting dim minor), used from then on (in place;
    outputs equal up to summation order). For batch-1 decoding on a GPU (`generate` does it on its
    traced copy): XLA turns a small vector-matrix product into multiply + reduce, which over the stored
    [K_in, K_out] layout is a column reduction it leaves unfused (the product is written out); over
    the transposed copy it is one fused row reduction. On the CPU the stored layout is faster
    (both measured in BENCHMARKS.md, "GPU batch-1 decode")."""
    if self.kernel_t is None:
      k_in, k_out = math.prod(self.in_shape), math.prod(self.out_shape)
      self.kernel_t = nnx.data(self.kernel[...].reshape(k_in, k_out).T)

  def reduced_on_gpu(self, rows: int = 1) -> bool:
    """Whether XLA's GPU compiler runs this layer on `rows` input rows as multiply + reduce rather
    than a GEMM (`XLA_GPU_DOT_REDUCE_SIZE`): the case the transposed layout speeds up."""
    k_in, k_out = math.prod(self.in_shape), math.prod(self.out_shape)
    return (rows + k_out) * k_in < XLA_GPU_DOT_REDUCE_SIZE

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    k_in, k_out = math.prod(self.in_shape), math.prod(self.out_shape)
    x2 = x.astype(self.dtype).reshape(-1, k_in)
    if self.kernel_t is not None:   # [M, K_in] · [K_out, K_in]ᵀ
      y = jax.lax.dot_general(x2, self.kernel_t.astype(self.dtype), (((1,), (1,)), ((), ())))
    else:
      # One 2-D matmul [M, K_in] @ [K_in, K_out] rather than a dot_general over the leading dims:
      # XLA:CPU then runs the backward's dW = xᵀ·dy without the transpose copies it inserts for the
      # batched form (BENCHMARKS.md, "Measurements behind code choices").
      y = jnp.dot(x2, self.kernel[...].astype(self.dtype).reshape(k_in, k_out))
    y = y.reshape(*x.shape[:x.ndim - n_in], *self.out_shape)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def concat_linears(layers: Sequence[Linear], axis: int, axes: Axes) -> Linear:
  """One `Linear` whose output is the given layers' outputs joined along output dim `axis` (their
  kernels concatenated there; same input shape): [..., *in] -> [..., *out], out[axis] the sum of
  theirs.
  Used to run several projections of one input as a single matmul (fewer kernels when decoding)."""
  first = layers[0]
  if any(l.in_shape != first.in_shape or (l.bias is None) != (first.bias is None) for l in layers):
    raise ValueError("concat_linears: the layers differ in input shape or bias")
  n_in = len(first.in_shape)
  kernel = jnp.concatenate([l.kernel[...] for l in layers], axis=n_in + axis)
  out_shape = kernel.shape[n_in:]
  fused = Linear(first.in_shape, out_shape, axes=axes, use_bias=first.bias is not None,
                 dtype=first.dtype, param_dtype=kernel.dtype, kernel_init=lambda key, shape, dtype: kernel)
  if first.bias is not None:
    fused.bias[...] = jnp.concatenate([l.bias[...] for l in layers], axis=axis)
  return fused
