"""Flow-matching training objective: noisy inputs, targets and the MSE loss."""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp


def _per_example(sigmas: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes scalar or [B] σ to [B, 1, ..., 1] for broadcasting against `like`."""
  sigmas = jnp.asarray(sigmas)
  if sigmas.ndim == 0:
    return sigmas
  if sigmas.ndim != 1 or sigmas.shape[0] != like.shape[0]:
    raise ValueError(f"sigmas must be a scalar or shape [{like.shape[0]}], got {sigmas.shape}")
  return sigmas.reshape((-1,) + (1,) * (like.ndim - 1))


def noisy_input(x0: jax.Array, noise: jax.Array, sigmas: jax.Array) -> jax.Array:
  """x_σ = (1 − σ)·x₀ + σ·ε.

  Args:
    x0: [B, ...] clean data (latents or features).
    noise: [B, ...] standard-normal noise ε.
    sigmas: [B] (or scalar) noise levels in [0, 1].

  Returns:
    [B, ...] noisy input, in the promoted dtype of the inputs.
  """
  if x0.shape != noise.shape:
    raise ValueError(f"noise shape {noise.shape} must equal x0 shape {x0.shape}")
  sigma = _per_example(sigmas, x0)
  return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """Regression target v = ε − x₀ ([B, ...]); dx_σ/dσ along the straight path."""
  return noise - x0


def flow_matching_loss(
    v_pred: jax.Array,
    x0: jax.Array,
    noise: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
  """mean(w_b · (v̂ − (ε − x₀))²), computed in float32.

  Without weights this is the plain mean over all elements (every repo here).
  With weights, each example's mean squared error is scaled by its weight
  before averaging over the batch (weights are not renormalised).

  Args:
    v_pred: [B, ...] predicted velocity v̂.
    x0: [B, ...] clean data.
    noise: [B, ...] noise ε used to build the input.
    weights: optional [B] per-example (per-σ) weights, see `sd3_loss_weights`.

  Returns:
    Scalar float32 loss.
  """
  if not v_pred.shape == x0.shape == noise.shape:
    raise ValueError(
        f"v_pred {v_pred.shape}, x0 {x0.shape} and noise {noise.shape} must have equal shapes"
    )
  target = velocity_target(x0.astype(jnp.float32), noise.astype(jnp.float32))
  squared_error = jnp.square(v_pred.astype(jnp.float32) - target)
  per_example = squared_error.reshape(squared_error.shape[0], -1).mean(axis=1)
  if weights is None:
    return per_example.mean()
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != per_example.shape:
    raise ValueError(f"weights must have shape {per_example.shape}, got {weights.shape}")
  return (weights * per_example).mean()


def sd3_loss_weights(
    sigmas: jax.Array, scheme: Literal["none", "sigma_sqrt", "cosmap"] = "none"
) -> jax.Array:
  """Per-example loss weights of diffusers' `compute_loss_weighting_for_sd3`.

  "none": 1; "sigma_sqrt": σ⁻²; "cosmap": 2 / (π·(1 − 2σ + 2σ²)).

  Args:
    sigmas: [B] training noise levels.
    scheme: weighting scheme name.

  Returns:
    [B] float32 weights.
  """
  sigmas = jnp.asarray(sigmas, jnp.float32)
  if scheme == "none":
    return jnp.ones_like(sigmas)
  if scheme == "sigma_sqrt":
    return sigmas**-2.0
  if scheme == "cosmap":
    return 2.0 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
  raise ValueError(f"scheme must be 'none', 'sigma_sqrt' or 'cosmap', got {scheme!r}")
