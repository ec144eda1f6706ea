"""Convolutions on NHWC arrays: Conv2d (HWIO kernels, groups), channel RMSNorm and GLUMBConv
(Mix-FFN: 1x1 conv -> depthwise 3x3 -> SiLU-gated -> 1x1), shared by SANA and DC-AE."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers.linear import fan_in_normal, param


class Conv2d(nnx.Module):
  """NHWC 2-D convolution: [B, H, W, C_in] -> [B, H', W', C_out] ("same" padding by default).

  The kernel is HWIO, [k, k, C_in / groups, C_out] (the HF "conv" layout of keymap.py), with logical
  axes (None, None, in_axis, out_axis); grouped/depthwise kernels leave the size-C_in/groups axis
  unnamed. `axes` names the (input, output) channel axes: ("conv_in", "conv_out") for DC-AE,
  ("embed", "mlp") etc. where a 1x1 convolution is really a transformer MLP layer.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               padding: int | None = None, groups: int = 1, use_bias: bool = True,
               axes: tuple[str | None, str | None] = ("conv_in", "conv_out"), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    if in_channels % groups or out_channels % groups:
      raise ValueError(f"channels {in_channels}->{out_channels} are not divisible by groups={groups}")
    self.kernel_size, self.stride, self.groups, self.dtype = kernel_size, stride, groups, dtype
    self.padding = kernel_size // 2 if padding is None else padding
    per_group = in_channels // groups
    shape = (kernel_size, kernel_size, per_group, out_channels)
    self.kernel = param(rngs, fan_in_normal(kernel_size * kernel_size * per_group), shape,
                        (None, None, axes[0] if groups == 1 else None, axes[1]), param_dtype)
    self.bias = (param(rngs, nnx.initializers.zeros, (out_channels,), (axes[1],), param_dtype)
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    kernel = self.kernel[...].astype(self.dtype)
    if self.kernel_size == 1 and self.stride == 1 and self.groups == 1 and self.padding == 0:
      y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0])
    elif self.groups == x.shape[-1] == kernel.shape[-1] and jax.default_backend() == "cpu":
      y = _depthwise_shifted_sum(x, kernel[:, :, 0], self.stride, self.padding)
    else:
      p = self.padding
      y = jax.lax.conv_general_dilated(
          x, kernel, window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def _depthwise_shifted_sum(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """Depthwise convolution x [B, H, W, C] * kernel [k, k, C] as a sum of k² shifted, per-channel scaled
  copies of the padded input (the same result as `conv_general_dilated` with groups = C). XLA:CPU runs
  grouped convolutions ~30x slower than this fused elementwise form (SANA's Mix-FFN 3×3 depthwise conv
  on [2, 16, 16, 640]: 11.6 ms vs 0.4 ms; BENCHMARKS.md, bench_flow), so CPU takes this path."""
  k = kernel.shape[0]
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  h = (xp.shape[1] - k) // stride + 1
  w = (xp.shape[2] - k) // stride + 1
  y = jnp.zeros((x.shape[0], h, w, x.shape[-1]), x.dtype)
  for i in range(k):
    for j in range(k):
      y = y + xp[:, i:i + (h - 1) * stride + 1:stride, j:j + (w - 1) * stride + 1:stride] * kernel[i, j]
  return y


class ChannelRMSNorm(nnx.Module):
  """RMSNorm over the last (channel) axis with weight and bias (diffusers `RMSNorm(bias=True)`).

  y = x / sqrt(mean(x²) + eps) · scale + bias; statistics in float32. [..., C] -> [..., C].
  """

  def __init__(self, dim: int, *, eps: float = 1e-5, axes=("conv_out",), param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), axes, param_dtype)
    self.bias = param(rngs, nnx.initializers.zeros, (dim,), axes, param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    h = x.astype(jnp.float32)
    h = (h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + self.eps)).astype(dtype)
    return h * self.scale[...].astype(dtype) + self.bias[...].astype(dtype)


class GLUMBConv(nnx.Module):
  """Gated inverted-bottleneck conv (SANA's Mix-FFN, DC-AE's EfficientViT local module).

  [B, H, W, C_in] -> [B, H, W, C_out] with hidden width F:
      a = SiLU(1x1 conv C_in -> 2F);  a = depthwise 3x3 conv(a);  value, gate = split(a)
      y = 1x1 conv F -> C_out (no bias) of value · SiLU(gate);  [RMSNorm(y)];  [+ x]
  diffusers fuses value and gate into one 2F-channel conv; here each half is its own `Conv2d`
  (`inverted_value` / `inverted_gate`, `depth_value` / `depth_gate`) so that sharding F over the
  `mlp` axis keeps a value channel and its gate on the same device. The HF key map slices the fused
  tensors by rows.
  """

  def __init__(self, in_channels: int, out_channels: int, hidden: int, *, norm: bool = False,
               residual: bool = False, axes: tuple[str, str] = ("embed", "mlp"), dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    io, hid = axes
    self.hidden, self.residual = hidden, residual
    self.inverted_value = Conv2d(in_channels, hidden, 1, axes=(io, hid), **kw)
    self.inverted_gate = Conv2d(in_channels, hidden, 1, axes=(io, hid), **kw)
    self.depth_value = Conv2d(hidden, hidden, 3, groups=hidden, axes=(None, hid), **kw)
    self.depth_gate = Conv2d(hidden, hidden, 3, groups=hidden, axes=(None, hid), **kw)
    self.point = Conv2d(hidden, out_channels, 1, use_bias=False, axes=(hid, io), **kw)
    self.norm = (ChannelRMSNorm(out_channels, eps=1e-5, axes=(io,), param_dtype=param_dtype, rngs=rngs)
                 if norm else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    value = self.depth_value(jax.nn.silu(self.inverted_value(x)))
    gate = self.depth_gate(jax.nn.silu(self.inverted_gate(x)))
    y = self.point(value * jax.nn.silu(gate))
    if self.norm is not None:
      y = self.norm(y)
    return y + x if self.residual else y
