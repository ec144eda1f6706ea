"""End-to-end flow-matching fit: a tiny Lumina DiT learns a two-point, two-caption dataset.

Uses the jaxmodels convention throughout (x_σ = (1 − σ)·x₀ + σ·ε, target ε − x₀, σ from the
diffusers discrete training grid) and `LuminaNextDiT.velocity` to map σ to the model's timestep.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxmodels.flow import flow_matching_loss, noisy_input, sample_training_sigmas
from jaxmodels.flow.lumina import LuminaNextDiT, blip3o_dit_config

STEPS = 300
BATCH = 32          # 16 copies of each of the two examples per step
EVAL_DRAWS = 512    # fixed (σ, ε) draws per example for the before/after loss


def _tiny_config():
  # BLIP3-o-style variant (caption projection, t = 1000·σ) at toy width: 4×4×4 latents, patch 2.
  return blip3o_dit_config("4864", caption_dim=16, sample_size=4, patch_size=2, in_channels=4,
                           hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, ffn_hidden_size=64)


def _loss(model, x0, caps, sigmas, noise):
  v = model.velocity(noisy_input(x0, noise, sigmas), sigmas, caps)
  return flow_matching_loss(v, x0, noise)


@pytest.mark.slow
def test_tiny_dit_fits_two_points():
  key = jax.random.key(0)
  k_data, k_cap, k_eval_s, k_eval_n, k_train = jax.random.split(key, 5)
  data = jax.random.normal(k_data, (2, 4, 4, 4))
  captions = jax.random.normal(k_cap, (2, 3, 16))
  x0 = jnp.repeat(data, BATCH // 2, axis=0)
  caps = jnp.repeat(captions, BATCH // 2, axis=0)

  n_eval = 2 * EVAL_DRAWS
  eval_x0 = jnp.repeat(data, EVAL_DRAWS, axis=0)
  eval_caps = jnp.repeat(captions, EVAL_DRAWS, axis=0)
  eval_sigmas = sample_training_sigmas(k_eval_s, n_eval)
  eval_noise = jax.random.normal(k_eval_n, eval_x0.shape)

  model = LuminaNextDiT(_tiny_config(), rngs=nnx.Rngs(0))
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 20, STEPS, end_value=1e-3)
  optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.0), wrt=nnx.Param)

  @nnx.jit
  def eval_loss(model):
    return _loss(model, eval_x0, eval_caps, eval_sigmas, eval_noise)

  @nnx.jit
  def train_step(model, optimizer, rng):
    k_s, k_n = jax.random.split(rng)
    sigmas = sample_training_sigmas(k_s, BATCH)
    noise = jax.random.normal(k_n, x0.shape)
    loss, grads = nnx.value_and_grad(_loss)(model, x0, caps, sigmas, noise)
    optimizer.update(model, grads)
    return loss

  start = float(eval_loss(model))
  t0 = time.time()
  for rng in jax.random.split(k_train, STEPS):
    train_step(model, optimizer, rng)
  end = float(eval_loss(model))
  print(f"flow loss {start:.4f} -> {end:.4f} ({1 - end / start:.1%} lower) in {time.time() - t0:.1f}s")
  assert np.isfinite(end)
  assert end <= 0.1 * start
