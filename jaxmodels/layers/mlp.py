"""Feed-forward blocks: gated (SwiGLU-style, Llama/Qwen/Phi) and plain two-layer (ViT)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.layers.activations import get_activation
from jaxmodels.layers.linear import Linear, concat_linears


class GatedMLP(nnx.Module):
  """down(act(gate(x)) · up(x)): [..., D] -> [..., D] with hidden width F (`mlp` axis)."""

  def __init__(self, dim: int, hidden: int, *, activation: str = "silu", use_bias: bool = False,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.up = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.down = Linear(hidden, dim, axes=("mlp", "embed"), **kw)
    self.act = get_activation(activation)
    self.gate_up = None          # set by fuse_gate_up() (decoding)

  def fuse_gate_up(self) -> None:
    """Adds `gate_up`, the gate and up projections as one [D, 2F] matmul, used from then on (in
    place; outputs unchanged). For decoding: per token, one kernel instead of two."""
    if self.gate_up is None:
      self.gate_up = nnx.data(concat_linears([self.gate, self.up], axis=0, axes=("embed", "mlp")))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.gate_up is not None:
      g, u = jnp.split(self.gate_up(x), 2, axis=-1)
      h = self.act(g) * u
    else:
      h = self.act(self.gate(x)) * self.up(x)
    h = sharding.constrain(h, ("act_batch", "act_length", "act_mlp"))
    return self.down(h)


class MLP(nnx.Module):
  """fc2(act(fc1(x))): [..., D] -> [..., D_out] with hidden width F."""

  def __init__(self, dim: int, hidden: int, *, out_dim: int | None = None, activation: str = "gelu",
               use_bias: bool = True, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs | None = None):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.fc2 = Linear(hidden, out_dim or dim, axes=("mlp", "embed"), **kw)
    self.act = get_activation(activation)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.act(self.fc1(x))
    h = sharding.constrain(h, ("act_batch", "act_length", "act_mlp"))
    return self.fc2(h)
