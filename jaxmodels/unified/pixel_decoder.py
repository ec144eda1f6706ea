"""Pixel decoders that turn generated image features into pixels (BLIP3-o, Pisces; spec §2.6).

BLIP3-o's DiT generates 64 EVA-CLIP features [B, 64, 1792]; an SDXL UNet + SDXL VAE fine-tuned to
reconstruct images from such features (Emu2-Gen style) renders them:

  * `encoder_hidden_states` = the feature sequence [B, N, D];
  * SDXL's added conditioning: `text_embeds` = the features' token mean [B, D], `time_ids` = original
    size (1024, 1024), crop (0, 0), target size (H, W);
  * `EulerDiscreteScheduler` (ε-prediction, SDXL's scaled-linear betas), 50 steps, classifier-free
    guidance 3.0 against the features the DiT generates for the prompt " " (`null_features`);
  * latents / scaling_factor -> the VAE decoder -> pixels in [-1, 1].

The released checkpoint ships it under `diffusion-decoder/` in diffusers' pipeline layout (`unet/`,
`vae/`, optional `scheduler/`; a missing scheduler folder means SDXL's). Pisces' decoder is the same
machinery conditioned on its own generation encoder's features.

    decoder = SDXLFeatureDecoder.from_directory("BLIP3o-Model-8B/diffusion-decoder")
    images = decoder.decode(features, null_features, rng, num_steps=50, guidance=3.0)   # [B, H, W, 3]
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.sdxl import euler_discrete
from jaxmodels.sdxl.sampling import SDXLCondition, sample_latents, sdxl_time_ids


class SDXLFeatureDecoder(nnx.Module):
  """An SDXL UNet + AutoencoderKL that render image features (module docstring). `image_size` is the
  output side (None: the UNet's `sample_size` × the VAE's downsampling, 1024 for SDXL), `scheduler` an
  EulerDiscreteConfig (None: SDXL's)."""

  def __init__(self, unet, vae, scheduler: euler_discrete.EulerDiscreteConfig | None = None, *,
               image_size: int | None = None, original_size: tuple[int, int] = (1024, 1024)):
    self.unet, self.vae = unet, vae
    self.scheduler = scheduler or euler_discrete.sdxl_euler_config()
    factor = vae.config.spatial_compression_ratio
    side = unet.config.sample_size
    image_size = image_size or (side * factor if isinstance(side, int) else 1024)
    self.image_size, self.original_size = image_size, tuple(original_size)
    if image_size % factor:
      raise CheckpointFormatError(f"pixel decoder: image_size {image_size} is not a multiple of the VAE's "
                                  f"downsampling {factor}")
    self.latent_side = image_size // factor

  @classmethod
  def from_directory(cls, path: str, *, dtype=jnp.float32, image_size: int | None = None, **kw) -> "SDXLFeatureDecoder":
    """A diffusers pipeline folder (`unet/`, `vae/`, optional `scheduler/`) -> the decoder."""
    from jaxmodels import hf
    from jaxmodels.sdxl import AutoencoderKL, UNet2DConditionModel
    for part in ("unet", "vae"):
      if not os.path.isdir(os.path.join(path, part)):
        raise CheckpointFormatError(f"{path}: no {part}/ folder (a pixel decoder is a diffusers pipeline "
                                    f"folder with unet/ and vae/)")
    unet = hf.from_pretrained(os.path.join(path, "unet"), dtype=dtype)
    vae = hf.from_pretrained(os.path.join(path, "vae"), dtype=dtype)
    if not isinstance(unet, UNet2DConditionModel) or not isinstance(vae, AutoencoderKL):
      raise CheckpointFormatError(f"{path}: unet/ and vae/ must hold a UNet2DConditionModel and an "
                                  f"AutoencoderKL (found {type(unet).__name__}, {type(vae).__name__})")
    sched = os.path.join(path, "scheduler")
    scheduler = euler_discrete.load_scheduler_config(sched) if os.path.isdir(sched) else None
    return cls(unet, vae, scheduler, image_size=image_size, **kw)

  def condition(self, features: jax.Array) -> SDXLCondition:
    """Features [B, N, D] -> the UNet's condition (sequence, token mean, SDXL time ids)."""
    b = features.shape[0]
    side = (self.image_size, self.image_size)
    return SDXLCondition(features, features.mean(axis=1),
                         sdxl_time_ids(b, self.original_size, (0, 0), side))

  def decode(self, features: jax.Array, null_features: jax.Array | None, rng: jax.Array, *,
             num_steps: int = 50, guidance: float = 3.0) -> jax.Array:
    """Features [B, N, D] (+ the null features [1 or B, N, D] for guidance) -> images [B, H, W, 3] in
    [-1, 1] (clipped)."""
    b = features.shape[0]
    c = self.unet.config
    noise = jax.random.normal(rng, (b, self.latent_side, self.latent_side, c.in_channels), jnp.float32)
    schedule = euler_discrete.euler_schedule(self.scheduler, num_steps)
    null = None if null_features is None else self.condition(null_features)
    latents = sample_latents(self.unet, noise, self.condition(features), schedule, null_cond=null,
                             guidance_scale=guidance, prediction_type=self.scheduler.prediction_type)
    return jnp.clip(self.vae.decode_latents(latents), -1.0, 1.0)
