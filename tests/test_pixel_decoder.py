"""BLIP3-o's pixel decoder (jaxmodels/unified/pixel_decoder.py) against diffusers doing spec §2.6 by
hand: a tiny SDXL-style UNet + VAE saved as a pipeline folder, conditioned on a feature sequence
(encoder_hidden_states), its token mean (text_embeds) and time_ids (1024, 1024, 0, 0, H, W), Euler with
CFG against null features, latents / scaling_factor -> VAE decode."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from oracles import perturb_  # noqa: E402

FEAT_DIM, FEAT_LEN, SIDE = 12, 5, 16          # features [B, 5, 12]; 16 px images (8x8 latents)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=4, cross_attention_dim=FEAT_DIM, transformer_layers_per_block=(1, 1),
            attention_head_dim=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=4, projection_class_embeddings_input_dim=FEAT_DIM + 6 * 4)
VAE = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
           block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
           sample_size=16, scaling_factor=0.13025)
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
                 interpolation_type="linear", use_karras_sigmas=False)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
  torch.manual_seed(0)
  unet = perturb_(diffusers.UNet2DConditionModel(**UNET).eval(), 0.05)
  vae = perturb_(diffusers.AutoencoderKL(**VAE).eval(), 0.05, seed=1)
  d = tmp_path_factory.mktemp("diffusion-decoder")
  unet.save_pretrained(d / "unet")
  vae.save_pretrained(d / "vae")
  (d / "scheduler").mkdir()
  (d / "scheduler" / "scheduler_config.json").write_text(json.dumps(
      {"_class_name": "EulerDiscreteScheduler", **SCHEDULER}))
  return d, unet, vae


def test_decoder_matches_diffusers_by_hand(pipeline_dir):
  from jaxmodels.unified.pixel_decoder import SDXLFeatureDecoder
  d, unet, vae = pipeline_dir
  decoder = SDXLFeatureDecoder.from_directory(str(d), image_size=SIDE)
  rs = np.random.RandomState(0)
  feats = rs.randn(2, FEAT_LEN, FEAT_DIM).astype(np.float32)
  null = rs.randn(1, FEAT_LEN, FEAT_DIM).astype(np.float32)
  steps, scale = 3, 3.0
  rng = jax.random.key(0)
  got = np.asarray(nnx.jit(lambda m, f, n, k: m.decode(f, n, k, num_steps=steps, guidance=scale))(
      decoder, jnp.asarray(feats), jnp.asarray(null), rng))
  assert got.shape == (2, SIDE, SIDE, 3)

  noise = np.asarray(jax.random.normal(rng, (2, SIDE // 2, SIDE // 2, 4), jnp.float32))
  sched = diffusers.EulerDiscreteScheduler.from_config(SCHEDULER)
  sched.set_timesteps(steps)
  x = torch.tensor(noise).permute(0, 3, 1, 2) * sched.init_noise_sigma
  ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, SIDE, SIDE]] * 2)
  ctx = torch.tensor(np.concatenate([np.repeat(null, 2, 0), feats]))
  text = ctx.mean(1)
  with torch.no_grad():
    for t in sched.timesteps:
      inp = sched.scale_model_input(torch.cat([x] * 2), t)
      eps = unet(inp, t, ctx, added_cond_kwargs={"text_embeds": text, "time_ids": torch.cat([ids] * 2)}).sample
      u, c = eps.chunk(2)
      x = sched.step(u + scale * (c - u), t, x).prev_sample
    want = vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(got, want, atol=2e-4)
  # the prompt's features matter: other features, other pixels
  other = np.asarray(decoder.decode(jnp.asarray(-feats), jnp.asarray(null), rng, num_steps=steps, guidance=scale))
  assert np.abs(other - got).max() > 1e-3


def test_decoder_folder_errors(tmp_path, pipeline_dir):
  from jaxmodels.errors import CheckpointFormatError
  from jaxmodels.unified.pixel_decoder import SDXLFeatureDecoder
  (tmp_path / "vae").mkdir()
  with pytest.raises(CheckpointFormatError, match="no unet/ folder"):
    SDXLFeatureDecoder.from_directory(str(tmp_path))
  d, _, _ = pipeline_dir
  with pytest.raises(CheckpointFormatError, match="not a multiple"):
    SDXLFeatureDecoder.from_directory(str(d), image_size=15)
