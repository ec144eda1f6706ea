"""SDXL's pixel-space machinery: the conditional UNet, the KL autoencoder and the Euler scheduler.

BLIP3-o's and Pisces' pixel decoders are an SDXL `UNet2DConditionModel` + SDXL `AutoencoderKL`
sampled with `EulerDiscreteScheduler` (diffusers); these modules load those checkpoints through
`jaxmodels.hf.from_pretrained` (families in jaxmodels/hf/sdxl_family.py, sdxl_vae_family.py).
"""
from jaxmodels.sdxl.unet import UNet2DConditionModel, UNetConfig, sdxl_unet_config
from jaxmodels.sdxl.vae import AutoencoderKL, AutoencoderKLConfig, sdxl_vae_config

__all__ = ["AutoencoderKL", "AutoencoderKLConfig", "UNet2DConditionModel", "UNetConfig",
           "sdxl_unet_config", "sdxl_vae_config"]
