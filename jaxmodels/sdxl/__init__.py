"""SDXL's pixel-space machinery: the conditional UNet, the KL autoencoder and the Euler scheduler.

BLIP3-o's and Pisces' pixel decoders are an SDXL `UNet2DConditionModel` + SDXL `AutoencoderKL`
sampled with `EulerDiscreteScheduler` (diffusers); these modules load those checkpoints through
`jaxmodels.hf.from_pretrained` (families in jaxmodels/hf/sdxl_family.py, sdxl_vae_family.py).
"""
from jaxmodels.sdxl.euler_discrete import EulerDiscreteConfig, euler_schedule, load_scheduler_config, \
    sdxl_euler_config
from jaxmodels.sdxl.sampling import SDXLCondition, sample_latents, sdxl_time_ids
from jaxmodels.sdxl.unet import UNet2DConditionModel, UNetConfig, sdxl_unet_config
from jaxmodels.sdxl.vae import AutoencoderKL, AutoencoderKLConfig, sdxl_vae_config

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "EulerDiscreteConfig", "SDXLCondition",
           "UNet2DConditionModel", "UNetConfig", "euler_schedule", "load_scheduler_config",
           "sample_latents", "sdxl_euler_config", "sdxl_time_ids", "sdxl_unet_config", "sdxl_vae_config"]
