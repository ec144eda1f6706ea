"""Discrete image tokenizer interface (BLIP3o-NEXT, spec §3.1) and a TA-Tok-style SimVQ tokenizer.

Any module with this interface plugs into `UnifiedModel` (config `image_tokenizer`):

    tok.grid_size(scale) -> int          tokens per side at a pool scale (scale 1: 27 for 384/14)
    tok.encode(images, scale=1) -> codes [B, grid², int32]     images [B, H, W, 3] in [-1, 1]
    tok.codebook_size -> int

`SimVQTokenizer` (TA-Tok, `tok/ta_tok.py`, `tok/ar_dtok/bottleneck.py`):
    z = hidden_states[−2] of a SigLIP2-style encoder                 [B, g², D]
    z = tanh(Linear(z))                          ("encode_task_layer")
    z = a×a average pool for scale a > 1 (the 13×13 / 9×9 grids; floor-pooled here)
    z = Linear_bottleneck(z)                                          [B, n, d_code]
    C = Linear_simvq(codebook)                                        [K, d_code]  (SimVQ; TA-Tok's
                                                                                    has a bias: proj_bias)
    code = argmin_k ‖ẑ − Ĉ_k‖   with ẑ, Ĉ L2-normalised when `l2_norm` (then = argmax cosine)
The tokenizer is frozen in BLIP3o-NEXT; `encode` stops gradients. A real TA-Tok checkpoint maps onto
these parameters (encoder, encode_task_layer, bottleneck, codebook, codebook_proj).
UNCONFIRMED (spec): the code dimension — a config field (`code_dim`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.layers import Linear, param
from jaxmodels.vision.vit import VisionConfig, VisionTransformer


def _pool_floor(tokens: jax.Array, scale: int) -> jax.Array:
  """[B, g², D] -> [B, ⌊g/scale⌋², D] average pooling (the trailing rows/columns are dropped)."""
  if scale == 1:
    return tokens
  b, n, d = tokens.shape
  g = int(round(n ** 0.5))
  m = g // scale
  x = tokens.reshape(b, g, g, d)[:, :m * scale, :m * scale]
  return x.reshape(b, m, scale, m, scale, d).mean(axis=(2, 4)).reshape(b, m * m, d)


class SimVQTokenizer(nnx.Module):
  """Vision encoder + SimVQ quantiser (see the module docstring)."""

  def __init__(self, encoder: VisionConfig, codebook_size: int, code_dim: int, *, l2_norm: bool = True,
               proj_bias: bool = False, rngs: nnx.Rngs):
    self.codebook_size, self.l2_norm = codebook_size, l2_norm
    self.encoder = VisionTransformer(encoder, rngs=rngs)
    d = encoder.hidden_size
    self.encode_task_layer = Linear(d, d, axes=("embed", "mlp"), use_bias=True, rngs=rngs)
    self.bottleneck = Linear(d, code_dim, axes=("mlp", None), use_bias=True, rngs=rngs)
    self.codebook = param(rngs, nnx.initializers.normal(code_dim ** -0.5), (codebook_size, code_dim),
                          ("vocab", None), jnp.float32)
    self.codebook_proj = Linear(code_dim, code_dim, axes=(None, None), use_bias=proj_bias, rngs=rngs)

  def grid_size(self, scale: int = 1) -> int:
    return self.encoder.config.grid_size // scale

  def features(self, images: jax.Array, scale: int = 1) -> jax.Array:
    """Pre-quantisation codes' features [B, n, code_dim]."""
    hidden = self.encoder(images, output_hidden_states=True).hidden_states[-2]
    if self.encoder.config.is_clip:
      hidden = hidden[:, 1:]
    z = jnp.tanh(self.encode_task_layer(hidden))
    return self.bottleneck(_pool_floor(z, scale))

  def encode(self, images: jax.Array, scale: int = 1) -> jax.Array:
    z = self.features(images, scale).astype(jnp.float32)
    cb = self.codebook_proj(self.codebook[...]).astype(jnp.float32)
    if self.l2_norm:
      z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
      cb = cb / jnp.maximum(jnp.linalg.norm(cb, axis=-1, keepdims=True), 1e-12)
    dist = (jnp.sum(z * z, -1, keepdims=True) - 2 * jnp.einsum("bnd,kd->bnk", z, cb)
            + jnp.sum(cb * cb, -1)[None, None])
    return jax.lax.stop_gradient(jnp.argmin(dist, axis=-1).astype(jnp.int32))
