"""diffusers' `EulerDiscreteScheduler` (SD / SDXL sampling) as stateless functions.

The scheduler's tables are computed once on the host (`euler_schedule`); a whole trajectory is one
`jax.lax.scan` (`sample`), so the model is traced once however many steps are taken.

Noise convention (variance exploding, unlike jaxmodels.flow's rectified flow): x_σ = x₀ + σ·ε with
σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) from the DDPM betas. The network sees x_σ / sqrt(σ² + 1)
(`scale_model_input`, the DDPM-scaled sample) and the integer-grid timestep t; an ε prediction gives
x̂₀ = x − σ·ε and the Euler step x ← x + (x − x̂₀)/σ · (σ_next − σ). Sampling starts from
ε·init_noise_sigma and ends at the final σ = 0.

SDXL's scheduler_config.json: beta_schedule "scaled_linear" (betas = linspace(√0.00085, √0.012,
1000)²), timestep_spacing "leading" with steps_offset 1, ε-prediction.

    schedule = euler_schedule(sdxl_euler_config(), num_steps=50)
    eps_fn = flow.cfg_velocity_fn(conditional_eps_fn, cond, null_cond, 5.0)   # CFG works on ε too
    latents = sample(eps_fn, jax.random.normal(key, (B, 128, 128, 4)), schedule)

Not implemented (rejected by name): Karras / exponential / beta sigma spacings, "log_linear"
interpolation, stochastic churn (s_churn > 0), custom timesteps or sigmas.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.errors import CheckpointFormatError, ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "original_sample")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
_UNSUPPORTED = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "interpolation_type": "linear"}

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class EulerDiscreteConfig:
  """`EulerDiscreteScheduler` options: diffusers names and defaults (diffusers 0.42).

  `sigma_min` / `sigma_max` only matter to the unsupported Karras-style spacings; they are kept so
  a config round-trips. See `sdxl_euler_config()` for SDXL's values.
  """
  num_train_timesteps: int = 1000
  beta_start: float = 0.0001
  beta_end: float = 0.02
  beta_schedule: str = "linear"
  trained_betas: tuple | None = None
  prediction_type: str = "epsilon"
  interpolation_type: str = "linear"
  use_karras_sigmas: bool = False
  use_exponential_sigmas: bool = False
  use_beta_sigmas: bool = False
  sigma_min: float | None = None
  sigma_max: float | None = None
  timestep_spacing: str = "linspace"
  timestep_type: str = "discrete"
  steps_offset: int = 0
  rescale_betas_zero_snr: bool = False
  final_sigmas_type: str = "zero"

  def __post_init__(self):
    if isinstance(self.trained_betas, list):
      object.__setattr__(self, "trained_betas", tuple(self.trained_betas))
    for name, allowed in (("beta_schedule", BETA_SCHEDULES), ("prediction_type", PREDICTION_TYPES),
                          ("timestep_spacing", TIMESTEP_SPACINGS),
                          ("final_sigmas_type", FINAL_SIGMAS_TYPES),
                          ("timestep_type", ("discrete", "continuous"))):
      if getattr(self, name) not in allowed:
        raise ConfigError(f"EulerDiscreteConfig.{name}={getattr(self, name)!r} is not supported "
                          f"({', '.join(allowed)})")
    for name, allowed in _UNSUPPORTED.items():
      if getattr(self, name) not in (allowed, None):
        raise ConfigError(f"EulerDiscreteConfig.{name}={getattr(self, name)!r} is not supported "
                          f"(only {allowed!r})")

  @classmethod
  def from_diffusers(cls, d: dict[str, Any]) -> "EulerDiscreteConfig":
    """From a diffusers scheduler_config.json dict. Keys that are not EulerDiscreteScheduler
    options (e.g. DDIM's `clip_sample`, which SDXL's file carries) are ignored, as diffusers does."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  def to_diffusers(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    if d["trained_betas"] is not None:
      d["trained_betas"] = list(d["trained_betas"])
    return dict(_class_name="EulerDiscreteScheduler", **d)


def sdxl_euler_config(**overrides) -> EulerDiscreteConfig:
  """SDXL base 1.0's `scheduler/scheduler_config.json` (EulerDiscreteScheduler)."""
  return dataclasses.replace(EulerDiscreteConfig(
      beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
      steps_offset=1), **overrides)


def load_scheduler_config(path: str) -> EulerDiscreteConfig:
  """`EulerDiscreteConfig` from a diffusers `scheduler/` directory (its scheduler_config.json) or
  the file itself; errors name the file."""
  file = path if path.endswith(".json") else os.path.join(path, "scheduler_config.json")
  try:
    with open(file, encoding="utf-8") as f:
      d = json.load(f)
  except FileNotFoundError:
    raise CheckpointFormatError(f"{file}: missing (a diffusers scheduler needs scheduler_config.json)"
                                ) from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointFormatError(f"{file}: unreadable ({e})") from None
  if not isinstance(d, dict):
    raise CheckpointFormatError(f"{file}: expected a JSON object, got {type(d).__name__}")
  try:
    return EulerDiscreteConfig.from_diffusers(d)
  except ConfigError as e:
    raise ConfigError(f"{file}: {e}") from None


# ----------------------------------------------------------------------------------------------
# Tables (host NumPy; float32 like diffusers' torch tensors).
# ----------------------------------------------------------------------------------------------

def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
  def alpha_bar(t):
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                  np.float32)


def _zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Lin et al. 2023, Algorithm 1: shift and scale √ᾱ so that √ᾱ_T = 0, keeping √ᾱ_0."""
  root = np.sqrt(np.cumprod(1.0 - betas, dtype=np.float32))
  first, last = root[0].copy(), root[-1].copy()
  root = (root - last) * (first / (first - last))
  bar = root ** 2
  alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
  return (1 - alphas).astype(np.float32)


def alphas_cumprod(config: EulerDiscreteConfig) -> np.ndarray:
  """ᾱ_t for t = 0..T−1, [T] float32 (the DDPM training schedule)."""
  c, n = config, config.num_train_timesteps
  if c.trained_betas is not None:
    betas = np.asarray(c.trained_betas, np.float32)
  elif c.beta_schedule == "linear":
    betas = np.linspace(c.beta_start, c.beta_end, n, dtype=np.float32)
  elif c.beta_schedule == "scaled_linear":
    betas = np.linspace(c.beta_start ** 0.5, c.beta_end ** 0.5, n, dtype=np.float32) ** 2
  else:
    betas = _cosine_betas(n)
  if c.rescale_betas_zero_snr:
    betas = _zero_terminal_snr(betas)
  cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
  if c.rescale_betas_zero_snr:
    cumprod[-1] = 2.0 ** -24          # diffusers' stand-in for ᾱ_T = 0 (σ_T finite)
  return cumprod


class EulerSchedule(NamedTuple):
  """One sampling run's tables: network timesteps [N], noise levels σ [N + 1] (decreasing, last the
  final σ) and the initial-noise scale (σ_max, or sqrt(σ_max² + 1) for "leading" spacing)."""
  timesteps: jax.Array
  sigmas: jax.Array
  init_noise_sigma: float


def inference_timesteps(config: EulerDiscreteConfig, num_steps: int) -> np.ndarray:
  """The [N] float32 timesteps of `set_timesteps(num_steps)` for the configured spacing."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
  n = config.num_train_timesteps
  if config.timestep_spacing == "linspace":
    return np.linspace(0, n - 1, num_steps, dtype=np.float32)[::-1].copy()
  if config.timestep_spacing == "leading":
    ratio = n // num_steps
    return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.float32) + config.steps_offset
  ratio = n / num_steps
  return np.arange(n, 0, -ratio).round().astype(np.float32) - 1


def euler_schedule(config: EulerDiscreteConfig, num_steps: int) -> EulerSchedule:
  """Timesteps, σ grid and init_noise_sigma of diffusers' `set_timesteps(num_steps)`.

  σ_k = σ(t_k) by linear interpolation of the training σ table at the (possibly fractional) t_k;
  the appended final σ is 0 ("zero") or the training σ_0 ("sigma_min").
  """
  timesteps = inference_timesteps(config, num_steps)
  train = np.sqrt((1 - alphas_cumprod(config)) / alphas_cumprod(config))
  sigmas = np.interp(timesteps, np.arange(len(train)), train)
  last = train[0] if config.final_sigmas_type == "sigma_min" else 0.0
  sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
  sigma_max = float(sigmas.max())
  init = sigma_max if config.timestep_spacing in ("linspace", "trailing") else (sigma_max ** 2 + 1) ** 0.5
  if config.timestep_type == "continuous" and config.prediction_type == "v_prediction":
    timesteps = (0.25 * np.log(sigmas[:-1])).astype(np.float32)
  return EulerSchedule(jnp.asarray(timesteps), jnp.asarray(sigmas), float(np.float32(init)))


# ----------------------------------------------------------------------------------------------
# Steps and the sampling loop.
# ----------------------------------------------------------------------------------------------

def scale_model_input(sample: jax.Array, sigma: jax.Array | float) -> jax.Array:
  """The network input x / sqrt(σ² + 1) (float32 arithmetic, sample's dtype)."""
  x = sample.astype(jnp.float32) / jnp.sqrt(jnp.asarray(sigma, jnp.float32) ** 2 + 1)
  return x.astype(sample.dtype)


def predict_original(model_output: jax.Array, sample: jax.Array, sigma: jax.Array,
                     prediction_type: str = "epsilon") -> jax.Array:
  """x̂₀ from the network output at noise level σ (float32)."""
  out, x = model_output.astype(jnp.float32), sample.astype(jnp.float32)
  if prediction_type == "epsilon":
    return x - sigma * out
  if prediction_type == "v_prediction":
    return out * (-sigma / jnp.sqrt(sigma ** 2 + 1)) + x / (sigma ** 2 + 1)
  if prediction_type in ("sample", "original_sample"):
    return out
  raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def step(model_output: jax.Array, sample: jax.Array, sigma: jax.Array, sigma_next: jax.Array,
         prediction_type: str = "epsilon") -> tuple[jax.Array, jax.Array]:
  """One Euler step σ -> σ_next (no churn): returns (x_next in sample's dtype, x̂₀ float32)."""
  x = sample.astype(jnp.float32)
  x0 = predict_original(model_output, x, sigma, prediction_type)
  derivative = (x - x0) / sigma
  return (x + derivative * (sigma_next - sigma)).astype(sample.dtype), x0


def sample(model_fn: ModelFn, noise: jax.Array, schedule: EulerSchedule, *,
           prediction_type: str = "epsilon", return_trajectory: bool = False
           ) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Runs the whole Euler trajectory as one `lax.scan`.

  Args:
    model_fn: (scaled x [B, ...], t [B] float32) -> network output with x's shape (ε for SDXL);
      wrap a conditional model with `jaxmodels.flow.cfg_velocity_fn` for classifier-free guidance.
    noise: [B, ...] standard normal noise; the start is noise · init_noise_sigma.
    schedule: from `euler_schedule` (a pytree: it may be a traced argument).
    prediction_type: what model_fn predicts (the scheduler config's `prediction_type`).
    return_trajectory: also return the latents after every step.

  Returns:
    Latents [B, ...] at the final σ, or (latents, trajectory [N + 1, B, ...]) whose entry 0 is the
    scaled noise and entry k the latents after k steps.
  """
  if noise.ndim < 1:
    raise ValueError(f"noise must have a leading batch dimension, got shape {noise.shape}")
  x_init = (noise.astype(jnp.float32) * schedule.init_noise_sigma).astype(noise.dtype)

  def body(x, xs):
    t, sigma, sigma_next = xs
    out = model_fn(scale_model_input(x, sigma), jnp.broadcast_to(t, (x.shape[0],)))
    x_next, _ = step(out, x, sigma, sigma_next, prediction_type)
    return x_next, x_next

  sigmas = schedule.sigmas
  x, trajectory = jax.lax.scan(body, x_init, (schedule.timesteps, sigmas[:-1], sigmas[1:]))
  if not return_trajectory:
    return x
  return x, jnp.concatenate([x_init[None], trajectory], axis=0)
