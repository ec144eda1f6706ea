"""SigLIP2 NaFlex vision towers against transformers' Siglip2VisionModel (tiny random configs, f32).

HF's reference inputs are built with transformers' own NaFlex patchifier (`convert_image_to_patches`,
`pad_along_first_dim` of the Siglip2 image processor), so the (row, col, channel) patch order of our
NHWC path is checked against theirs, not against a re-implementation.
"""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from transformers.models.siglip2.image_processing_pil_siglip2 import (  # noqa: E402
    convert_image_to_patches, pad_along_first_dim)

from jaxmodels import hf  # noqa: E402
from jaxmodels.errors import ConfigError  # noqa: E402
from jaxmodels.vision import VisionConfig, VisionTransformer  # noqa: E402
from jaxmodels.vision.vit import position_resize_weights  # noqa: E402
from oracles import perturb_, save_tiny  # noqa: E402

P = 4                                  # patch size; the position table is 4x4 (num_patches=16)
TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, patch_size=P,
            num_patches=16)
TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=50)

CASES = {
    "siglip2_vision": lambda: transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**TINY)),
    "siglip2_full_model": lambda: transformers.Siglip2Model(
        transformers.Siglip2Config(vision_config=TINY, text_config=TEXT)),
}


def _vision(model):
  return model.vision_model if hasattr(model, "text_model") else model


def _images(b, h, w, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (b, h, w, 3)).astype(np.float32)


def _naflex_batch(images, max_patches):
  """What Siglip2ImageProcessor returns for already-resized NHWC images: patches, mask, spatial_shapes."""
  patches, masks, shapes = [], [], []
  for img in images:
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    p, m = pad_along_first_dim(convert_image_to_patches(chw, P), max_patches)
    patches.append(p)
    masks.append(m)
    shapes.append((chw.shape[1] // P, chw.shape[2] // P))
  return np.stack(patches).astype(np.float32), np.stack(masks), np.array(shapes, np.int64)


def _hf(model, patches, mask, shapes):
  with torch.no_grad():
    return _vision(model)(pixel_values=torch.tensor(patches), pixel_attention_mask=torch.tensor(mask),
                          spatial_shapes=torch.tensor(shapes), output_hidden_states=True)


def _close(ours, ref, rows=None):
  ref = ref.numpy() if hasattr(ref, "numpy") else ref
  ours = np.asarray(ours)
  if rows is not None:           # only each row's real patches
    for i, n in enumerate(rows):
      np.testing.assert_allclose(ours[..., i, :n, :], ref[..., i, :n, :], atol=1e-4)
  else:
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.fixture(scope="module", params=sorted(CASES))
def oracle(request, tmp_path_factory):
  model = perturb_(CASES[request.param]().eval(), 0.05)
  return request.param, model, save_tiny(model, tmp_path_factory.mktemp(request.param))


def test_config(oracle):
  _, _, path = oracle
  c = hf.from_pretrained(path).config
  assert (c.model_type, c.patch_embed, c.num_patches, c.position_grid, c.patch_size) == \
      ("siglip2_vision_model", "linear", 16, 4, P)


@pytest.mark.parametrize("size", [(16, 16), (16, 24)])   # grids 4x4 (native) and 4x6 (interpolated)
def test_full_images_match_transformers(oracle, size):
  """(a) grid == position grid; (b) a 4x6 grid resized from the 4x4 table (upsampled width)."""
  _, model, path = oracle
  x = _images(2, *size)
  patches, mask, shapes = _naflex_batch(x, (size[0] // P) * (size[1] // P))
  ref = _hf(model, patches, mask, shapes)
  out = hf.from_pretrained(path, scan_layers=size == (16, 24))(jnp.asarray(x), output_hidden_states=True)
  _close(out.last_hidden_state, ref.last_hidden_state)
  assert out.hidden_states.shape[0] == len(ref.hidden_states) == 3
  for ours_h, ref_h in zip(out.hidden_states, ref.hidden_states):
    _close(ours_h, ref_h)
  _close(out.pooler_output, ref.pooler_output)


def test_naflex_padded_batch_matches_transformers(oracle):
  """(c) two rows with different grids (4x6 and 3x5 from a 4x4 table), padded to 28 patches."""
  _, model, path = oracle
  imgs = [_images(1, 16, 24, seed=1)[0], _images(1, 12, 20, seed=2)[0]]
  patches, mask, shapes = _naflex_batch(imgs, 28)
  assert mask.sum(1).tolist() == [24, 15]
  ref = _hf(model, patches, mask, shapes)
  ours = hf.from_pretrained(path)
  out = ours.encode_patches(jnp.asarray(patches), jnp.asarray(shapes), jnp.asarray(mask),
                            output_hidden_states=True)
  _close(out.last_hidden_state, ref.last_hidden_state, rows=(24, 15))
  _close(out.pooler_output, ref.pooler_output)
  for ours_h, ref_h in zip(out.hidden_states, ref.hidden_states):
    _close(ours_h, ref_h, rows=(24, 15))
  # Traced spatial_shapes under jit (one compile for any grids of this (B, N)); default mask.
  def run(m, p, s):
    o = m.encode_patches(p, s, output_hidden_states=True)
    return o.last_hidden_state, o.pooler_output
  last, pooled = nnx.jit(run)(ours, jnp.asarray(patches), jnp.asarray(shapes))
  _close(last, ref.last_hidden_state, rows=(24, 15))
  _close(pooled, ref.pooler_output)


def test_position_resize_weights_match_torch_interpolate():
  """The resize equals F.interpolate(bilinear, align_corners=False, antialias=True) per row grid."""
  g, d = 4, 5
  table = np.random.RandomState(0).normal(size=(g, g, d)).astype(np.float32)
  shapes = [(4, 6), (3, 7), (2, 2), (7, 2), (1, 9), (4, 4)]   # up, down, mixed, identity
  n = max(h * w for h, w in shapes) + 2
  weights = np.asarray(position_resize_weights(jnp.asarray(shapes), n, g))
  for (h, w), wts in zip(shapes, weights):
    ref = torch.nn.functional.interpolate(torch.tensor(table).permute(2, 0, 1)[None], size=(h, w),
                                          mode="bilinear", align_corners=False, antialias=True)
    ref = ref[0].permute(1, 2, 0).reshape(h * w, d).numpy()
    resized = wts @ table.reshape(g * g, d)
    np.testing.assert_allclose(resized[:h * w], ref, atol=1e-5)
    np.testing.assert_allclose(resized[h * w:], np.broadcast_to(ref[0], (n - h * w, d)), atol=1e-5)


def test_export_loads_in_transformers(tmp_path):
  cfg = VisionConfig(model_type="siglip2_vision_model", hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, patch_size=P, image_size=16, patch_embed="linear", num_patches=16)
  # Random values for every parameter (norm scales around 1), set without running the initialisers.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))))
  rs = np.random.RandomState(0)
  leaves = [(path, var.replace(jnp.asarray(rs.normal(float(path[-1] == "scale"), 0.1, var.get_value().shape),
                                           jnp.float32)))
            for path, var in nnx.to_flat_state(state)]
  ours = nnx.merge(graphdef, nnx.from_flat_state(leaves))
  hf.save_pretrained(ours, str(tmp_path))
  theirs = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
  assert isinstance(theirs, transformers.Siglip2VisionModel)
  imgs = [_images(1, 16, 24, seed=3)[0], _images(1, 12, 20, seed=4)[0]]
  patches, mask, shapes = _naflex_batch(imgs, 28)
  ref = _hf(theirs, patches, mask, shapes)
  out = ours.encode_patches(jnp.asarray(patches), jnp.asarray(shapes), jnp.asarray(mask),
                            output_hidden_states=True)
  _close(out.last_hidden_state, ref.last_hidden_state, rows=(24, 15))
  _close(out.pooler_output, ref.pooler_output)
  back = hf.from_pretrained(str(tmp_path), scan_layers=True)
  x = jnp.asarray(_images(2, 16, 24))
  np.testing.assert_allclose(np.asarray(back(x)), np.asarray(ours(x)), atol=1e-5)


def test_errors():
  cfg = VisionConfig(hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4, image_size=16,
                     patch_size=P)
  naflex = nnx.eval_shape(lambda: VisionTransformer(cfg.replace(num_patches=16, patch_embed="linear"),
                                                    rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="multiples of the patch size"):
    naflex(jnp.zeros((1, 16, 18, 3)))
  with pytest.raises(ValueError, match="every grid needs"):
    naflex.encode_patches(jnp.zeros((1, 8, 48)), np.array([[3, 3]]))
  with pytest.raises(ValueError, match="NaFlex"):
    nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0))).encode_patches(
        jnp.zeros((1, 16, 48)), np.array([[4, 4]]))
  with pytest.raises(ConfigError, match="positive square"):
    cfg.replace(num_patches=12)
  with pytest.raises(ConfigError, match="needs num_patches"):
    cfg.replace(model_type="siglip2_vision_model")
