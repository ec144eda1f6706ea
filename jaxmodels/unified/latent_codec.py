"""In-model latent codec for gen_target="latents": a frozen DC-AE, and BLIP3o-NEXT's editing injection.

Latents (spec §3.2, §4.2; diffusers' SANA pipeline):

    images [B, H, W, 3] in [-1, 1] -> resize to s·f (f = DC-AE compression, s = latent_size)
      -> z₀ = (vae.encode(images) − vae_shift) · scaling_factor          [B, s, s, C]   (`encode`)
    sampled z₀ -> vae.decode(z₀ / scaling_factor + vae_shift) -> clip [-1, 1]    [B, s·f, s·f, 3]
                                                                                  (`decode`)

SANA's DC-AE has no shift factor (vae_shift 0) and scaling_factor 0.41407 (f32c32). The DC-AE is frozen:
`encode` stops gradients, and configs list "vae/.*" in optim.frozen so it holds no optimizer state. Its
weights load with `config.init.hf.vae = <diffusers AutoencoderDC dir>` (e.g. a SANA pipeline's `vae/`).

Editing (BLIP3o-NEXT, spec §3.6): the reference image enters twice — its discrete tokens replace the
prompt's `image_token_id` placeholders (UnifiedModel), and its scaled DC-AE latents r [B, s, s, C] reach
the flow head through `EditLatents` (config edit_latents). The spec leaves the equations UNCONFIRMED;
chosen here:
  "cond"   token concatenation: r's s² latent tokens -> Linear(C -> D_llm) -> the same connector as the
           image-token states -> appended after them, so the condition is [B, 1 + n + s², C_cond]
           (the connector's RMSNorm(√5.5) puts them on the scale SANA's caption path expects);
  "noise"  noise-space injection: the DiT reads x_σ + P·r (P a zero-initialised 1×1 projection C -> C,
           so a pretrained DiT starts unchanged; the velocity target is still the one of x_σ);
  "cond_noise" both (the released checkpoint's recipe name: "vae_as_noise_injection_and_cross_attn").
Both parts are trainable (not under "dit/", so a frozen SANA leaves them free).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.flow.dcae import AutoencoderDC
from jaxmodels.layers import Linear
from jaxmodels.unified.config import UnifiedConfig


class EditLatents(nnx.Module):
  """Reference-latent injection for editing (see the module docstring): `cond_tokens` and `inject`."""

  def __init__(self, channels: int, width: int, mode: str, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.cond_proj = (Linear(channels, width, axes=(None, "embed"), use_bias=True, **kw)
                      if mode in ("cond", "cond_noise") else None)
    self.noise_proj = (Linear(channels, channels, axes=(None, None), use_bias=False,
                              kernel_init=nnx.initializers.zeros, **kw)
                       if mode in ("noise", "cond_noise") else None)

  def cond_tokens(self, ref: jax.Array) -> jax.Array | None:
    """ref [B, s, s, C] -> LLM-width tokens [B, s², D] (before the connector), or None without "cond"."""
    if self.cond_proj is None:
      return None
    return self.cond_proj(ref.reshape(ref.shape[0], -1, ref.shape[-1]))

  def inject(self, x: jax.Array, ref: jax.Array | None) -> jax.Array:
    """Noisy latents x [B, s, s, C] with P·ref added ("noise"); unchanged otherwise."""
    if self.noise_proj is None or ref is None:
      return x
    return x + self.noise_proj(ref.astype(x.dtype)).astype(x.dtype)


def build(c: UnifiedConfig, *, rngs: nnx.Rngs) -> tuple[AutoencoderDC | None, EditLatents | None]:
  """(vae, edit_latents) of a config: the frozen DC-AE (or None) and the editing injection (or None)."""
  vae = AutoencoderDC(c.vae, rngs=rngs) if c.vae is not None else None
  edit = None
  if c.edit_latents != "none":
    edit = EditLatents(c.latent_channels, c.llm.hidden_size, c.edit_latents, dtype=jnp.dtype(c.llm.dtype),
                       param_dtype=jnp.dtype(c.llm.param_dtype), rngs=rngs)
  return vae, edit


def encode(vae: AutoencoderDC, images: jax.Array, c: UnifiedConfig) -> jax.Array:
  """images [B, H, W, 3] in [-1, 1] -> diffusion-space latents [B, s, s, C] float32 (no gradient)."""
  side = c.output_image_size
  if images.shape[1:3] != (side, side):
    images = jax.image.resize(images, (images.shape[0], side, side, images.shape[-1]), "linear")
  z = vae.encode(images).astype(jnp.float32)
  return jax.lax.stop_gradient((z - c.vae_shift) * vae.scaling_factor)


def decode(vae: AutoencoderDC, latents: jax.Array, c: UnifiedConfig) -> jax.Array:
  """Diffusion-space latents [B, s, s, C] -> images [B, s·f, s·f, 3] float32 in [-1, 1]."""
  images = vae.decode(latents / vae.scaling_factor + c.vae_shift).astype(jnp.float32)
  return jnp.clip(images, -1.0, 1.0)
