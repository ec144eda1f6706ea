"""Parity of jaxmodels.flow with diffusers' flow-matching schedulers, plus unit checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import flow

NUM_STEPS = 30
LATENT_SHAPE = (2, 3, 8)  # [B, tokens, channels]
SANA_DPM_CONFIG = dict(
    algorithm_type="dpmsolver++",
    solver_order=2,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    solver_type="midpoint",
    lower_order_final=True,
    final_sigmas_type="zero",
)


@pytest.fixture(scope="module")
def diffusers():
  return pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


def _velocity_params():
  rng = np.random.default_rng(0)
  channels = LATENT_SHAPE[-1]
  weight = (rng.standard_normal((channels, channels)) / np.sqrt(channels)).astype(np.float32)
  time_dir = rng.standard_normal(channels).astype(np.float32)
  bias = (0.1 * rng.standard_normal(channels)).astype(np.float32)
  return weight, time_dir, bias


def _jax_velocity(x, t):
  """v = 2·tanh(x W + (t/1000)·u + b) − 0.5·x, the same map as `_torch_velocity`."""
  weight, time_dir, bias = (jnp.asarray(p) for p in _velocity_params())
  hidden = x @ weight + (t / 1000.0)[:, None, None] * time_dir + bias
  return 2.0 * jnp.tanh(hidden) - 0.5 * x


def _torch_velocity(torch, x, t):
  weight, time_dir, bias = (torch.from_numpy(p) for p in _velocity_params())
  hidden = x @ weight + (t.float() / 1000.0)[:, None, None] * time_dir + bias
  return 2.0 * torch.tanh(hidden) - 0.5 * x


def _initial_noise():
  return np.random.default_rng(1).standard_normal(LATENT_SHAPE).astype(np.float32)


def _diffusers_trajectory(torch, scheduler, timesteps_fed):
  """Runs a diffusers scheduler loop the way its pipelines do; returns [N+1, ...] latents."""
  x = torch.from_numpy(_initial_noise())
  trajectory = [x.numpy().copy()]
  for t in scheduler.timesteps:
    timestep = t.expand(x.shape[0])
    timesteps_fed.append(float(t))
    v = _torch_velocity(torch, x, timestep)
    x = scheduler.step(v, t, x, return_dict=False)[0]
    trajectory.append(x.numpy().copy())
  return np.stack(trajectory)


def _our_trajectory(timesteps_fed, **sample_kwargs):
  def velocity(x, t):
    jax.debug.callback(lambda t: timesteps_fed.append(float(t[0])), t, ordered=True)
    return _jax_velocity(x, t)

  x_init = jnp.asarray(_initial_noise())
  x, trajectory = flow.sample(velocity, x_init, return_trajectory=True, **sample_kwargs)
  jax.effects_barrier()
  np.testing.assert_array_equal(np.asarray(x), np.asarray(trajectory[-1]))
  return np.asarray(trajectory)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("num_steps", [1, 4, NUM_STEPS])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_inference_sigmas_static_shift(diffusers, num_steps, shift):
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(num_steps)
  ours = flow.inference_sigmas(num_steps, shift=shift)
  assert ours.shape == (num_steps + 1,) and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), scheduler.sigmas.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("image_seq_len", [256, 1024, 4096])
def test_inference_sigmas_dynamic_shift(diffusers, image_seq_len):
  mu = flow.resolution_mu(image_seq_len)
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
  scheduler.set_timesteps(NUM_STEPS, mu=mu)
  ours = flow.inference_sigmas(NUM_STEPS, mu=mu)
  np.testing.assert_allclose(np.asarray(ours), scheduler.sigmas.numpy(), atol=1e-6, rtol=0)
  # A traced μ gives the same grid.
  traced = jax.jit(lambda m: flow.inference_sigmas(NUM_STEPS, mu=m))(jnp.float32(mu))
  np.testing.assert_allclose(np.asarray(traced), scheduler.sigmas.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_inference_sigmas_custom_sigmas_are_shifted(diffusers, shift):
  custom = np.linspace(1.0, 1.0 / NUM_STEPS, NUM_STEPS)  # BLIP3-o / MetaQuery call
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
  scheduler.set_timesteps(NUM_STEPS, sigmas=custom)
  ours = flow.inference_sigmas(NUM_STEPS, shift=shift, sigmas=custom)
  np.testing.assert_allclose(np.asarray(ours), scheduler.sigmas.numpy(), atol=1e-6, rtol=0)
  ours_jax = flow.inference_sigmas(NUM_STEPS, shift=shift, sigmas=jnp.asarray(custom, jnp.float32))
  np.testing.assert_allclose(np.asarray(ours_jax), scheduler.sigmas.numpy(), atol=1e-6, rtol=0)


def test_resolution_mu_and_time_shift():
  assert flow.resolution_mu(256) == pytest.approx(0.5)
  assert flow.resolution_mu(4096) == pytest.approx(1.15)
  assert flow.resolution_mu(2176) == pytest.approx(0.825)
  sigmas = np.linspace(0.05, 0.95, 7)
  np.testing.assert_allclose(
      flow.time_shift(np.log(3.0), sigmas), flow.shift_sigmas(sigmas, 3.0), rtol=1e-12
  )
  assert flow.shift_sigmas(0.5, 3.0) == pytest.approx(0.75)


@pytest.mark.parametrize("num_steps", [1, 2, 3, NUM_STEPS])
def test_dpm_grid_matches_diffusers(diffusers, num_steps):
  scheduler = diffusers.DPMSolverMultistepScheduler(flow_shift=3.0, **SANA_DPM_CONFIG)
  scheduler.set_timesteps(num_steps)
  ours_sigmas = np.asarray(flow.dpm_sigmas(num_steps, 3.0))
  np.testing.assert_allclose(ours_sigmas, scheduler.sigmas.numpy(), atol=1e-6, rtol=0)
  ours_timesteps = np.asarray(flow.dpm_timesteps(num_steps, 3.0))
  np.testing.assert_array_equal(ours_timesteps, scheduler.timesteps.numpy())


def test_schedule_argument_errors():
  with pytest.raises(ValueError, match="num_steps"):
    flow.inference_sigmas(0)
  with pytest.raises(ValueError, match="sigmas"):
    flow.inference_sigmas(3, sigmas=[1.0, 0.5])
  with pytest.raises(ValueError, match="shift or mu"):
    flow.inference_sigmas(3, shift=3.0, mu=0.5)
  with pytest.raises(ValueError, match="shift"):
    flow.shift_sigmas(0.5, -1.0)
  with pytest.raises(ValueError, match="solver"):
    flow.sample(_jax_velocity, jnp.zeros(LATENT_SHAPE), num_steps=2, solver="heun")
  with pytest.raises(ValueError, match="sigmas"):
    flow.sample(
        _jax_velocity, jnp.zeros(LATENT_SHAPE), num_steps=2, solver="dpm++2m", sigmas=[1.0, 0.5]
    )


# ----------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize(
    "scheduler_kwargs, set_kwargs, sample_kwargs",
    [
        ({"shift": 1.0}, {}, {"shift": 1.0}),
        ({"shift": 3.0}, {}, {"shift": 3.0}),
        ({"use_dynamic_shifting": True}, {"mu": 0.825}, {"mu": 0.825}),
        ({"shift": 3.0}, {"sigmas": np.linspace(1.0, 1.0 / NUM_STEPS, NUM_STEPS)},
         {"shift": 3.0, "sigmas": np.linspace(1.0, 1.0 / NUM_STEPS, NUM_STEPS)}),
    ],
    ids=["shift1", "shift3", "dynamic_mu", "custom_sigmas_shift3"],
)
def test_euler_trajectory_matches_diffusers(
    diffusers, torch, scheduler_kwargs, set_kwargs, sample_kwargs
):
  scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**scheduler_kwargs)
  scheduler.set_timesteps(NUM_STEPS, **set_kwargs)
  theirs_t, ours_t = [], []
  theirs = _diffusers_trajectory(torch, scheduler, theirs_t)
  ours = _our_trajectory(ours_t, num_steps=NUM_STEPS, solver="euler", **sample_kwargs)
  assert ours.shape == (NUM_STEPS + 1,) + LATENT_SHAPE
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  # Euler timesteps are exactly 1000·σ on both sides.
  np.testing.assert_allclose(ours_t, theirs_t, rtol=1e-6, atol=0)
  np.testing.assert_allclose(theirs_t, 1000 * scheduler.sigmas.numpy()[:-1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_steps", [1, 2, 3, NUM_STEPS])
def test_dpm_trajectory_matches_diffusers_sana_config(diffusers, torch, num_steps):
  scheduler = diffusers.DPMSolverMultistepScheduler(flow_shift=3.0, **SANA_DPM_CONFIG)
  scheduler.set_timesteps(num_steps)
  theirs_t, ours_t = [], []
  theirs = _diffusers_trajectory(torch, scheduler, theirs_t)
  ours = _our_trajectory(ours_t, num_steps=num_steps, solver="dpm++2m", shift=3.0)
  np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
  # diffusers feeds integer timesteps ⌊1000·σ⌋ here, and so do we.
  np.testing.assert_array_equal(ours_t, theirs_t)
  fractional = 1000 * scheduler.sigmas.numpy()[:-1].astype(np.float64) - np.asarray(theirs_t)
  assert np.all((fractional > -1e-3) & (fractional < 1))


@pytest.mark.parametrize("solver", ["euler", "dpm++2m"])
def test_sample_traces_velocity_once_under_jit(solver):
  calls = []

  def velocity(x, t):
    calls.append(t.shape)
    return _jax_velocity(x, t)

  run = jax.jit(lambda x: flow.sample(velocity, x, num_steps=NUM_STEPS, solver=solver, shift=3.0))
  x_init = jnp.asarray(_initial_noise())
  first = run(x_init)
  second = run(x_init + 1.0)
  assert calls == [(LATENT_SHAPE[0],)]  # one trace of the scan body, t is [B]
  assert not np.allclose(first, second)
  eager = flow.sample(_jax_velocity, x_init, num_steps=NUM_STEPS, solver=solver, shift=3.0)
  np.testing.assert_allclose(first, eager, atol=1e-6)
  jaxpr = jax.make_jaxpr(
      lambda x: flow.sample(_jax_velocity, x, num_steps=NUM_STEPS, solver=solver)
  )(x_init)
  assert "scan" in str(jaxpr)


def test_sample_keeps_bfloat16_dtype():
  x_init = jnp.asarray(_initial_noise(), jnp.bfloat16)
  x = flow.sample(_jax_velocity, x_init, num_steps=4, solver="dpm++2m")
  assert x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))


# ----------------------------------------------------------------------------- guidance


def test_cfg_formulas_on_hand_numbers():
  v_u, v_c, v_img = jnp.array([1.0, -2.0]), jnp.array([3.0, 0.0]), jnp.array([2.0, 1.0])
  np.testing.assert_allclose(flow.cfg_velocity(v_u, v_c, 4.5), [10.0, 7.0])
  np.testing.assert_allclose(flow.cfg_velocity(v_u, v_c, 1.0), v_c)
  # v_u + 1.5·(v_img − v_u) + 3·(v_full − v_img) = [1 + 1.5, −2 + 4.5] + 3·[1, −1]
  np.testing.assert_allclose(flow.image_text_guidance(v_u, v_img, v_c, 1.5, 3.0), [5.5, -0.5])


def test_cfg_velocity_fn_batches_both_branches_in_one_call():
  batch, length, dim = 2, 3, 4
  cond = jax.random.normal(jax.random.key(0), (batch, length, dim))
  null = jax.random.normal(jax.random.key(1), (1, length, dim))  # e.g. empty-caption embedding
  seen_batches = []

  def conditional_velocity(x, t, c):
    seen_batches.append(x.shape[0])
    return _jax_velocity(x, t) + c.mean(axis=(1, 2))[:, None, None]

  guided = flow.cfg_velocity_fn(conditional_velocity, cond, null, 5.0)
  x, t = jnp.asarray(_initial_noise()), jnp.full((batch,), 700.0)
  expected = flow.cfg_velocity(
      conditional_velocity(x, t, jnp.broadcast_to(null, cond.shape)),
      conditional_velocity(x, t, cond),
      5.0,
  )
  seen_batches.clear()
  np.testing.assert_allclose(guided(x, t), expected, atol=1e-6)
  assert seen_batches == [2 * batch]


@pytest.mark.parametrize("null_kind", ["zeros", "caption"])
def test_drop_condition_replaces_exactly_dropped_rows(null_kind):
  batch, length, dim = 64, 3, 5
  cond = jax.random.normal(jax.random.key(0), (batch, length, dim)) + 10.0
  caption = jnp.arange(length * dim, dtype=jnp.float32).reshape(length, dim)
  null = "zeros" if null_kind == "zeros" else caption
  null_row = jnp.zeros((length, dim)) if null_kind == "zeros" else null
  out, dropped = flow.drop_condition(jax.random.key(3), cond, 0.3, null, return_mask=True)
  assert out.shape == cond.shape and dropped.shape == (batch,)
  assert 0 < int(dropped.sum()) < batch
  for row in range(batch):
    np.testing.assert_array_equal(out[row], null_row if dropped[row] else cond[row])
  np.testing.assert_array_equal(flow.drop_condition(jax.random.key(3), cond, 0.3, null), out)
  np.testing.assert_array_equal(flow.drop_condition(jax.random.key(3), cond, 0.0, null), cond)
  with pytest.raises(ValueError, match="prob"):
    flow.drop_condition(jax.random.key(3), cond, 1.5)
  with pytest.raises(ValueError, match="null"):
    flow.drop_condition(jax.random.key(3), cond, 0.1, "empty")


# ----------------------------------------------------------------------------- training σ and loss


def test_uniform_training_sigmas_lie_on_diffusers_grid(diffusers):
  for shift in (1.0, 3.0):
    grid = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift).sigmas.numpy()
    np.testing.assert_allclose(np.asarray(flow.training_sigma_grid(shift)), grid, atol=1e-6, rtol=0)
    sigmas = flow.sample_training_sigmas(jax.random.key(0), 4096, "uniform", shift=shift)
    sigmas = np.asarray(sigmas)
    assert sigmas.shape == (4096,) and sigmas.dtype == np.float32
    assert np.abs(sigmas[:, None] - grid[None]).min(axis=1).max() < 1e-6
    assert sigmas.min() > 0 and sigmas.max() <= 1


def test_training_sigma_kinds():
  key = jax.random.key(1)
  plain = flow.sample_training_sigmas(key, 8192, "uniform")
  shifted = flow.sample_training_sigmas(key, 8192, "uniform", shift=3.0)
  assert float(shifted.mean()) > float(plain.mean()) + 0.1
  assert abs(float(plain.mean()) - 0.5) < 0.02
  for kind in ("logit_normal", "mode"):
    for discrete in (True, False):
      sigmas = np.asarray(flow.sample_training_sigmas(key, 8192, kind, discrete=discrete))
      assert sigmas.min() > 0 and sigmas.max() <= 1 and abs(sigmas.mean() - 0.5) < 0.02
  continuous = flow.sample_training_sigmas(key, 8192, "uniform", discrete=False)
  assert float(jnp.abs(continuous - plain).max()) <= 1e-3 + 1e-6
  with pytest.raises(ValueError, match="kind"):
    flow.sample_training_sigmas(key, 4, "cosine")


def test_noisy_input_and_loss():
  x0 = jnp.array([[1.0, 2.0], [3.0, -1.0]])
  noise = jnp.array([[0.0, 1.0], [1.0, 1.0]])
  sigmas = jnp.array([0.25, 1.0])
  np.testing.assert_allclose(flow.noisy_input(x0, noise, sigmas), [[0.75, 1.75], [1.0, 1.0]])
  assert float(flow.flow_matching_loss(noise - x0, x0, noise)) == 0.0
  v_pred = jnp.zeros_like(x0)  # errors² = (ε − x₀)² = [[1, 1], [4, 4]]
  assert float(flow.flow_matching_loss(v_pred, x0, noise)) == pytest.approx(2.5)
  weighted = flow.flow_matching_loss(v_pred, x0, noise, jnp.array([2.0, 0.5]))
  assert float(weighted) == pytest.approx((2 * 1 + 0.5 * 4) / 2)
  np.testing.assert_allclose(flow.sd3_loss_weights(jnp.array([0.5]), "sigma_sqrt"), [4.0])
  cosmap = flow.sd3_loss_weights(jnp.array([0.5]), "cosmap")
  np.testing.assert_allclose(cosmap, [4.0 / np.pi], rtol=1e-6)
  with pytest.raises(ValueError, match="weights"):
    flow.flow_matching_loss(v_pred, x0, noise, jnp.ones(3))
  with pytest.raises(ValueError, match="sigmas"):
    flow.noisy_input(x0, noise, jnp.ones(3))
