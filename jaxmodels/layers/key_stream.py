"""A source of parameter-initialisation keys for models with very many parameters.

`param(rngs, ...)` draws one key per parameter through `rngs.params()`. With an `nnx.Rngs` that bumps
a counter stored in an `nnx.Variable`; when the model is built under a trace (`nnx.eval_shape`, as
`jaxmodels.hf.from_pretrained` and the key maps build models abstractly), each such update makes NNX
look up the traced counter's sharding, and JAX answers that by scanning the whole trace so far: the
build becomes quadratic in the parameter count (noticeable for the ~1,700 tensors of an unscanned
SDXL UNet). `KeyStream` has the same `params()` interface with a plain Python counter, so drawing a
key adds one `fold_in` to the trace and nothing more.
"""
from __future__ import annotations

import jax
from flax import nnx


class KeyStream:
  """key_i = fold_in(base, i) for i = 0, 1, ...; `params()` returns the next key.

  Built from an `nnx.Rngs` (one key drawn from its `params` stream) or a key. Pass it wherever a
  layer takes `rngs` and only forwards it to `param`; `rngs()` makes a real `nnx.Rngs` (from the next
  key) for code that needs one, e.g. a scanned `BlockStack`, which splits it with `nnx.split_rngs`.
  """

  def __init__(self, rngs: nnx.Rngs | jax.Array):
    self._base = rngs.params() if isinstance(rngs, nnx.Rngs) else rngs
    self._count = 0

  def params(self) -> jax.Array:
    key = jax.random.fold_in(self._base, self._count)
    self._count += 1
    return key

  def rngs(self) -> nnx.Rngs:
    return nnx.Rngs(params=self.params())
