"""Sampling SDXL latents: the UNet as an ε function of (x, t, condition), classifier-free guidance
and the Euler scheduler, as diffusers' `StableDiffusionXLPipeline` runs them.

    cond = SDXLCondition(context, pooled, sdxl_time_ids(B, target_size=(H, W)))
    schedule = euler_schedule(sdxl_euler_config(), 50)
    latents = sample_latents(unet, noise, cond, schedule, null_cond=null, guidance_scale=5.0)
    images = vae.decode_latents(latents)

Guidance follows the pipeline: it applies when guidance_scale > 1, with the null rows first in one
doubled batch (`jaxmodels.flow.cfg_velocity_fn`, which works on ε as on velocities).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxmodels.flow.guidance import cfg_velocity_fn
from jaxmodels.sdxl import euler_discrete
from jaxmodels.sdxl.unet import UNet2DConditionModel


class SDXLCondition(NamedTuple):
  """The UNet's conditioning: context [B, S, D_cross] (`encoder_hidden_states`), text_embeds [B, P]
  and time_ids [B, 6] (the last two only for addition_embed_type="text_time"; else None)."""
  context: jax.Array
  text_embeds: jax.Array | None = None
  time_ids: jax.Array | None = None


def sdxl_time_ids(batch: int, original_size: tuple[int, int] = (1024, 1024),
                  crop_top_left: tuple[int, int] = (0, 0),
                  target_size: tuple[int, int] = (1024, 1024)) -> jax.Array:
  """SDXL's micro-conditioning ids original (h, w) ‖ crop (top, left) ‖ target (h, w): [B, 6] float32."""
  ids = jnp.asarray((*original_size, *crop_top_left, *target_size), jnp.float32)
  return jnp.broadcast_to(ids, (batch, 6))


def unet_model_fn(unet: UNet2DConditionModel):
  """(x [B, h, w, C], t [B], cond: SDXLCondition) -> the UNet's output [B, h, w, C]."""
  def model_fn(x: jax.Array, t: jax.Array, cond: SDXLCondition) -> jax.Array:
    return unet(x, t, cond.context, text_embeds=cond.text_embeds, time_ids=cond.time_ids)
  return model_fn


def sample_latents(unet: UNet2DConditionModel, noise: jax.Array, cond: SDXLCondition,
                   schedule: euler_discrete.EulerSchedule, *, null_cond: SDXLCondition | None = None,
                   guidance_scale: float | jax.Array = 1.0, prediction_type: str = "epsilon"
                   ) -> jax.Array:
  """Euler-samples latents [B, h, w, C] from standard normal `noise` of that shape.

  With a Python `guidance_scale` > 1 (or any traced one), `null_cond` (leaves broadcastable to
  cond's, e.g. the features of an empty prompt with batch 1) is the unconditional branch.
  """
  model_fn = unet_model_fn(unet)
  guided = not isinstance(guidance_scale, (int, float)) or guidance_scale > 1
  if guided:
    if null_cond is None:
      raise ValueError("classifier-free guidance (guidance_scale > 1) needs null_cond")
    fn = cfg_velocity_fn(model_fn, cond, null_cond, guidance_scale)
  else:
    def fn(x, t):
      return model_fn(x, t, cond)
  return euler_discrete.sample(fn, noise, schedule, prediction_type=prediction_type)
