"""Noise-level (σ) schedules for rectified-flow training and sampling.

Convention (see `jaxmodels.flow`): x_σ = (1 − σ)·x₀ + σ·ε, σ = 1 is pure
noise, σ = 0 is data, and networks receive the timestep t = 1000·σ.

Inference grids reproduce diffusers' `FlowMatchEulerDiscreteScheduler`
(`set_timesteps`) with its default `num_train_timesteps=1000`; the training
sampler reproduces the discretised-σ recipe of diffusers' SD3 training
scripts, which BLIP3-o, MetaQuery and BLIP3o-NEXT use verbatim.

Grids whose length is a Python int are built on the host in float64 and
returned as float32 `jax.Array`s. The shift formulas are written with plain
arithmetic so they accept Python floats, NumPy arrays and (traced) JAX arrays.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
"""Length of the training grid and the factor between σ and the timestep t."""

ArrayLike = float | np.ndarray | jax.Array
TrainingSigmaKind = Literal["uniform", "logit_normal", "mode"]


def _is_concrete_number(value: object) -> bool:
  return isinstance(value, (int, float, np.number))


def shift_sigmas(sigmas: ArrayLike, shift: float | jax.Array) -> ArrayLike:
  """Static timestep shift σ' = s·σ / (1 + (s − 1)·σ) (SD3; s = 1 is identity).

  s > 1 moves every σ towards 1, so a sampler spends more steps at high noise.

  Args:
    sigmas: noise levels in [0, 1], any shape.
    shift: the shift factor s > 0.

  Returns:
    Shifted noise levels, same shape and array type as `sigmas`.
  """
  if _is_concrete_number(shift) and shift <= 0:
    raise ValueError(f"shift must be positive, got {shift}")
  return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(mu: float | jax.Array, sigmas: ArrayLike, exponent: float = 1.0) -> ArrayLike:
  """Resolution-dependent ("Flux") shift σ' = e^μ / (e^μ + (1/σ − 1)^exponent).

  This is diffusers' exponential `time_shift` used when
  `use_dynamic_shifting=True`. With exponent 1 it equals `shift_sigmas` with
  s = e^μ. σ = 0 maps to 0 and σ = 1 maps to 1.

  Args:
    mu: log of the effective shift, usually from `resolution_mu`.
    sigmas: noise levels in (0, 1], any shape.
    exponent: the power on (1/σ − 1); diffusers always passes 1.

  Returns:
    Shifted noise levels, same shape as `sigmas`.
  """
  exp_mu = math.exp(mu) if _is_concrete_number(mu) else jnp.exp(mu)
  return exp_mu / (exp_mu + (1 / sigmas - 1) ** exponent)


def resolution_mu(
    image_seq_len: int | float,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
  """μ for `time_shift`, linear in the number of latent tokens.

  The line passes through (base_seq_len, base_shift) and
  (max_seq_len, max_shift), as diffusers pipelines' `calculate_shift` does;
  it is not clamped outside that range.

  Args:
    image_seq_len: number of image tokens (latent patches) being generated.
    base_seq_len: sequence length that gets `base_shift`.
    max_seq_len: sequence length that gets `max_shift`.
    base_shift: μ at `base_seq_len`.
    max_shift: μ at `max_seq_len`.

  Returns:
    μ as a float.
  """
  if max_seq_len == base_seq_len:
    raise ValueError(f"max_seq_len must differ from base_seq_len, both are {base_seq_len}")
  slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
  return base_shift + slope * (image_seq_len - base_seq_len)


def _check_num_steps(num_steps: object) -> int:
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
  return int(num_steps)


def inference_sigmas(
    num_steps: int,
    shift: float = 1.0,
    mu: float | jax.Array | None = None,
    sigmas: ArrayLike | list[float] | None = None,
) -> jax.Array:
  """Euler sampling grid, equal to diffusers' FlowMatchEuler `scheduler.sigmas`.

  Semantics of `FlowMatchEulerDiscreteScheduler(shift=shift,
  use_dynamic_shifting=mu is not None).set_timesteps(num_steps, sigmas=sigmas,
  mu=mu)`:

  * Default grid: linspace(σ_max, σ_min, num_steps), where σ_max = 1 and
    σ_min is the smallest training σ = 1/1000 *already shifted* by the
    constructor (static shift only). The shift is then applied again to the
    whole grid, so with shift s the last σ is shift(shift(0.001)).
  * Custom `sigmas` (e.g. linspace(1, 1/N, N) as BLIP3-o/MetaQuery pass) are
    shifted too.
  * With `mu`, the static shift is replaced by `time_shift(mu, ·)` and the
    constructor leaves σ_min = 0.001 unshifted.
  * A final σ = 0 is appended.

  The network timestep for step k is t_k = 1000·σ_k.

  Args:
    num_steps: number of sampling steps N.
    shift: static shift factor s (ignored by diffusers when `mu` is given, so
      passing both is rejected).
    mu: dynamic-shift parameter; see `resolution_mu`.
    sigmas: optional custom [N] grid of unshifted noise levels.

  Returns:
    [N + 1] float32 noise levels, decreasing from ~1 to 0.
  """
  num_steps = _check_num_steps(num_steps)
  if mu is not None and shift != 1.0:
    raise ValueError(f"pass either shift or mu, not both (got shift={shift})")
  if sigmas is None:
    train_sigma_min = 1.0 / NUM_TRAIN_TIMESTEPS
    sigma_min = train_sigma_min if mu is not None else shift_sigmas(train_sigma_min, shift)
    base = np.linspace(1.0, sigma_min, num_steps)
  else:
    # diffusers casts custom sigmas to float32 and shifts them in float32.
    base = sigmas if isinstance(sigmas, jax.Array) else np.asarray(sigmas, dtype=np.float32)
    if base.ndim != 1 or base.shape[0] != num_steps:
      raise ValueError(f"sigmas must have shape [num_steps={num_steps}], got {tuple(base.shape)}")
  shifted = time_shift(mu, base) if mu is not None else shift_sigmas(base, shift)
  if isinstance(shifted, jax.Array):
    shifted = shifted.astype(jnp.float32)
  else:
    shifted = jnp.asarray(np.asarray(shifted, dtype=np.float32))
  return jnp.concatenate([shifted, jnp.zeros((1,), jnp.float32)])


def training_sigma_grid(
    shift: float = 1.0, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
) -> jax.Array:
  """The discrete training grid σ_i = shift((T − i)/T), i = 0..T−1.

  Equals diffusers' FlowMatchEuler `scheduler.sigmas` right after
  construction: decreasing from 1 to shift(1/T), never 0.

  Args:
    shift: static shift factor s.
    num_train_timesteps: grid length T.

  Returns:
    [T] float32 noise levels.
  """
  num_train_timesteps = _check_num_steps(num_train_timesteps)
  base = np.arange(num_train_timesteps, 0, -1, dtype=np.float64) / num_train_timesteps
  return jnp.asarray(shift_sigmas(base, shift), dtype=jnp.float32)


def sample_training_sigmas(
    rng: jax.Array,
    batch: int,
    kind: TrainingSigmaKind = "uniform",
    shift: float = 1.0,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    discrete: bool = True,
) -> jax.Array:
  """Draws one training noise level per example (the net sees t = 1000·σ).

  A density value u ∈ [0, 1] is drawn as in diffusers'
  `compute_density_for_timestep_sampling`:
    * "uniform": u ~ U[0, 1).
    * "logit_normal": u = sigmoid(n), n ~ N(logit_mean, logit_std²).
    * "mode": u = 1 − v − c·(cos²(πv/2) − 1 + v), v ~ U[0, 1), c = mode_scale.

  With `discrete=True` (default, the recipe of the papers) u selects an entry
  of the decreasing training grid: σ = training_sigma_grid(shift)[⌊u·T⌋]
  (index clipped to [0, T−1]), so σ ∈ shift({1/T, …, 1}) and σ ≈ 1 − u.
  With `discrete=False`, σ = shift(1 − u), the continuous version of the same
  map. Note the flip: a positive `logit_mean` favours *low* noise here, as in
  diffusers' SD3 training scripts (the SD3 paper's t = sigmoid(n) is the
  opposite). The uniform and mode densities are symmetric, so the flip does
  not matter for them.

  Args:
    rng: a JAX PRNG key.
    batch: number of examples B.
    kind: "uniform", "logit_normal" or "mode".
    shift: static shift factor s applied to the grid.
    num_train_timesteps: grid length T.
    logit_mean: mean of the normal for "logit_normal".
    logit_std: standard deviation of the normal for "logit_normal".
    mode_scale: c for "mode".
    discrete: snap σ to the T-point grid (True) or keep it continuous.

  Returns:
    [B] float32 noise levels in (0, 1].
  """
  if kind == "uniform":
    u = jax.random.uniform(rng, (batch,), jnp.float32)
  elif kind == "logit_normal":
    u = jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(rng, (batch,), jnp.float32))
  elif kind == "mode":
    v = jax.random.uniform(rng, (batch,), jnp.float32)
    u = 1 - v - mode_scale * (jnp.cos(jnp.pi * v / 2) ** 2 - 1 + v)
  else:
    raise ValueError(f"kind must be 'uniform', 'logit_normal' or 'mode', got {kind!r}")
  if not discrete:
    return shift_sigmas(jnp.clip(1 - u, 0.0, 1.0), shift).astype(jnp.float32)
  grid = training_sigma_grid(shift, num_train_timesteps)
  index = jnp.clip(jnp.floor(u * num_train_timesteps).astype(jnp.int32), 0, num_train_timesteps - 1)
  return grid[index]
