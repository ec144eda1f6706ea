"""SigLIP / CLIP vision towers against transformers (tiny random configs)."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxmodels import hf  # noqa: E402
from jaxmodels.vision import avg_pool_tokens  # noqa: E402
from oracles import nchw, perturb_, save_tiny  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8)

CASES = {
    "siglip_head": lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)),
    "siglip_nohead": lambda: transformers.SiglipVisionModel(
        transformers.SiglipVisionConfig(**TINY, vision_use_head=False)),
    "clip": lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY)),
    "siglip_full_model": lambda: transformers.SiglipModel(transformers.SiglipConfig(
        vision_config=TINY, text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                             num_attention_heads=4, vocab_size=50))),
    "clip_full_model": lambda: transformers.CLIPModel(transformers.CLIPConfig(
        vision_config=TINY, text_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                             num_attention_heads=4, vocab_size=50), projection_dim=16)),
}


def _vision(model):
  return model.vision_model if hasattr(model, "text_model") else model


@pytest.fixture(scope="module", params=sorted(CASES))
def oracle(request, tmp_path_factory):
  model = perturb_(CASES[request.param]().eval(), 0.05)
  return request.param, model, save_tiny(model, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("scan", [False, True])
def test_hidden_states_match_transformers(oracle, scan):
  name, model, path = oracle
  x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref = _vision(model)(pixel_values=nchw(x), output_hidden_states=True)
  ours = hf.from_pretrained(path, scan_layers=scan)
  out = ours(jnp.asarray(x), output_hidden_states=True)
  np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(ours(jnp.asarray(x)), ref.last_hidden_state.numpy(), atol=1e-4)
  assert out.hidden_states.shape[0] == len(ref.hidden_states) == 3
  for ours_h, ref_h in zip(out.hidden_states, ref.hidden_states):
    np.testing.assert_allclose(ours_h, ref_h.numpy(), atol=1e-4)
  if "nohead" not in name:
    np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=1e-4)


def test_wrong_image_size_is_a_clear_error(oracle):
  _, _, path = oracle
  with pytest.raises(ValueError, match="expects 32x32"):
    hf.from_pretrained(path)(jnp.zeros((1, 48, 48, 3)))


def test_avg_pool_tokens():
  tokens = jnp.arange(2 * 16 * 3, dtype=jnp.float32).reshape(2, 16, 3)   # 4x4 grid
  pooled = avg_pool_tokens(tokens, 2)
  assert pooled.shape == (2, 4, 3)
  grid = np.asarray(tokens).reshape(2, 4, 4, 3)
  np.testing.assert_allclose(pooled[:, 1], grid[:, 0:2, 2:4].mean(axis=(1, 2)))
  np.testing.assert_allclose(avg_pool_tokens(tokens, 4)[:, 0], np.asarray(tokens).mean(1))
  with pytest.raises(ValueError, match="square grid"):
    avg_pool_tokens(tokens, 3)


def test_conv_stem_keeps_the_token_grid_and_is_not_exportable(tmp_path):
  import jax
  from flax import nnx

  from jaxmodels.errors import CheckpointFormatError, ConfigError
  from jaxmodels.vision.vit import VisionConfig, VisionTransformer
  c = VisionConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, image_size=32,
                   patch_size=4, use_head=False, stem="conv", stem_width=8)
  tower = VisionTransformer(c, rngs=nnx.Rngs(0))
  # a stride-1 conv (3 -> 8), two stride-2 convs (8 -> 16 -> 32), a 1x1 conv to 16
  assert [k.kernel.shape for k in tower.patch_embed.convs] == [(3, 3, 3, 8), (3, 3, 8, 16), (3, 3, 16, 32)]
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  assert tower(x).shape == (2, 64, 16)
  # each token sees only its neighbourhood: changing the top-left corner leaves the stem's far tokens
  stem = tower.patch_embed(x)
  moved = tower.patch_embed(x.at[:, :4, :4].add(1.0))
  assert np.allclose(stem[:, -1], moved[:, -1]) and not np.allclose(stem[:, 0], moved[:, 0])
  with pytest.raises(ConfigError, match="power-of-two patch_size"):
    VisionConfig(patch_size=14, stem="conv")
  with pytest.raises(ConfigError, match="stem must be"):
    VisionConfig(stem="convolution")
  with pytest.raises(CheckpointFormatError, match="stem='conv'"):
    hf.save_pretrained(tower, tmp_path / "out")
