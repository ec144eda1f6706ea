"""Rectified-flow (flow-matching) core: schedules, samplers, guidance, loss.

Conventions, shared with diffusers (SD3/SANA) and the BLIP3-o, MetaQuery and
BLIP3o-NEXT code:

* σ ∈ [0, 1] is the noise level: x_σ = (1 − σ)·x₀ + σ·ε with ε ~ N(0, I);
  σ = 1 is pure noise, σ = 0 is data.
* Networks predict the velocity v ≈ ε − x₀ = dx_σ/dσ; samplers integrate from
  σ ≈ 1 down to 0, and the clean-data estimate is x̂₀ = x_σ − σ·v.
* The timestep fed to networks is t = 1000·σ (float, ~1..1000); the DPM
  sampler alone feeds ⌊1000·σ⌋, as diffusers does.
* The "t = data level" convention of Lumina and classic CFM papers uses
  t = 1 − σ and the opposite velocity sign.

No neural networks live here; every function is pure JAX (plus host-side
NumPy for static grids).
"""

from jaxmodels.flow.guidance import cfg_velocity
from jaxmodels.flow.guidance import cfg_velocity_fn
from jaxmodels.flow.guidance import drop_condition
from jaxmodels.flow.guidance import image_text_guidance
from jaxmodels.flow.loss import flow_matching_loss
from jaxmodels.flow.loss import noisy_input
from jaxmodels.flow.loss import sd3_loss_weights
from jaxmodels.flow.loss import velocity_target
from jaxmodels.flow.samplers import dpm_sigmas
from jaxmodels.flow.samplers import dpm_timesteps
from jaxmodels.flow.samplers import sample
from jaxmodels.flow.schedules import NUM_TRAIN_TIMESTEPS
from jaxmodels.flow.schedules import inference_sigmas
from jaxmodels.flow.schedules import resolution_mu
from jaxmodels.flow.schedules import sample_training_sigmas
from jaxmodels.flow.schedules import shift_sigmas
from jaxmodels.flow.schedules import time_shift
from jaxmodels.flow.schedules import training_sigma_grid

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "cfg_velocity",
    "cfg_velocity_fn",
    "dpm_sigmas",
    "dpm_timesteps",
    "drop_condition",
    "flow_matching_loss",
    "image_text_guidance",
    "inference_sigmas",
    "noisy_input",
    "resolution_mu",
    "sample",
    "sample_training_sigmas",
    "sd3_loss_weights",
    "shift_sigmas",
    "time_shift",
    "training_sigma_grid",
    "velocity_target",
]
