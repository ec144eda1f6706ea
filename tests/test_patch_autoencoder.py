"""The per-patch autoencoder target: exact palette decoding, learning, and its place in UnifiedModel."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxmodels.shapes_world import palette as pal
from jaxmodels.unified.patch_autoencoder import PatchAutoencoder, PatchAutoencoderConfig

PALETTE = tuple([pal.BACKGROUND_RGB] + [tuple(int(v) for v in rgb) for rgb in pal.PALETTE])


def _scenes(n, size=16, seed=0):
  """Random palette rectangles on the grey background: uint8-exact images in [-1, 1] + class maps."""
  rng = np.random.default_rng(seed)
  classes = np.zeros((n, size, size), np.int32)
  for i in range(n):
    for _ in range(2):
      x, y = rng.integers(0, size - 5, 2)
      w, h = rng.integers(3, 6, 2)
      classes[i, y:y + h, x:x + w] = rng.integers(1, len(PALETTE))
  images = np.asarray(PALETTE, np.float32)[classes] / 127.5 - 1.0
  return jnp.asarray(images), classes


def test_shapes_normalisation_and_exact_palette_decoding():
  cfg = PatchAutoencoderConfig(image_size=16, patch_size=4, latent_channels=6, hidden_size=32, palette=PALETTE)
  ae = PatchAutoencoder(cfg, rngs=nnx.Rngs(0))
  images, classes = _scenes(3)
  z = ae.encode(images)
  assert z.shape == (3, 4, 4, 6)
  np.testing.assert_allclose(jnp.mean(z, -1), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.mean(z * z, -1), 1.0, atol=1e-3)
  np.testing.assert_array_equal(ae.pixel_classes(images), classes)
  out = np.asarray(ae.decode(z))
  assert out.shape == (3, 16, 16, 3)
  colours = {tuple(np.round((c + 1) * 127.5).astype(int)) for c in out.reshape(-1, 3)}
  assert colours <= set(PALETTE)        # every decoded pixel is exactly a palette colour


def test_learns_to_reconstruct_palette_scenes():
  cfg = PatchAutoencoderConfig(image_size=16, patch_size=4, latent_channels=8, hidden_size=64, palette=PALETTE)
  ae = PatchAutoencoder(cfg, rngs=nnx.Rngs(0))
  images, classes = _scenes(64)
  graphdef, params = nnx.split(ae)
  tx = optax.adam(3e-3)

  def loss_fn(p):
    return nnx.merge(graphdef, p).reconstruction_loss(images)

  def step(carry, _):
    p, opt_state = carry
    (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, opt_state = tx.update(g, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), m

  (params, _), m = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=300))(params)
  assert float(m["ae_loss"][-1]) < 0.2 * float(m["ae_loss"][0])
  assert float(m["ae_pixel_acc"][-1]) > 0.97
  ae = nnx.merge(graphdef, params)
  decoded = ae.decode(ae.encode(images))
  assert np.mean(np.asarray(ae.pixel_classes(decoded)) == classes) > 0.97


def test_unified_model_generates_through_the_autoencoder():
  import importlib
  from jaxmodels.unified import UnifiedModel
  from jaxmodels.unified.build import unified_config
  config = importlib.import_module("configs.shapes_tiny").get_config("target=ae")
  ucfg = unified_config(config.model)
  assert ucfg.generates_pixels and ucfg.target_side == 8 and ucfg.target_channels == 8
  model = UnifiedModel(ucfg, rngs=nnx.Rngs(0))
  b = 2
  batch = dict(gen_ids=jnp.ones((b, 16), jnp.int32), gen_mask=jnp.ones((b, 16), jnp.int32),
               gen_image=jnp.asarray(np.asarray(PALETTE, np.float32)[np.zeros((b, 32, 32), int)] / 127.5 - 1))
  loss, metrics = nnx.jit(lambda m, b: m.loss(b, jax.random.key(0)))(model, batch)
  assert {"gen_flow_loss", "ae_loss", "ae_pixel_acc"} <= set(metrics)
  np.testing.assert_allclose(loss, metrics["gen_loss"] + metrics["ae_loss"], rtol=1e-5)
  x = nnx.jit(lambda m, i, k: m.generate_image(i, k, jax.random.key(1), num_steps=2))(
      model, batch["gen_ids"], batch["gen_mask"])
  assert x.shape == (b, 32, 32, 3)


def test_class_loss_trains_the_latents_not_the_decoder():
  cfg = PatchAutoencoderConfig(image_size=16, patch_size=4, latent_channels=6, hidden_size=32, palette=PALETTE)
  ae = PatchAutoencoder(cfg, rngs=nnx.Rngs(0))
  images, classes = _scenes(2)
  z = ae.encode(images)
  w = jnp.array([1.0, 0.0])
  g_model, g_z = nnx.grad(lambda m, z: m.class_loss(z, images, w), argnums=(0, 1))(ae, z)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(nnx.state(g_model)))
  assert float(jnp.abs(g_z[0]).max()) > 0 and float(jnp.abs(g_z[1]).max()) == 0.0   # weight 0: no gradient
  logits = ae.decode_logits(z[:1])
  want = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(classes[:1])).mean() / 2
  np.testing.assert_allclose(ae.class_loss(z, images, w), want, rtol=1e-5)


def test_gen_decoder_weight_adds_the_decoded_class_loss():
  import importlib
  import pytest
  from jaxmodels.errors import ConfigError
  from jaxmodels.unified import UnifiedModel
  from jaxmodels.unified.build import unified_config
  config = importlib.import_module("configs.shapes_tiny").get_config("target=ae")
  config.model.gen_decoder_weight = 0.5
  model = UnifiedModel(unified_config(config.model), rngs=nnx.Rngs(0))
  b = 2
  batch = dict(gen_ids=jnp.ones((b, 16), jnp.int32), gen_mask=jnp.ones((b, 16), jnp.int32),
               gen_image=jnp.asarray(np.asarray(PALETTE, np.float32)[np.zeros((b, 32, 32), int)] / 127.5 - 1))
  _, m = nnx.jit(lambda m, b: m.loss(b, jax.random.key(0)))(model, batch)
  assert float(m["gen_decoder_loss"]) > 0
  np.testing.assert_allclose(m["gen_loss"], m["gen_flow_loss"] + 0.5 * m["gen_decoder_loss"], rtol=1e-5)
  pixels = importlib.import_module("configs.shapes_tiny").get_config("target=pixels")
  pixels.model.gen_decoder_weight = 0.5
  with pytest.raises(ConfigError, match="gen_decoder_weight"):
    unified_config(pixels.model)
