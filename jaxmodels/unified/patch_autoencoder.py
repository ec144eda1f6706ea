"""A per-patch autoencoder: a compact generation target (encoder) with a pixel decoder.

BLIP3-o's finding is that a flow head learns faster when it generates a compact *semantic* feature
grid (CLIP features) that a separate decoder turns into pixels, than when it generates VAE latents or
pixels. At toy scale the same split is this module: each p×p image patch is encoded by a small MLP
into `latent_channels` numbers (LayerNorm'd without affine, so the target has unit scale for flow
matching), and decoded by another MLP — with a `palette`, into per-pixel class logits over the
palette's colours (the decoded image is exactly palette-coloured: no blur, no colour noise), else into
RGB. The autoencoder trains jointly with the rest of the model (`reconstruction_loss`, weight
`config.model.ae_weight`); the flow head's target is `stop_gradient(encode(image))`.

Shapes: images [B, S, S, 3] in [-1, 1]; latents [B, S/p, S/p, C]; logits [B, S, S, K].

    cfg = PatchAutoencoderConfig(image_size=32, patch_size=4, latent_channels=8, palette=(...))
    ae = PatchAutoencoder(cfg, rngs=nnx.Rngs(0))
    z = ae.encode(images); x = ae.decode(z)             # [B, 8, 8, 8] -> [B, 32, 32, 3]
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmodels.flow.embeddings import patchify, unpatchify
from jaxmodels.layers import Linear, get_activation


@dataclasses.dataclass(frozen=True)
class PatchAutoencoderConfig:
  """image_size S, patch_size p, latent_channels C, MLP hidden width; `palette` = ((r, g, b), ...)
  uint8 colours the decoder classifies pixels into (None: regress RGB)."""
  image_size: int = 32
  patch_size: int = 4
  latent_channels: int = 8
  hidden_size: int = 128
  palette: tuple | None = None
  dtype: str = "float32"
  param_dtype: str = "float32"

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def out_channels(self) -> int:
    return len(self.palette) if self.palette else 3


class PatchAutoencoder(nnx.Module):
  """See the module docstring."""

  def __init__(self, config: PatchAutoencoderConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    if c.image_size % c.patch_size:
      raise ValueError(f"autoencoder image_size={c.image_size} is not a multiple of patch_size={c.patch_size}")
    kw = dict(dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype), use_bias=True, rngs=rngs)
    p2 = c.patch_size ** 2
    self.enc_in = Linear(p2 * 3, c.hidden_size, axes=("patch", "mlp"), **kw)
    self.enc_out = Linear(c.hidden_size, c.latent_channels, axes=("mlp", None), **kw)
    self.dec_in = Linear(c.latent_channels, c.hidden_size, axes=(None, "mlp"), **kw)
    self.dec_out = Linear(c.hidden_size, p2 * c.out_channels, axes=("mlp", "patch"), **kw)

  def encode(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] in [-1, 1] -> latents [B, S/p, S/p, C], zero mean / unit RMS per patch."""
    h = get_activation("gelu")(self.enc_in(patchify(images, self.config.patch_size)))
    z = self.enc_out(h).astype(jnp.float32)
    z = z - z.mean(-1, keepdims=True)
    return z * jax.lax.rsqrt(jnp.mean(z * z, -1, keepdims=True) + 1e-6)

  def decode_logits(self, latents: jax.Array) -> jax.Array:
    """latents [B, g, g, C] -> per-pixel outputs [B, S, S, K] (palette logits, or RGB)."""
    h = get_activation("gelu")(self.dec_in(latents))
    return unpatchify(self.dec_out(h), self.config.patch_size, self.config.out_channels).astype(jnp.float32)

  def class_loss(self, latents: jax.Array, images: jax.Array, weights: jax.Array) -> jax.Array:
    """Per-pixel cross-entropy of `decode_logits(latents)` against the palette classes of `images`,
    averaged per example and weighted by `weights` [B]; no gradient reaches the decoder (it trains on
    the encoder's latents only: `reconstruction_loss`), only `latents` (e.g. a flow head's estimate)."""
    if not self.config.palette:
      raise ValueError("class_loss needs an autoencoder with a palette")
    graphdef, state = nnx.split(self)
    frozen = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    nll = optax.softmax_cross_entropy_with_integer_labels(frozen.decode_logits(latents), self.pixel_classes(images))
    return jnp.mean(weights * nll.reshape(nll.shape[0], -1).mean(1))

  def _palette(self) -> jax.Array:
    return jnp.asarray(self.config.palette, jnp.float32) / 127.5 - 1.0   # [K, 3] in [-1, 1]

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents -> images [B, S, S, 3] in [-1, 1] (each pixel exactly one palette colour)."""
    out = self.decode_logits(latents)
    if not self.config.palette:
      return jnp.clip(out, -1.0, 1.0)
    return self._palette()[jnp.argmax(out, -1)]

  def pixel_classes(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] in [-1, 1] -> index of the nearest palette colour per pixel [B, S, S]."""
    d = jnp.sum((images[..., None, :] - self._palette()) ** 2, -1)
    return jnp.argmin(d, -1)

  def reconstruction_loss(self, images: jax.Array) -> tuple[jax.Array, dict]:
    """Cross-entropy against the nearest palette colour of each pixel (MSE without a palette), and
    the fraction of pixels reconstructed exactly."""
    logits = self.decode_logits(self.encode(images))
    if not self.config.palette:
      loss = jnp.mean((logits - images) ** 2)
      return loss, {"ae_loss": loss}
    classes = self.pixel_classes(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, classes).mean()
    acc = jnp.mean((jnp.argmax(logits, -1) == classes).astype(jnp.float32))
    return loss, {"ae_loss": loss, "ae_pixel_acc": acc}
