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

BLIP3-o also released an alternative pair, SigLIP2 features -> connector -> SANA-1.6B + DC-AE
(`SanaFeatureDecoder`, HF BLIP3o/SigLIP2_SANA): an image reconstructor whose decoder renders SigLIP2
features with flow matching, loaded from the release's own directory.
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.flow import samplers
from jaxmodels.flow.guidance import cfg_velocity_fn
from jaxmodels.sdxl import euler_discrete
from jaxmodels.sdxl.sampling import SDXLCondition, sample_latents, sdxl_time_ids
from jaxmodels.vision.vit import avg_pool_tokens


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


SANA_SOLVERS = ("euler", "dpm++2m")


class SanaFeatureDecoder(nnx.Module):
  """BLIP3-o's released SigLIP2 -> SANA pair (HF BLIP3o/SigLIP2_SANA; spec §2.6, "Alternative
  encoder/decoder pair"): an image is encoded to SigLIP2-so400m-patch16-512 features and a SANA DiT
  conditioned on them redraws it through DC-AE.

    features   = the SigLIP2 tower's hidden_states[-2] (the input of its last layer, no post-norm)
                 [B, 1024, 1152] for 512² images, average-pooled on the 32×32 grid to
                 `num_pooled_tokens` (64 -> 8×8; None keeps all tokens)             [B, N, 1152]
    condition  = connector(features): Linear(1152 -> C) -> GELU(tanh) -> Linear(C -> C) -> RMSNorm(C)
                 (`CondProjection`, C = SANA's caption_channels = 2304)            [B, N, C]
    latents    = the SANA transformer's flow ODE from noise [B, s, s, 32] (s = its sample_size) with
                 classifier-free guidance against the features of a black image (`null_features`:
                 pixels all −1 after SigLIP's normalisation), scale 3.0, 30 steps
    images     = DC-AE decode(latents / scaling_factor), clipped to [-1, 1]        [B, 512, 512, 3]

  `solver`: "euler" = diffusers' FlowMatchEulerDiscreteScheduler stepped on sigmas
  linspace(1, 1/N, N) with static `shift` (the Reconstruction branch's pipeline; the scheduler is read
  from SANA's scheduler/ folder, whose `flow_shift` FlowMatchEuler ignores, so shift 1.0); "dpm++2m" =
  diffusers' DPMSolverMultistepScheduler in SANA's flow config with flow_shift `shift` (the main branch's
  siglip2_sana/reconstruct.py). Which one the released weights were meant for is UNCONFIRMED: the layout
  loader (jaxmodels/unified/released/siglip2_sana.py) picks by the saved layout; both are options.

  `encoder` (a SigLIP VisionTransformer) is optional: without it `decode` still renders given features.

    decoder = SanaFeatureDecoder.from_directory("SigLIP2_SANA")
    images = decoder.reconstruct(pixels, rng)               # pixels [B, 512, 512, 3] in [-1, 1]
    feats = decoder.encode(pixels)                          # [B, 64, 1152]
    images = decoder.decode(feats, decoder.null_features(), rng, num_steps=30, guidance=3.0)
  """

  def __init__(self, connector, transformer, vae, encoder=None, *, solver: str = "euler", shift: float = 1.0,
               num_pooled_tokens: int | None = 64, feature_layer: int = -2, latent_side: int | None = None):
    if solver not in SANA_SOLVERS:
      raise CheckpointFormatError(f"SANA pixel decoder: solver {solver!r} is not one of {SANA_SOLVERS}")
    self.connector, self.transformer, self.vae, self.encoder = connector, transformer, vae, encoder
    self.solver, self.shift = solver, float(shift)
    self.num_pooled_tokens, self.feature_layer = num_pooled_tokens, feature_layer
    self.latent_side = latent_side or transformer.config.sample_size
    self.image_size = self.latent_side * vae.config.spatial_compression_ratio

  @classmethod
  def from_directory(cls, path: str, *, dtype: str = "float32", overrides=None) -> "SanaFeatureDecoder":
    """A BLIP3o/SigLIP2_SANA directory (config.json + safetensors; see
    jaxmodels/unified/released/siglip2_sana.py for the layouts read) -> the decoder."""
    from jaxmodels.unified.released import siglip2_sana
    return siglip2_sana.load_directory(path, dtype=dtype, overrides=overrides)

  def encode(self, images: jax.Array) -> jax.Array:
    """images [B, S, S, 3] in [-1, 1] (SigLIP's processor output: resized to the tower's side, x/127.5 − 1)
    -> pooled features [B, N, D] (the module docstring)."""
    if self.encoder is None:
      raise CheckpointFormatError("SANA pixel decoder: no SigLIP2 encoder loaded (the directory holds no "
                                  "encoder.* tensors); pass features to decode() instead")
    hidden = self.encoder(images, output_hidden_states=True).hidden_states[self.feature_layer]
    if not self.num_pooled_tokens:
      return hidden
    side, pooled = math.isqrt(hidden.shape[1]), math.isqrt(self.num_pooled_tokens)
    if pooled * pooled != self.num_pooled_tokens or side % pooled:
      raise CheckpointFormatError(f"SANA pixel decoder: num_pooled_tokens={self.num_pooled_tokens} does not "
                                  f"evenly pool the {side}x{side} feature grid")
    return avg_pool_tokens(hidden, side // pooled)

  def null_features(self) -> jax.Array:
    """The guidance's unconditional features: those of a black image (pixels −1) [1, N, D]."""
    side = self.encoder.config.image_size if self.encoder is not None else None
    if side is None:
      raise CheckpointFormatError("SANA pixel decoder: no SigLIP2 encoder loaded, so the null (black "
                                  "image) features cannot be computed; pass null_features to decode()")
    return self.encode(-jnp.ones((1, side, side, 3), jnp.float32))

  def sample_latents(self, noise: jax.Array, features: jax.Array, null_features: jax.Array | None, *,
                     num_steps: int = 30, guidance: float = 3.0) -> jax.Array:
    """noise [B, s, s, C_latent] + features [B, N, D] (+ null [1 or B, N, D]) -> DC-AE-scaled latents."""
    def velocity(x, t, cond):
      return self.transformer(x, t, cond).astype(jnp.float32)

    cond = self.connector(features)
    if null_features is None:
      fn = lambda x, t: velocity(x, t, cond)      # noqa: E731
    else:
      fn = cfg_velocity_fn(velocity, cond, self.connector(null_features), guidance)
    kw = dict(sigmas=np.linspace(1.0, 1.0 / num_steps, num_steps)) if self.solver == "euler" else {}
    return samplers.sample(fn, noise, num_steps=num_steps, solver=self.solver, shift=self.shift, **kw)

  def latents_to_images(self, latents: jax.Array) -> jax.Array:
    """Scaled latents [B, s, s, C] -> images [B, s·f, s·f, 3] in [-1, 1] (clipped)."""
    images = self.vae.decode(latents / self.vae.scaling_factor).astype(jnp.float32)
    return jnp.clip(images, -1.0, 1.0)

  def decode(self, features: jax.Array, null_features: jax.Array | None, rng: jax.Array, *,
             num_steps: int = 30, guidance: float = 3.0) -> jax.Array:
    """Features [B, N, D] (+ the null features [1 or B, N, D] for guidance; None: unguided) -> images
    [B, H, W, 3] in [-1, 1]."""
    shape = (features.shape[0], self.latent_side, self.latent_side, self.vae.config.latent_channels)
    noise = jax.random.normal(rng, shape, jnp.float32)
    latents = self.sample_latents(noise, features, null_features, num_steps=num_steps, guidance=guidance)
    return self.latents_to_images(latents)

  def reconstruct(self, images: jax.Array, rng: jax.Array, *, num_steps: int = 30,
                  guidance: float = 3.0) -> jax.Array:
    """images [B, S, S, 3] in [-1, 1] -> their reconstructions [B, H, W, 3] (encode, then decode against
    the black image's features, as the release's inference does)."""
    null = self.null_features() if guidance != 1.0 else None
    return self.decode(self.encode(images), null, rng, num_steps=num_steps, guidance=guidance)
