"""SDXL pixel-decoder machinery (KL autoencoder, conditional UNet, Euler scheduler) against
diffusers on tiny random configs, plus the full SDXL layouts without allocating."""
import json
import os

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
import torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxmodels import hf, sharding  # noqa: E402
from jaxmodels.errors import CheckpointFormatError, ConfigError  # noqa: E402
from jaxmodels.sdxl import blocks, euler_discrete  # noqa: E402
from jaxmodels.sdxl.sampling import SDXLCondition, sample_latents, sdxl_time_ids  # noqa: E402
from jaxmodels.sdxl.unet import UNet2DConditionModel, sdxl_unet_config  # noqa: E402
from jaxmodels.sdxl.vae import AutoencoderKL, sdxl_vae_config  # noqa: E402
from oracles import nchw, perturb_, save_tiny  # noqa: E402

ATOL = 1e-4

# SDXL's VAE shrunk: two stages (one down/up-sampler), one resnet per stage, 4 groups.
TINY_VAE = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                sample_size=16, scaling_factor=0.13025)
# diffusers 0.42.1 AutoencoderKL built with SDXL's vae/config.json (meta device).
DIFFUSERS_SDXL_VAE = 83_653_863

# SDXL's UNet shrunk: a plain level then a cross-attention level (2 heads of 8, 2 transformer
# layers, also in the mid block), linear projections, text_time added conditioning (8-d pooled
# embedding + 6 ids x 4 = 32).
TEXT_DIM, CONTEXT_DIM, CONTEXT_LEN = 8, 12, 5
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
    norm_num_groups=4, cross_attention_dim=CONTEXT_DIM, transformer_layers_per_block=(1, 2),
    attention_head_dim=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=4, projection_class_embeddings_input_dim=TEXT_DIM + 6 * 4)
# SD 1.x-style variant: cross-attention at every level, 1x1-conv projections, no added conditioning,
# scale-shift time embedding, per-level context widths, odd latent sizes (forwarded up-sample sizes).
TINY_UNET_SD = dict(
    in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16),
    layers_per_block=(1, 2), norm_num_groups=4, cross_attention_dim=CONTEXT_DIM, attention_head_dim=2,
    resnet_time_scale_shift="scale_shift", mid_block_scale_factor=1.5, conv_in_kernel=1,
    time_embedding_act_fn="silu")
# diffusers 0.42.1 UNet2DConditionModel built with SDXL base's unet/config.json (meta device).
DIFFUSERS_SDXL_UNET = 2_567_463_684


def nhwc(t) -> np.ndarray:
  return t.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def vae_oracle(tmp_path_factory):
  torch.manual_seed(0)
  model = perturb_(diffusers.AutoencoderKL(**TINY_VAE).eval(), 0.05)
  path = save_tiny(model, tmp_path_factory.mktemp("vae"))
  x = np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    dist = model.encode(nchw(x)).latent_dist
    images = model.decode(dist.mean).sample
  return model, path, hf.from_pretrained(path), x, (nhwc(dist.mean), nhwc(dist.logvar), nhwc(images))


def test_vae_encode_decode_match_diffusers(vae_oracle):
  _, _, ours, x, (mean, logvar, images) = vae_oracle
  assert isinstance(ours, AutoencoderKL)
  got_mean, got_logvar = nnx.jit(lambda m, v: m.encode(v))(ours, jnp.asarray(x))
  assert got_mean.shape == mean.shape == (2, 8, 8, 4)
  np.testing.assert_allclose(np.asarray(got_mean), mean, atol=ATOL)
  np.testing.assert_allclose(np.asarray(got_logvar), logvar, atol=ATOL)
  decoded = nnx.jit(lambda m, z: m.decode(z))(ours, jnp.asarray(mean))
  np.testing.assert_allclose(np.asarray(decoded), images, atol=ATOL)
  # Diffusion-space latents: x scaling_factor, as the SDXL pipeline divides before vae.decode.
  z = jnp.asarray(mean)
  np.testing.assert_allclose(np.asarray(ours.to_diffusion(z)), mean * 0.13025, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ours.from_diffusion(ours.to_diffusion(z))), mean, rtol=1e-5,
                             atol=1e-6)


def test_vae_export_loads_in_diffusers(vae_oracle, tmp_path):
  model, _, ours, x, (mean, logvar, images) = vae_oracle
  hf.save_pretrained(ours, str(tmp_path))
  theirs = diffusers.AutoencoderKL.from_pretrained(str(tmp_path)).eval()
  for key, want in model.config.items():
    if not key.startswith("_"):
      assert json.dumps(theirs.config[key]) == json.dumps(want), key
  with torch.no_grad():
    dist = theirs.encode(nchw(x)).latent_dist
    np.testing.assert_allclose(nhwc(dist.mean), mean, atol=1e-6)
    np.testing.assert_allclose(nhwc(theirs.decode(dist.mean).sample), images, atol=1e-5)


def test_sdxl_vae_layout_without_allocating():
  cfg = sdxl_vae_config()
  assert cfg.spatial_compression_ratio == 8 and cfg.scaling_factor == 0.13025
  abstract = nnx.eval_shape(lambda: AutoencoderKL(cfg, rngs=nnx.Rngs(0)))
  assert sharding.param_count(abstract) == DIFFUSERS_SDXL_VAE
  graphdef, state = nnx.split(abstract)
  image = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
  mean, _ = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state, image)
  assert mean.shape == (1, 8, 12, 4)
  out = jax.eval_shape(lambda s, z: nnx.merge(graphdef, s).decode(z), state, mean)
  assert out.shape == (1, 64, 96, 3)


@pytest.mark.parametrize("size", [(7, 9), (8, 12), (5, 5)])
def test_nearest_resize_matches_torch(size):
  x = np.random.RandomState(1).randn(1, 4, 5, 3).astype(np.float32)
  ref = torch.nn.functional.interpolate(nchw(x), size=size, mode="nearest")
  np.testing.assert_array_equal(np.asarray(blocks.nearest_resize(jnp.asarray(x), size)), nhwc(ref))


def test_vae_bad_inputs_are_one_line_errors(vae_oracle, tmp_path):
  _, path, _, _, _ = vae_oracle
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  bad = dict(config, up_block_types=["AttnUpDecoderBlock2D"] * 2)
  os.makedirs(tmp_path / "a")
  with open(tmp_path / "a" / "config.json", "w") as f:
    json.dump(bad, f)
  with pytest.raises(ConfigError, match="'AttnUpDecoderBlock2D' is not supported") as err:
    hf.from_pretrained(str(tmp_path / "a"))
  assert "\n" not in str(err.value) and "config.json" in str(err.value)
  # A checkpoint whose tensor has the wrong shape names the file and the key.
  ours = hf.from_pretrained(path)
  hf.save_pretrained(ours, str(tmp_path / "b"))
  from safetensors.numpy import load_file, save_file
  file = str(tmp_path / "b" / "diffusion_pytorch_model.safetensors")
  tensors = load_file(file)
  tensors["decoder.conv_in.weight"] = tensors["decoder.conv_in.weight"][:, :2]
  save_file(tensors, file)
  with pytest.raises(CheckpointFormatError, match="'decoder.conv_in.weight' has shape") as err:
    hf.from_pretrained(str(tmp_path / "b"))
  assert "diffusion_pytorch_model.safetensors" in str(err.value) and "\n" not in str(err.value)
  # A missing tensor is named with the parameter that needs it.
  del tensors["decoder.conv_in.weight"]
  save_file(tensors, file)
  with pytest.raises(CheckpointFormatError, match="tensor 'decoder.conv_in.weight' not found"):
    hf.from_pretrained(str(tmp_path / "b"))
  # Pickled weights are never read: only safetensors count as weights.
  os.replace(file, str(tmp_path / "b" / "diffusion_pytorch_model.bin"))
  with pytest.raises(CheckpointFormatError, match="no weights found"):
    hf.from_pretrained(str(tmp_path / "b"))


def unet_inputs(batch: int = 2, size=(8, 8), seed: int = 0):
  rs = np.random.RandomState(seed)
  sample = rs.randn(batch, *size, 4).astype(np.float32)
  t = np.array([999.0, 321.5][:batch], np.float32)
  context = rs.randn(batch, CONTEXT_LEN, CONTEXT_DIM).astype(np.float32)
  text = rs.randn(batch, TEXT_DIM).astype(np.float32)
  ids = np.array([[16, 16, 0, 0, 16, 16], [32, 24, 4, 2, 16, 16]][:batch], np.float32)
  return sample, t, context, text, ids


def torch_unet(model, sample, t, context, text=None, ids=None):
  added = None if text is None else {"text_embeds": torch.tensor(text), "time_ids": torch.tensor(ids)}
  with torch.no_grad():
    out = model(nchw(sample), torch.tensor(t), torch.tensor(context), added_cond_kwargs=added).sample
  return nhwc(out)


@pytest.fixture(scope="module")
def unet_oracle(tmp_path_factory):
  torch.manual_seed(0)
  model = perturb_(diffusers.UNet2DConditionModel(**TINY_UNET).eval(), 0.05)
  path = save_tiny(model, tmp_path_factory.mktemp("unet"))
  return model, path, hf.from_pretrained(path)


@nnx.jit
def _unet(model, sample, t, context, text, ids):
  return model(sample, t, context, text_embeds=text, time_ids=ids)


def test_unet_matches_diffusers(unet_oracle):
  model, _, ours = unet_oracle
  assert isinstance(ours, UNet2DConditionModel)
  inputs = unet_inputs()
  want = torch_unet(model, *inputs)
  got = np.asarray(_unet(ours, *map(jnp.asarray, inputs)))
  assert got.shape == want.shape == (2, 8, 8, 4)
  np.testing.assert_allclose(got, want, atol=ATOL)


def test_sd_style_unet_matches_diffusers(tmp_path):
  torch.manual_seed(1)
  model = perturb_(diffusers.UNet2DConditionModel(**TINY_UNET_SD).eval(), 0.05)
  ours = hf.from_pretrained(save_tiny(model, tmp_path))
  sample, t, context, _, _ = unet_inputs(size=(9, 7), seed=1)
  want = torch_unet(model, sample, t, context)
  got = nnx.jit(lambda m, *a: m(*a))(ours, *map(jnp.asarray, (sample, t, context)))
  np.testing.assert_allclose(np.asarray(got), want, atol=ATOL)


def test_unet_export_loads_in_diffusers(unet_oracle, tmp_path):
  model, _, ours = unet_oracle
  hf.save_pretrained(ours, str(tmp_path))
  theirs = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path)).eval()
  for key, want in model.config.items():
    if not key.startswith("_"):
      assert json.dumps(theirs.config[key]) == json.dumps(want), key
  inputs = unet_inputs()
  np.testing.assert_allclose(torch_unet(theirs, *inputs), torch_unet(model, *inputs), atol=1e-6)


def test_sdxl_unet_layout_without_allocating():
  cfg = sdxl_unet_config()
  abstract = nnx.eval_shape(lambda: UNet2DConditionModel(cfg, rngs=nnx.Rngs(0)))
  assert sharding.param_count(abstract) == DIFFUSERS_SDXL_UNET
  scanned = nnx.eval_shape(lambda: UNet2DConditionModel(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0)))
  assert sharding.param_count(scanned) == DIFFUSERS_SDXL_UNET
  graphdef, state = nnx.split(scanned)
  out = jax.eval_shape(
      lambda s, *a: nnx.merge(graphdef, s)(*a[:3], text_embeds=a[3], time_ids=a[4]), state,
      *(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in
        ((1, 128, 128, 4), (1,), (1, 77, 2048), (1, 1280), (1, 6))))
  assert out.shape == (1, 128, 128, 4)


@pytest.mark.parametrize("key, value, match", [
    ("class_embed_type", "timestep", "class_embed_type='timestep' is not supported"),
    ("down_block_types", ["AttnDownBlock2D", "CrossAttnDownBlock2D"], "'AttnDownBlock2D' is not supported"),
    ("addition_embed_type", "text", "addition_embed_type 'text' is not supported"),
    ("use_cool_attention", True, "option 'use_cool_attention' is not implemented"),
])
def test_unet_unsupported_options_are_one_line_errors(tmp_path, key, value, match):
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"_class_name": "UNet2DConditionModel", **TINY_UNET, key: value}, f)
  with pytest.raises(ConfigError, match=match) as err:
    hf.from_pretrained(str(tmp_path))
  assert "\n" not in str(err.value) and "config.json" in str(err.value)


# SDXL base 1.0's scheduler/scheduler_config.json (DDIM-era keys included, which Euler ignores).
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}


@pytest.mark.parametrize("options, steps", [
    ({}, 50), ({}, 7),
    ({"timestep_spacing": "linspace", "steps_offset": 0}, 4),
    ({"timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"}, 6),
    ({"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 5),
    ({"beta_schedule": "linear", "prediction_type": "v_prediction", "timestep_type": "continuous"}, 3),
])
def test_euler_schedule_matches_diffusers(tmp_path, options, steps):
  with open(tmp_path / "scheduler_config.json", "w") as f:
    json.dump({**SDXL_SCHEDULER, **options}, f)
  config = euler_discrete.load_scheduler_config(str(tmp_path))
  theirs = diffusers.EulerDiscreteScheduler.from_pretrained(str(tmp_path))
  theirs.set_timesteps(steps)
  ours = euler_discrete.euler_schedule(config, steps)
  np.testing.assert_allclose(np.asarray(ours.timesteps), theirs.timesteps.numpy(), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ours.sigmas), theirs.sigmas.numpy(), rtol=1e-5)
  assert ours.init_noise_sigma == pytest.approx(float(theirs.init_noise_sigma), rel=1e-5)
  assert euler_discrete.EulerDiscreteConfig.from_diffusers(config.to_diffusers()) == config


def test_euler_config_errors_name_the_file(tmp_path):
  with open(tmp_path / "scheduler_config.json", "w") as f:
    json.dump({**SDXL_SCHEDULER, "use_karras_sigmas": True}, f)
  with pytest.raises(ConfigError, match="scheduler_config.json: .*use_karras_sigmas=True is not supported"):
    euler_discrete.load_scheduler_config(str(tmp_path))
  with pytest.raises(CheckpointFormatError, match="scheduler_config.json: missing"):
    euler_discrete.load_scheduler_config(str(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def scanned_unet(unet_oracle):
  return hf.from_pretrained(unet_oracle[1], scan_layers=True)


def test_scanned_unet_exports_the_same_tensors(unet_oracle, scanned_unet, tmp_path):
  model = unet_oracle[0]
  hf.save_pretrained(scanned_unet, str(tmp_path))
  theirs = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path)).state_dict()
  want = model.state_dict()
  assert sorted(theirs) == sorted(want)
  for key, value in want.items():
    np.testing.assert_array_equal(theirs[key].numpy(), value.numpy(), err_msg=key)


def test_cfg_euler_trajectory_matches_diffusers(unet_oracle, scanned_unet):
  """4 SDXL Euler steps with CFG 3 driving the UNet, ours scanned (scan_layers=True), vs diffusers'
  scheduler driving theirs as StableDiffusionXLPipeline does."""
  model, ours = unet_oracle[0], scanned_unet
  noise, _, context, text, _ = unet_inputs()
  ids = np.asarray(sdxl_time_ids(2, target_size=(16, 16)))
  null = (np.zeros_like(context[:1]), np.zeros_like(text[:1]), ids[:1])
  scale, steps = 3.0, 4

  scheduler = diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)
  scheduler.set_timesteps(steps)
  latents = torch.tensor(noise).permute(0, 3, 1, 2) * scheduler.init_noise_sigma
  both = [torch.tensor(np.concatenate([np.broadcast_to(n, c.shape), c]))
          for n, c in zip(null, (context, text, ids))]
  with torch.no_grad():
    for t in scheduler.timesteps:
      x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
      eps = model(x, t, both[0], added_cond_kwargs={"text_embeds": both[1], "time_ids": both[2]}).sample
      uncond, cond = eps.chunk(2)
      latents = scheduler.step(uncond + scale * (cond - uncond), t, latents).prev_sample

  schedule = euler_discrete.euler_schedule(euler_discrete.EulerDiscreteConfig.from_diffusers(SDXL_SCHEDULER), steps)
  cond = SDXLCondition(*map(jnp.asarray, (context, text, ids)))
  fn = nnx.jit(lambda m, z, c, n: sample_latents(m, z, c, schedule, null_cond=n, guidance_scale=scale))
  got = fn(ours, jnp.asarray(noise), cond, SDXLCondition(*map(jnp.asarray, null)))
  np.testing.assert_allclose(np.asarray(got), nhwc(latents), atol=ATOL)
