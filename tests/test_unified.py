"""Unified models from the paper configs: tiny variants train a step and sample; full sizes are
checked with jax.eval_shape only (never allocated)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels import presets
from jaxmodels.errors import ConfigError
from jaxmodels.flow.lumina import LuminaNextDiT, blip3o_dit_config
from jaxmodels.llm import LLM
from jaxmodels.sharding import param_count
from jaxmodels.trainer import TrainState, make_optimizer, make_train_step, trainable_filter
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified.build import unified_config
from jaxmodels.unified.encoders import clip_pixels
from jaxmodels.vision import VisionTransformer
from jaxmodels.vision.vit import avg_pool_tokens

PAPER_CONFIGS = ["blip3o_8b", "blip3o_4b", "pisces_8b"]


def _config(name, arg=None):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _batch(model: UnifiedModel, b=4, seed=0):
  c = model.config
  rs = np.random.RandomState(seed)
  n = model.num_image_tokens
  text = rs.randint(1, c.llm.vocab_size - 1, (b, 6))
  ids = np.concatenate([text[:, :1], np.full((b, n), c.image_token_id), text[:, 1:]], 1)
  loss_mask = np.zeros_like(ids)
  loss_mask[:, -3:] = 1
  gen_ids = rs.randint(1, c.llm.vocab_size - 1, (b, 5))
  gen_mask = np.ones_like(gen_ids)
  gen_mask[0, :2] = 0   # one left-padded prompt
  und_side = c.und_encoder.image_size
  gen_side = c.gen_encoder.image_size if c.gen_encoder else c.gen_image_size
  return dict(und_image=jnp.asarray(rs.uniform(-1, 1, (b, und_side, und_side, 3)), jnp.float32),
              und_ids=jnp.asarray(ids), und_mask=jnp.ones(ids.shape, jnp.int32),
              und_loss_mask=jnp.asarray(loss_mask), gen_ids=jnp.asarray(gen_ids),
              gen_mask=jnp.asarray(gen_mask),
              gen_image=jnp.asarray(rs.uniform(-1, 1, (b, gen_side, gen_side, 3)), jnp.float32))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_tiny_paper_model_trains_a_step_and_samples(name):
  config = _config(name, "tiny")
  model = UnifiedModel(unified_config(config.model), rngs=nnx.Rngs(0))
  tx, lr = make_optimizer(config.optim.to_dict(), 10)
  wrt = trainable_filter(config.optim.trainable, config.optim.frozen)
  ts = TrainState(model, tx, wrt=wrt)
  before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(ts.model, nnx.Param))}
  graphdef, state = nnx.split(ts)
  batch = _batch(model)
  step = make_train_step(ts, lr_schedule=lr)
  state, metrics = step(state, batch, jax.random.key(0))
  state, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["gen_loss"]))
  ts = nnx.merge(graphdef, state)
  changed = {p: not np.array_equal(before[p], np.asarray(v.get_value()))
             for p, v in nnx.to_flat_state(nnx.state(ts.model, nnx.Param))}
  trainable = {p for p, _ in nnx.to_flat_state(nnx.state(ts.model, wrt))}
  frozen = set(changed) - trainable
  assert frozen == {p for p in changed if p[0] in {"llm", "und_encoder", "und_projector", "gen_encoder"}
                    and any(p[0] + "/" in f for f in config.optim.frozen)}
  assert not any(changed[p] for p in frozen), "a frozen parameter changed"
  assert changed[("queries",)] and any(changed[p] for p in trainable if p[0] == "dit")
  model = ts.model
  images = model.generate_image(batch["gen_ids"], batch["gen_mask"], jax.random.key(2), num_steps=3)
  side = model.config.gen_encoder.grid_size // model.config.gen_pool
  assert images.shape == (4, side, side, model.config.target_channels)
  tokens = model.answer(batch["und_image"], batch["und_ids"], batch["und_mask"], max_new_tokens=3)
  assert tokens.shape == (4, 3) and tokens.dtype == jnp.int32


def test_blip3o_sequential_stage_freezes_backbone():
  config = _config("blip3o_8b", "tiny")
  assert config.model.und_weight == 0.0 and "llm/.*" in config.optim.frozen


def _count(make):
  return param_count(nnx.eval_shape(make))


@pytest.mark.parametrize("preset,published,source", [
    ("llama3.1-8b", 8.03e9, "meta-llama/Llama-3.1-8B model card: 8.03B"),
    ("qwen2.5-7b", 7.61e9, "Qwen/Qwen2.5-7B model card: 7.61B"),
    ("qwen2.5-3b", 3.09e9, "Qwen/Qwen2.5-3B model card: 3.09B"),
    ("qwen2.5-0.5b", 0.49e9, "Qwen/Qwen2.5-0.5B model card: 0.49B"),
    ("qwen3-1.7b", 1.7e9, "Qwen/Qwen3-1.7B model card: 1.7B"),
])
def test_full_size_llm_param_counts(preset, published, source):
  n = _count(lambda: LLM(presets.llm_preset(preset, scan_layers=True), rngs=nnx.Rngs(0)))
  assert abs(n - published) / published < 0.02, (n, source)


@pytest.mark.parametrize("preset,published,source", [
    ("siglip-so400m-patch14-384", 0.428e9, "spec §1: SigLIP-so400m vision ≈ 0.43B"),
    ("clip-vit-l-14-336", 0.304e9, "openai/clip-vit-large-patch14-336 vision tower: 304M"),
])
def test_full_size_vision_param_counts(preset, published, source):
  n = _count(lambda: VisionTransformer(presets.vision_preset(preset, scan_layers=True), rngs=nnx.Rngs(0)))
  assert abs(n - published) / published < 0.02, (n, source)


def test_blip3o_dit_and_trainable_count():
  # spec §2.4: FFN 4864 gives ≈1.36B DiT parameters ("1.4B trainable" in the paper, with the queries).
  n = _count(lambda: LuminaNextDiT(blip3o_dit_config("4864", scan_layers=True), rngs=nnx.Rngs(0)))
  assert abs(n - 1.36e9) / 1.36e9 < 0.02, n


def test_config_errors_name_the_key():
  config = _config("blip3o_8b", "tiny")
  config.model.llm.num_layerz = 3
  with pytest.raises(ConfigError, match=r"config.model.llm.num_layerz: unknown field"):
    unified_config(config.model)
  config = _config("pisces_8b", "tiny")
  config.model.gen_target = "voxels"
  with pytest.raises(ConfigError, match="gen_target='voxels'"):
    unified_config(config.model)
  config = _config("pisces_8b", "tiny")
  config.model.llm.preset = "gpt5"
  with pytest.raises(ConfigError, match="unknown LLM preset 'gpt5'"):
    unified_config(config.model)


def test_pisces_edit_inputs_go_through_the_decoupled_generation_encoder():
  """Pisces: image inputs of a generation prompt are read by the pooled generation encoder and its
  own projector; the understanding encoder serves understanding only."""
  ucfg = unified_config(_config("pisces_8b", "tiny").model)
  assert ucfg.gen_projector
  model = UnifiedModel(ucfg, rngs=nnx.Rngs(0))
  n = (ucfg.gen_encoder.grid_size // ucfg.gen_pool) ** 2
  ids = jnp.asarray([[1] + [ucfg.image_token_id] * n + [5, 6]], jnp.int32)
  images = jax.random.uniform(jax.random.key(0), (1, ucfg.gen_encoder.image_size,
                                                  ucfg.gen_encoder.image_size, 3), minval=-1, maxval=1)
  before = model.prompt_embeddings(ids, images)
  patches = model.gen_encoder(clip_pixels(images))[:, 1:]   # CLIP-style: OpenAI-CLIP statistics, no class token
  np.testing.assert_allclose(before[:, 1:1 + n], model.gen_projector(avg_pool_tokens(patches, ucfg.gen_pool)),
                             rtol=1e-5, atol=1e-6)
  und = nnx.state(model.und_encoder, nnx.Param)
  nnx.update(model.und_encoder, jax.tree.map(lambda x: x + 1.0, und))
  np.testing.assert_array_equal(model.prompt_embeddings(ids, images), before)


def test_dense_label_head_adds_its_weighted_loss_and_trains_the_encoder():
  config = _config("shapes_tiny", "runlocal")
  config.model.update(und_dense_weight=0.5, und_dense_classes=[7, 11])
  model = UnifiedModel(unified_config(config.model), rngs=nnx.Rngs(0))
  batch = {k: v for k, v in _batch(model, b=2).items() if k.startswith("und")}
  g = model.config.und_encoder.grid_size
  labels = jnp.asarray(np.random.RandomState(1).randint(0, 7, (2, g, g, 2)), jnp.int32)

  @nnx.jit
  def parts(m):
    plain, metrics = m.understanding_loss(batch)
    total, with_labels = m.understanding_loss({**batch, "und_labels": labels})
    dense = lambda m_: m_.und_dense.loss(m_.image_tokens(batch["und_image"], with_features=True)[1],
                                        labels)[0]
    return plain, total, dense(m), nnx.grad(dense)(m), metrics, with_labels
  plain, total, dense, grads, metrics, with_labels = parts(model)
  assert "und_dense_loss" not in metrics and {"und_dense_acc_0", "und_dense_acc_1"} <= set(with_labels)
  np.testing.assert_allclose(total, plain + 0.5 * dense, rtol=1e-6)
  # the dense loss trains the encoder (and its head), never the LLM
  assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(nnx.state(grads.und_encoder)))
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(nnx.state(grads.llm)))
  config.model.und_dense_classes = []
  with pytest.raises(ConfigError, match="und_dense_weight > 0 needs an und_encoder and und_dense_classes"):
    unified_config(config.model)


def test_splice_repeats_the_image_for_each_group_of_placeholders():
  from jaxmodels.unified.model import splice_image_tokens
  text = jnp.zeros((1, 9, 2))
  ids = jnp.asarray([[1, 5, 5, 7, 5, 5, 8, 5, 5]])             # the image (n = 2) shown three times
  image = jnp.asarray([[[1.0, 1.0], [2.0, 2.0]]])
  out = splice_image_tokens(text, ids, image, 5)[0, :, 0]
  np.testing.assert_array_equal(out, [0, 1, 2, 0, 1, 2, 0, 1, 2])


def test_each_tower_reads_its_processors_normalisation():
  """SigLIP's processor maps [0, 1] with mean = std = 0.5, i.e. the model's [-1, 1] as is; CLIP-family
  towers (CLIP ViT-L, the EVA-CLIP-style gen encoder) and Qwen2.5-VL use OpenAI-CLIP mean/std."""
  from jaxmodels.unified.encoders import encoder_pixels
  from jaxmodels.vision.vit import VisionConfig
  white = jnp.ones((1, 2, 2, 3))
  siglip = VisionConfig(hidden_size=8, intermediate_size=8, num_layers=1, num_heads=2, image_size=4, patch_size=2)
  clip = VisionConfig(model_type="clip_vision_model", hidden_size=8, intermediate_size=8, num_layers=1,
                      num_heads=2, image_size=4, patch_size=2)
  np.testing.assert_array_equal(encoder_pixels(siglip, white), white)
  expected = [(1 - 0.48145466) / 0.26862954, (1 - 0.4578275) / 0.26130258, (1 - 0.40821073) / 0.27577711]
  np.testing.assert_allclose(encoder_pixels(clip, white)[0, 0, 0], expected, rtol=1e-6)
