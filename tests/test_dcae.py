"""DC-AE (AutoencoderDC) against diffusers (tiny random configs) and the full f32c32 layout."""
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
from jaxmodels.errors import ConfigError  # noqa: E402
from jaxmodels.flow.dcae import AutoencoderDC, dcae_f32c32_config, pixel_shuffle, pixel_unshuffle  # noqa: E402
from oracles import nchw, perturb_, save_tiny  # noqa: E402

CASES = {
    # SANA's f32c32 layout, shrunk: ResBlock then EfficientViT stages, stride-2 conv down-sampling,
    # nearest-interpolate up-sampling, multi-scale kernel 5, both shortcuts. 32x32 -> 8x8x8.
    "sana_like": dict(
        latent_channels=8, attention_head_dim=8,
        encoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(16, 32, 32), decoder_block_out_channels=(16, 32, 32),
        encoder_layers_per_block=(1, 1, 2), decoder_layers_per_block=(1, 2, 1),
        encoder_qkv_multiscales=((), (5,), (5,)), decoder_qkv_multiscales=((), (5,), (5,)),
        downsample_block_type="Conv", upsample_block_type="interpolate", scaling_factor=0.41407),
    # The "in"/"mix" variants' structure: empty first stage (conv_in/conv_out are samplers),
    # pixel-(un)shuffle samplers, two attention scales, the 4x4 stage (16 tokens <= head dim 16)
    # takes the quadratic attention branch, per-stage decoder activations, no shortcuts.
    "shuffle": dict(
        latent_channels=16, attention_head_dim=16,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
        encoder_layers_per_block=(0, 1, 1, 1), decoder_layers_per_block=(0, 1, 1, 1),
        encoder_qkv_multiscales=((), (), (3, 5), (3, 5)), decoder_qkv_multiscales=((), (), (3, 5), ()),
        decoder_act_fns=("relu", "gelu", "silu", "silu"), encoder_out_shortcut=False,
        decoder_in_shortcut=False),
}
ATOL = 1e-4

# diffusers 0.42.1 AutoencoderDC built with the dc-ae-f32c32-sana-1.0 config (meta device).
# UNCONFIRMED against a published figure: no parameter count is stated on the model card.
DIFFUSERS_F32C32 = 312_250_275


@nnx.jit
def _encode(model, x):
  return model.encode(x)


@nnx.jit
def _decode(model, z):
  return model.decode(z)


def _reference(model, x):
  with torch.no_grad():
    z = model.encode(nchw(x)).latent
    images = model.decode(z).sample
  return z.permute(0, 2, 3, 1).numpy(), images.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def oracle(request, tmp_path_factory):
  torch.manual_seed(0)
  model = perturb_(diffusers.AutoencoderDC(**CASES[request.param]).eval(), 0.05)
  path = save_tiny(model, tmp_path_factory.mktemp(request.param))
  x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  return model, path, hf.from_pretrained(path), x, _reference(model, x)


def test_encode_decode_match_diffusers(oracle):
  _, _, ours, x, (z, images) = oracle
  z_ours = np.asarray(_encode(ours, jnp.asarray(x)))
  assert z_ours.shape == z.shape
  np.testing.assert_allclose(z_ours, z, atol=ATOL)
  np.testing.assert_allclose(np.asarray(_decode(ours, jnp.asarray(z))), images, atol=ATOL)


def test_export_loads_in_diffusers(oracle, tmp_path):
  model, _, ours, x, (z, images) = oracle
  hf.save_pretrained(ours, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f)["_class_name"] == "AutoencoderDC"
  theirs = diffusers.AutoencoderDC.from_pretrained(str(tmp_path)).eval()
  for key, want in model.config.items():
    if key.startswith("_"):
      continue
    got = theirs.config[key]
    if isinstance(want, str) and isinstance(got, list):     # per-stage values are written expanded
      want = [want] * len(got)
    assert json.dumps(got) == json.dumps(want), key
  z2, images2 = _reference(theirs, x)
  np.testing.assert_allclose(z2, z, atol=1e-6)
  np.testing.assert_allclose(images2, images, atol=1e-6)


def test_f32c32_layout_without_allocating():
  cfg = dcae_f32c32_config()
  assert cfg.spatial_compression_ratio == 32 and cfg.scaling_factor == 0.41407
  abstract = nnx.eval_shape(lambda: AutoencoderDC(cfg, rngs=nnx.Rngs(0)))
  assert sharding.param_count(abstract) == DIFFUSERS_F32C32
  graphdef, state = nnx.split(abstract)
  image = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
  z = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state, image)
  assert z.shape == (1, 2, 3, 32)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).decode(x), state, z)
  assert out.shape == (1, 64, 96, 3)


def test_pixel_shuffle_matches_torch():
  x = np.random.RandomState(1).randn(2, 4, 6, 12).astype(np.float32)
  ref = torch.nn.functional.pixel_unshuffle(nchw(x), 2).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(np.asarray(pixel_unshuffle(jnp.asarray(x), 2)), ref)
  np.testing.assert_array_equal(np.asarray(pixel_shuffle(pixel_unshuffle(jnp.asarray(x), 2), 2)), x)


@pytest.mark.parametrize("key, value, match", [
    ("decoder_norm_types", "batch_norm", "'batch_norm', which is not supported"),
    ("encoder_block_types", "AttnBlock", "block type 'AttnBlock' is not supported"),
    ("use_quant_conv", True, "option 'use_quant_conv' is not implemented"),
])
def test_unsupported_config_option_is_a_clear_error(tmp_path, key, value, match):
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump({"_class_name": "AutoencoderDC", **CASES["sana_like"], key: value}, f)
  with pytest.raises(ConfigError, match=match) as err:
    hf.from_pretrained(str(tmp_path))
  assert "\n" not in str(err.value)
