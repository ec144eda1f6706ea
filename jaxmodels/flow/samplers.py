"""ODE samplers for velocity-predicting rectified-flow models.

Both solvers run the whole trajectory as one `jax.lax.scan`, so the velocity
function is traced once per compilation however many steps are taken, and
`sample` can itself be wrapped in `jax.jit` (its keyword arguments other than
`sigmas` and `mu` must then be Python values).

* "euler": diffusers `FlowMatchEulerDiscreteScheduler`, x ← x + (σ' − σ)·v,
  on the grid of `inference_sigmas`.
* "dpm++2m": diffusers `DPMSolverMultistepScheduler` in the SANA flow config
  (algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
  prediction_type="flow_prediction", use_flow_sigmas=True,
  flow_shift=shift, lower_order_final=True, final_sigmas_type="zero") on the
  grid of `dpm_sigmas`.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.flow import schedules

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
Solver = Literal["euler", "dpm++2m"]


def _dpm_grid(num_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
  """σ grid ([N + 1], float32-rounded, as float64) and timesteps ([N]) of DPM."""
  num_steps = schedules._check_num_steps(num_steps)
  if not isinstance(shift, (int, float, np.number)) or shift <= 0:
    raise ValueError(f"shift must be a positive Python number for dpm++2m, got {shift!r}")
  train = schedules.NUM_TRAIN_TIMESTEPS
  # diffusers: α = linspace(1, 1/T, N + 1), σ = 1 − α, shift, reverse, drop the
  # last (σ = 0) entry, then append the final σ = 0 ("zero" final sigma type).
  unshifted = 1.0 - np.linspace(1.0, 1.0 / train, num_steps + 1)
  shifted = schedules.shift_sigmas(unshifted, float(shift))[::-1][:-1]
  # diffusers casts the float64 σ·T to int64 (truncation), and the SANA
  # pipeline feeds exactly that integer to the transformer.
  timesteps = np.trunc(shifted * train)
  grid = np.concatenate([shifted, [0.0]]).astype(np.float32).astype(np.float64)
  return grid, timesteps


def dpm_sigmas(num_steps: int, shift: float = 3.0) -> jax.Array:
  """σ grid of diffusers' DPMSolverMultistepScheduler with use_flow_sigmas.

  σ_k = shift(1 − α_k) for α = linspace(1, 1/1000, N + 1) reversed, dropping
  the trailing 0 and appending a final 0. Unlike `inference_sigmas`, the first
  σ is shift(0.999) < 1, not 1.

  Args:
    num_steps: number of sampling steps N.
    shift: the scheduler's `flow_shift` (SANA uses 3.0).

  Returns:
    [N + 1] float32 noise levels, decreasing to 0.
  """
  return jnp.asarray(_dpm_grid(num_steps, shift)[0], dtype=jnp.float32)


def dpm_timesteps(num_steps: int, shift: float = 3.0) -> jax.Array:
  """[N] float32 timesteps diffusers passes with `dpm_sigmas`: ⌊1000·σ_k⌋."""
  return jnp.asarray(_dpm_grid(num_steps, shift)[1], dtype=jnp.float32)


def _dpm_coefficients(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-step scalars for x' = a·x − b·(x̂₀ + ½·c·(x̂₀ − x̂₀_prev)).

  With α = 1 − σ and λ = log(α/σ): a = σ'/σ, b = α'·(e^{−h} − 1) where
  h = λ' − λ, and c = 1/r = h/h_prev is DPM-Solver++(2M)'s midpoint
  correction. The first step (no history) and the last step (σ' = 0, forced
  first order by final_sigmas_type="zero") use c = 0, i.e. DDIM. Closed forms
  avoid log(0) at σ' = 0, where a = 0 and b = −1 (the step returns x̂₀).
  """
  num_steps = grid.shape[0] - 1
  sigma, sigma_next = grid[:-1], grid[1:]
  alpha, alpha_next = 1.0 - sigma, 1.0 - sigma_next
  a = sigma_next / sigma
  b = sigma_next * alpha / sigma - alpha_next
  c = np.zeros(num_steps)
  if num_steps > 2:
    log_snr = np.log(1.0 - grid[:-1]) - np.log(grid[:-1])
    k = np.arange(1, num_steps - 1)
    h = log_snr[k + 1] - log_snr[k]
    h_prev = log_snr[k] - log_snr[k - 1]
    c[k] = h / h_prev
  return a, b, c


def _batch_timesteps(t: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.broadcast_to(t.astype(jnp.float32), (x.shape[0],))


def sample(
    velocity_fn: VelocityFn,
    x_init: jax.Array,
    *,
    num_steps: int | None = None,
    solver: Solver = "euler",
    shift: float = 1.0,
    mu: float | jax.Array | None = None,
    sigmas: jax.Array | np.ndarray | list[float] | None = None,
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Integrates dx/dσ = v from σ ≈ 1 (noise) to σ = 0 (data).

  `velocity_fn(x, t)` gets x [B, ...] and t [B] float32 and returns v ≈ ε − x₀
  with x's shape. For "euler", t = 1000·σ_k exactly as diffusers'
  FlowMatchEuler timesteps. For "dpm++2m", t = ⌊1000·σ_k⌋ (a float holding an
  integer), because diffusers' DPM scheduler stores integer timesteps and the
  SANA pipeline passes those; the update itself uses the exact σ_k.

  Arithmetic is float32; the carried x keeps x_init's dtype.

  Args:
    velocity_fn: v = velocity_fn(x, t), traced once inside the scan body.
    x_init: [B, ...] initial noise at the first σ of the grid.
    num_steps: number of steps N (may be omitted when `sigmas` is given).
    solver: "euler" or "dpm++2m".
    shift: static shift (`flow_shift` for "dpm++2m").
    mu: dynamic shift; for "euler" see `inference_sigmas`, for "dpm++2m" it
      sets shift = e^μ as diffusers does (must then be a Python number).
    sigmas: custom [N] unshifted grid, "euler" only (shifted, 0 appended).
    return_trajectory: also return every intermediate latent.

  Returns:
    x [B, ...] at σ = 0, or (x, trajectory [N + 1, B, ...]) whose entry 0 is
    x_init and entry k is the latent after k steps.
  """
  if x_init.ndim < 1:
    raise ValueError(f"x_init must have a leading batch dimension, got shape {x_init.shape}")
  if num_steps is None:
    if sigmas is None:
      raise ValueError("num_steps is required unless sigmas is given")
    num_steps = len(sigmas)
  if solver == "euler":
    grid = schedules.inference_sigmas(num_steps, shift=shift, mu=mu, sigmas=sigmas)
    steps = (grid[:-1], grid[1:] - grid[:-1])
    body = _euler_body(velocity_fn)
    carry = x_init
  elif solver == "dpm++2m":
    if sigmas is not None:
      raise ValueError("sigmas is only supported with solver='euler'")
    if mu is not None:
      if shift != 1.0:
        raise ValueError(f"pass either shift or mu, not both (got shift={shift})")
      shift = math.exp(mu)
    grid, timesteps = _dpm_grid(num_steps, shift)
    a, b, c = _dpm_coefficients(grid)
    steps = tuple(jnp.asarray(v, jnp.float32) for v in (timesteps, grid[:-1], a, b, c))
    body = _dpm_body(velocity_fn)
    carry = (x_init, jnp.zeros(x_init.shape, jnp.float32))
  else:
    raise ValueError(f"solver must be 'euler' or 'dpm++2m', got {solver!r}")

  final, trajectory = jax.lax.scan(body, carry, steps)
  x = final if solver == "euler" else final[0]
  if not return_trajectory:
    return x
  return x, jnp.concatenate([x_init[None], trajectory], axis=0)


def _euler_body(velocity_fn: VelocityFn):
  def body(x, step):
    sigma, delta_sigma = step
    t = _batch_timesteps(sigma * schedules.NUM_TRAIN_TIMESTEPS, x)
    v = velocity_fn(x, t).astype(jnp.float32)
    x_next = (x.astype(jnp.float32) + delta_sigma * v).astype(x.dtype)
    return x_next, x_next

  return body


def _dpm_body(velocity_fn: VelocityFn):
  def body(carry, step):
    x, prev_x0 = carry
    t, sigma, a, b, c = step
    v = velocity_fn(x, _batch_timesteps(t, x)).astype(jnp.float32)
    x32 = x.astype(jnp.float32)
    x0 = x32 - sigma * v  # data prediction for flow_prediction
    x_next = (a * x32 - b * (x0 + 0.5 * c * (x0 - prev_x0))).astype(x.dtype)
    return (x_next, x0), x_next

  return body
