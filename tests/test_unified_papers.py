"""MetaQuery, BLIP3o-NEXT and LaTtE-Flow as configs of the unified model: tiny variants train a step
and sample; LaTtE-Flow's layerwise experts run M of L layers per sampling step; full-size SANA-1.6B
checked with nnx.eval_shape only. BLIP3-o's understanding path runs through the Qwen2.5-VL tower.
BLIP3o-NEXT's latents come from its frozen in-model DC-AE, and its editing variant conditions on the
reference image's tokens and latents."""
import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels import flow, presets
from jaxmodels.errors import ConfigError
from jaxmodels.flow.dcae import AutoencoderDC, dcae_f32c32_config
from jaxmodels.flow.sana import sana_1600m_config
from jaxmodels.llm import LLM
from jaxmodels.sharding import param_count
from jaxmodels.trainer import TrainState, make_optimizer, make_train_step, trainable_filter
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified import latent_codec
from jaxmodels.unified.build import unified_config
from jaxmodels.flow.sana import SanaTransformer
from jaxmodels.unified.latte_flow import LatteFlow
from jaxmodels.vision.qwen2_5_vl import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Qwen25VisionConfig,
                                         Qwen25VisionTransformer)


def _model(name, arg="tiny", **model_overrides):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  for key, value in model_overrides.items():
    config.model[key] = value
  return config, UnifiedModel(unified_config(config.model), rngs=nnx.Rngs(0))


def _batch(model, b=2, seed=0):
  c = model.config
  rs = np.random.RandomState(seed)
  ids = rs.randint(1, 200, (b, 5))
  mask = np.ones_like(ids)
  mask[0, :2] = 0
  return dict(gen_ids=jnp.asarray(ids), gen_mask=jnp.asarray(mask),
              gen_latents=jnp.asarray(rs.normal(size=(b, c.latent_size, c.latent_size, c.latent_channels)),
                                      jnp.float32),
              gen_image=jnp.asarray(rs.uniform(-1, 1, (b, 32, 32, 3)), jnp.float32))


def _params(model):
  return {"/".join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", ["metaquery_b", "blip3o_next_3b", "latte_flow"])
def test_tiny_model_trains_a_step_and_samples(name):
  config, model = _model(name)
  tx, lr = make_optimizer(config.optim.to_dict(), 10)
  ts = TrainState(model, tx, wrt=trainable_filter(config.optim.trainable, config.optim.frozen))
  before = _params(ts.model)
  graphdef, state = nnx.split(ts)
  batch = _batch(model)
  step = make_train_step(ts, lr_schedule=lr)
  state, metrics = step(state, batch, jax.random.key(0))
  state, metrics = step(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics["loss"]))
  model = nnx.merge(graphdef, state).model
  after = _params(model)
  changed = {p for p in before if not np.array_equal(before[p], after[p])}
  assert not any(p.startswith(("llm/", "und_")) for p in changed) or name == "blip3o_next_3b"
  if name == "metaquery_b":
    # Only the new vocabulary rows (their own table) train among the embeddings; the LLM is frozen.
    assert "query_embed" in changed and "llm/embed/embedding" not in changed
    assert any(p.startswith("connector/encoder") for p in changed)
    assert any(p.startswith("dit/blocks") for p in changed)          # SANA fully fine-tuned
  elif name == "blip3o_next_3b":
    assert "gen_ce" in metrics and np.isfinite(float(metrics["gen_flow_loss"]))
    assert any(p.startswith("llm/") for p in changed)
    assert not any(p.startswith("image_tokenizer/") for p in changed)
    assert any(p.startswith("dit/caption") for p in changed)
    assert not any(p.startswith("dit/") and not p.startswith("dit/caption") for p in changed)
    assert any(p.startswith("vae/") for p in before) and not any(p.startswith("vae/") for p in changed)
  else:
    assert {f"gen_loss_group{k}" for k in range(2)} <= set(metrics)
    assert any(p.startswith("dit/layers") for p in changed)

  c = model.config
  gen = nnx.jit(lambda m, i, k, r: m.generate_image(i, k, r, num_steps=2, guidance=2.0))
  images = gen(model, batch["gen_ids"], batch["gen_mask"], jax.random.key(2))
  if c.vae is not None:   # BLIP3o-NEXT: sampled latents decoded by the in-model DC-AE
    assert images.shape == (2, 32, 32, 3) and float(jnp.abs(images).max()) <= 1.0
  else:
    assert images.shape == (2, c.latent_size, c.latent_size, c.latent_channels)
  assert np.all(np.isfinite(np.asarray(images)))
  n = model.num_image_tokens
  ids = jnp.concatenate([batch["gen_ids"][:, :1], jnp.full((2, n), c.image_token_id), batch["gen_ids"][:, 1:]], 1)
  tokens = model.answer(batch["gen_image"], ids, jnp.ones_like(ids), max_new_tokens=2)
  assert tokens.shape == (2, 2) and tokens.dtype == jnp.int32


def test_blip3o_next_samples_image_tokens_in_the_codebook():
  _, model = _model("blip3o_next_3b")
  batch = _batch(model)
  codes = model.sample_image_tokens(batch["gen_ids"], batch["gen_mask"], jax.random.key(0))
  t = model.config.image_tokenizer
  assert codes.shape == (2, model.image_tokenizer.grid_size(t.scale) ** 2)
  assert np.all((np.asarray(codes) >= 0) & (np.asarray(codes) < t.codebook_size))
  tok = model.image_codes(batch["gen_image"])
  assert tok.shape == codes.shape and tok.dtype == jnp.int32


def test_blip3o_next_latent_target_is_the_frozen_dcae():
  """gen_target="latents" with the in-model DC-AE: x₀ = vae.encode(gen_image) · scaling_factor (SANA:
  no shift; batch gen_latents are not read), `decode` undoes the scaling, the vae is never trainable."""
  config, model = _model("blip3o_next_3b")
  c = model.config
  assert isinstance(model.vae, AutoencoderDC) and c.vae.scaling_factor == 0.41407
  assert c.generates_pixels and c.output_image_size == c.latent_size * c.vae.spatial_compression_ratio == 32
  assert c.vae.encoder_block_types == ("ResBlock",) * 2 + ("EfficientViTBlock",) * 2   # f32c32's structure
  batch = _batch(model)
  x0, raw, images, raw_images = nnx.jit(lambda m, b: (
      m.batch_target(b), m.vae.encode(b["gen_image"]), latent_codec.decode(m.vae, b["gen_latents"], c),
      m.vae.decode(b["gen_latents"] / 0.41407)))(model, batch)
  assert x0.shape == (2, c.latent_size, c.latent_size, c.latent_channels) and images.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(x0, raw * 0.41407, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(images, jnp.clip(raw_images, -1, 1), rtol=1e-5, atol=1e-6)
  trainable = {p[0] for p, _ in nnx.to_flat_state(nnx.state(model, trainable_filter(config.optim.trainable,
                                                                                      config.optim.frozen)))}
  assert "vae" not in trainable and "image_tokenizer" not in trainable and "llm" in trainable
  # Without a vae the precomputed latents are the target.
  config.model.vae = None
  ucfg = unified_config(config.model)
  assert ucfg.vae is None and not ucfg.generates_pixels
  config.model.vae = dict(latent_channels=4)
  with pytest.raises(ConfigError, match=r"config.model.vae.latent_channels=4 must equal"):
    unified_config(config.model)


def test_blip3o_next_dcae_loads_through_init_hf(tmp_path):
  """config.init.hf.vae = a diffusers AutoencoderDC directory fills the model's frozen DC-AE."""
  from jaxmodels import hf, sharding
  from jaxmodels.trainer.setup import initialize
  config, model = _model("blip3o_next_3b")
  source = AutoencoderDC(model.config.vae, rngs=nnx.Rngs(7))
  hf.save_pretrained(source, str(tmp_path / "vae"))
  tx, _ = make_optimizer(config.optim.to_dict(), 10)
  ts = TrainState(model, tx, wrt=trainable_filter(config.optim.trainable, config.optim.frozen))
  config.init = dict(hf=dict(vae=str(tmp_path / "vae")))
  initialize(config, ts, sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}), None)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(source, nnx.Param)),
               jax.tree.map(np.asarray, nnx.state(ts.model.vae, nnx.Param)))


def test_init_hf_places_a_tower_by_its_own_per_tower_rules(tmp_path):
  """With per-tower rules, a tower loaded through config.init.hf lands in its own table's layout (here
  the DC-AE's conv output channels over fsdp), not the default table's (which replicates them)."""
  from jaxmodels import hf, sharding
  from jaxmodels.trainer.setup import initialize
  config, model = _model("blip3o_next_3b")
  hf.save_pretrained(AutoencoderDC(model.config.vae, rngs=nnx.Rngs(7)), str(tmp_path / "vae"))
  ts = TrainState(model, make_optimizer(config.optim.to_dict(), 10)[0])
  config.init = dict(hf=dict(vae=str(tmp_path / "vae")))
  rules = {"vae": (("conv_out", "fsdp"),), "default": sharding.DEFAULT_RULES}
  initialize(config, ts, sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}), rules)
  specs = [x.sharding.spec for x in jax.tree.leaves(nnx.state(ts.model.vae, nnx.Param))]
  assert any("fsdp" in tuple(s) for s in specs), specs


def test_blip3o_next_editing_conditions_on_the_reference():
  """`:edit` (spec §3.6): the reference's discrete tokens fill the prompt's placeholders and its DC-AE
  latents are appended to the DiT condition (s² tokens after <S_k> + n image tokens) and injected into
  the noisy input; the condition depends on the reference. Edit sampling and the edit loss are traced
  with eval_shape (their compiled runs would add ~1 min on CPU; the T2I ones run above)."""
  config, model = _model("blip3o_next_3b", "tiny,edit")
  c = model.config
  assert c.edit_latents == "cond_noise" and model.edit_latents is not None
  batch = _batch(model)
  n, s = model.num_image_tokens, c.latent_size
  ids = jnp.concatenate([batch["gen_ids"][:, :1], jnp.full((2, n), c.image_token_id),
                         batch["gen_ids"][:, 1:]], 1)
  mask = jnp.ones_like(ids)
  src = batch["gen_image"]
  codes = jnp.asarray(np.random.RandomState(1).randint(0, c.image_tokenizer.codebook_size, (2, n)), jnp.int32)
  edit_fn = nnx.jit(lambda m, r: (m.image_token_condition(ids, mask, codes, r),
                                   m.with_reference_codes(ids, r), m.image_codes(r), m.reference_latents(r)))
  cond, spliced, ref_codes, ref = edit_fn(model, src)
  assert cond.shape == (2, 1 + n + s * s, c.dit.caption_channels)
  assert ref.shape == (2, s, s, c.latent_channels)
  other = edit_fn(model, -src)[0]
  assert float(jnp.abs(cond[:, :1 + n] - other[:, :1 + n]).max()) > 1e-3    # through the AR tokens
  assert float(jnp.abs(cond[:, 1 + n:] - other[:, 1 + n:]).max()) > 1e-3    # through the latent tokens
  np.testing.assert_array_equal(spliced[:, 1:1 + n], ref_codes + c.image_vocab_offset)
  np.testing.assert_array_equal(spliced[:, 1 + n:], ids[:, 1 + n:])
  # Noise-space injection: zero-initialised (a pretrained DiT starts unchanged), then reads the reference.
  x = batch["gen_latents"]
  np.testing.assert_array_equal(model.edit_latents.inject(x, ref), x)
  model.edit_latents.noise_proj.kernel[...] = jnp.eye(c.latent_channels)
  np.testing.assert_allclose(model.edit_latents.inject(x, ref), x + ref, rtol=1e-6, atol=1e-6)
  out = nnx.eval_shape(lambda m: m.generate_image(ids, mask, jax.random.key(0), num_steps=1, guidance=2.0,
                                                  cond_images=src), model)
  assert out.shape == (2, 32, 32, 3)
  edit_batch = dict(gen_ids=ids, gen_mask=mask, gen_image=jnp.flip(src, 1), gen_cond_image=src)
  loss, metrics = nnx.eval_shape(lambda m: m.loss(edit_batch, jax.random.key(0)), model)
  assert loss.shape == () and {"gen_ce", "gen_flow_loss"} <= set(metrics)
  config.model.vae = None
  with pytest.raises(ConfigError, match=r"edit_latents='cond_noise' needs config.model.vae"):
    unified_config(config.model)


def test_metaquery_editing_three_way_guidance():
  _, model = _model("metaquery_b")
  c = model.config
  batch = _batch(model)
  n = model.num_image_tokens
  ids = jnp.concatenate([jnp.full((2, n), c.image_token_id), batch["gen_ids"]], 1)
  mask = jnp.ones_like(ids)
  out = model.generate_image(ids, mask, jax.random.key(0), num_steps=1, guidance=3.0,
                             cond_images=batch["gen_image"], image_guidance=1.5)
  assert out.shape == (2, c.output_image_size, c.output_image_size, 3)   # decoded by the in-model DC-AE
  assert np.all(np.isfinite(np.asarray(out)))


def _scan_lengths(jaxpr):
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      out.append(eqn.params["length"])
    for sub in jax.core.subjaxprs(eqn) if hasattr(jax.core, "subjaxprs") else ():
      out += _scan_lengths(sub)
    for v in eqn.params.values():
      if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
        out += _scan_lengths(v.jaxpr)
      elif hasattr(v, "eqns"):
        out += _scan_lengths(v)
  return out


def test_latte_step_runs_m_of_l_layers_and_matches_by_hand_sampling():
  _, model = _model("latte_flow", vae=None)     # precomputed latents: samples come back as latents
  dit = model.dit
  big_l, m = dit.config.num_layers, dit.config.group_size
  assert (big_l, m) == (4, 2)
  batch = _batch(model)
  ids, mask = batch["gen_ids"], batch["gen_mask"]
  cond = model.condition(ids, mask)
  x = batch["gen_latents"]
  # One velocity evaluation at a traced σ: exactly one scan over the layer stack, of length M.
  jaxpr = jax.make_jaxpr(lambda s: dit.velocity(x, s, cond, mask))(jnp.full((2,), 0.7))
  lengths = _scan_lengths(jaxpr.jaxpr)
  assert lengths == [m], lengths
  # unroll_group (None: unrolled on a GPU only): the group's layers as straight-line code or a scan,
  # the same velocity.
  v = {}
  for unroll in (True, False):
    d = LatteFlow(dataclasses.replace(dit.config, unroll_group=unroll), rngs=nnx.Rngs(0))
    nnx.update(d, nnx.state(dit))
    v[unroll] = d.velocity(x, jnp.full((2,), 0.7), cond, mask)
  np.testing.assert_allclose(np.asarray(v[True]), np.asarray(v[False]), rtol=1e-5, atol=1e-5)
  # σ -> group: noisiest interval to the first group.
  assert [int(dit.group_index(jnp.float32(s))) for s in (1.0, 0.6, 0.5, 0.01)] == [0, 0, 1, 1]

  steps = 4
  out = model.generate_image(ids, mask, jax.random.key(3), num_steps=steps, guidance=1.0)
  _, k_x = jax.random.split(jax.random.key(3))
  xs = jax.random.normal(k_x, out.shape, jnp.float32)
  grid = np.asarray(flow.inference_sigmas(steps))
  for i in range(steps):
    group = min(int(np.floor((1 - grid[i]) * 2)), 1)
    v = dit.velocity(xs, jnp.full((2,), grid[i]), cond, mask, group=group)
    xs = xs + (grid[i + 1] - grid[i]) * v
  np.testing.assert_allclose(np.asarray(out), np.asarray(xs), rtol=1e-4, atol=1e-4)


def test_latte_residual_attention_off_switch():
  config = importlib.import_module("configs.latte_flow").get_config("tiny")
  config.model.dit.residual_attention = False
  model = UnifiedModel(unified_config(config.model), rngs=nnx.Rngs(0))
  assert model.dit.layers.residual is False


def _count(make):
  return param_count(nnx.eval_shape(make))


def test_sana_1600m_dit_param_count():
  # Efficient-Large-Model/Sana_1600M_1024px_diffusers transformer: 1,604,462,752 parameters ("1.6B").
  n = _count(lambda: SanaTransformer(sana_1600m_config(), rngs=nnx.Rngs(0)))
  assert abs(n - 1.6e9) / 1.6e9 < 0.02, n


@pytest.mark.parametrize("preset,published,source", [
    ("qwen2-0.5b", 0.49e9, "Qwen/Qwen2-0.5B model card: 0.49B"),
    ("qwen2-1.5b", 1.54e9, "Qwen/Qwen2-1.5B model card: 1.54B"),
])
def test_new_llm_preset_param_counts(preset, published, source):
  n = _count(lambda: LLM(presets.llm_preset(preset, scan_layers=True), rngs=nnx.Rngs(0)))
  assert abs(n - published) / published < 0.02, (n, source)


def test_full_size_configs_build_with_eval_shape():
  for name in ["metaquery_b", "metaquery_l", "metaquery_xl", "blip3o_next_3b", "latte_flow"]:
    config = importlib.import_module(f"configs.{name}").get_config()
    ucfg = unified_config(config.model)
    if name == "latte_flow":
      assert (ucfg.dit.num_layers, ucfg.dit.num_groups, ucfg.dit.group_size) == (28, 4, 7)
    if name.startswith("metaquery"):
      assert ucfg.num_queries == 256 and ucfg.queries == "vocab"
    if name.startswith("metaquery") or name == "latte_flow":
      # Latents of SANA's frozen DC-AE f32c32 at 512 px: 16×16×32, encoded in the model from images.
      assert ucfg.vae == dcae_f32c32_config(dtype="bfloat16") and ucfg.output_image_size == 512
      assert (ucfg.latent_size, ucfg.latent_channels) == (16, 32) and "vae/.*" in config.optim.frozen
    if name == "blip3o_next_3b":
      assert ucfg.llm.vocab_size == 151936 + 65536 + 5
      # SANA's DC-AE f32c32 (bf16 compute): 1024 px <-> 32×32×32; 312,250,275 parameters as diffusers'
      # AutoencoderDC with the dc-ae-f32c32-sana-1.0 config (tests/test_dcae.py).
      assert ucfg.vae == dcae_f32c32_config(dtype="bfloat16") and ucfg.output_image_size == 1024
      assert _count(lambda: AutoencoderDC(ucfg.vae, rngs=nnx.Rngs(0))) == 312_250_275
      assert "vae/.*" in config.optim.frozen


@pytest.mark.parametrize("name", ["pisces_8b", "blip3o_4b", "blip3o_8b", "metaquery_b", "metaquery_l",
                                  "metaquery_xl", "blip3o_next_3b"])
def test_full_size_towers_scan_their_layers(name):
  """The full-size towers are scans (an unrolled 8B-class train step takes 20+ min to compile on CPU):
  LLM, ViTs, the Lumina / SANA DiT, and the Qwen2.5-VL tower as groups of (7 window + 1 full) blocks."""
  ucfg = unified_config(importlib.import_module(f"configs.{name}").get_config().model)
  towers = [ucfg.llm, ucfg.dit, ucfg.und_encoder, ucfg.gen_encoder]
  assert all(t.scan_layers for t in towers if t is not None), name
  if isinstance(ucfg.und_encoder, Qwen25VisionConfig):
    assert ucfg.und_encoder.layer_period == 8 and ucfg.und_encoder.depth == 32


def test_blip3o_understanding_runs_through_the_qwen_tower():
  """BLIP3-o's und_encoder is the Qwen2.5-VL tower: [-1, 1] images are renormalised to its processor's
  OpenAI-CLIP mean/std, its merged tokens (already the LLM width) are spliced without a projector,
  `answer` decodes from them, and the sequential stage keeps the tower frozen."""
  config, model = _model("blip3o_8b")
  c, enc = model.config, model.config.und_encoder
  assert isinstance(model.und_encoder, Qwen25VisionTransformer) and model.und_projector is None
  assert enc.fullatt_block_indexes == (enc.depth - 1,) and enc.window_merge < enc.grid_size
  n = model.num_image_tokens
  assert n == (enc.image_size // (enc.patch_size * enc.spatial_merge_size)) ** 2 == 16
  rs = np.random.RandomState(0)
  images = jnp.asarray(rs.uniform(-1, 1, (2, enc.image_size, enc.image_size, 3)), jnp.float32)
  tokens = nnx.jit(lambda m, x: m.image_tokens(x))(model, images)
  assert tokens.shape == (2, n, c.llm.hidden_size)
  pixels = ((np.asarray(images) + 1) / 2 - np.asarray(OPENAI_CLIP_MEAN)) / np.asarray(OPENAI_CLIP_STD)
  np.testing.assert_allclose(tokens, model.und_encoder(jnp.asarray(pixels, jnp.float32)), rtol=1e-5, atol=1e-5)
  text = rs.randint(1, 200, (2, 4))
  ids = jnp.asarray(np.concatenate([text[:, :1], np.full((2, n), c.image_token_id), text[:, 1:]], 1))
  mask = jnp.ones_like(ids).at[0, 0].set(0)
  embeds = model.und_embeddings(ids, images)
  np.testing.assert_allclose(embeds[:, 1:1 + n], tokens, rtol=1e-6, atol=1e-6)
  out = model.answer(images, ids, mask, max_new_tokens=3)
  assert out.shape == (2, 3) and out.dtype == jnp.int32
  trainable = {p[0] for p, _ in nnx.to_flat_state(nnx.state(model, trainable_filter(config.optim.trainable,
                                                                                      config.optim.frozen)))}
  assert "und_encoder" not in trainable and "llm" not in trainable and "dit" in trainable


@pytest.mark.parametrize("name,vision,out_hidden", [("blip3o_8b", "qwen2.5-vl-7b-vision", 3584),
                                                     ("blip3o_4b", "qwen2.5-vl-3b-vision", 2048)])
def test_blip3o_full_size_und_encoder_is_qwen2_5_vl(name, vision, out_hidden):
  ucfg = unified_config(importlib.import_module(f"configs.{name}").get_config().model)
  enc = ucfg.und_encoder
  assert enc == presets.qwen2_5_vl_vision_preset(vision, image_size=448, dtype="bfloat16", remat="full",
                                                 scan_layers=True)
  assert enc.out_hidden_size == ucfg.llm.hidden_size == out_hidden and ucfg.und_projector == "none"
  assert (enc.grid_size // ucfg.und_pool) ** 2 == 256
  if name == "blip3o_8b":
    # Qwen2.5-VL-7B's ViT incl. the merger: 676,550,144 parameters, what transformers'
    # Qwen2_5_VisionTransformerPretrainedModel has for its vision_config (tests/test_qwen2_5_vl_parity.py).
    assert _count(lambda: Qwen25VisionTransformer(enc, rngs=nnx.Rngs(0))) == 676_550_144


@pytest.mark.parametrize("name,vision,out_hidden", [("metaquery_l", "qwen2.5-vl-3b-vision", 2048),
                                                     ("metaquery_xl", "qwen2.5-vl-7b-vision", 3584)])
def test_metaquery_l_xl_und_encoder_is_qwen2_5_vl(name, vision, out_hidden):
  """MetaQuery-L/XL read images with their frozen Qwen2.5-VL's own tower (spec §4.1), at 448 px (256
  merged tokens of the LLM width, no projector); MetaQuery-B keeps its SigLIP stand-in + projector."""
  config = importlib.import_module(f"configs.{name}").get_config()
  ucfg = unified_config(config.model)
  enc = ucfg.und_encoder
  assert enc == presets.qwen2_5_vl_vision_preset(vision, image_size=448, dtype="bfloat16", remat="full",
                                                 scan_layers=True)
  assert enc.out_hidden_size == ucfg.llm.hidden_size == out_hidden and ucfg.und_projector == "none"
  assert (enc.grid_size // ucfg.und_pool) ** 2 == 256 and "und_encoder/.*" in config.optim.frozen
  assert unified_config(importlib.import_module("configs.metaquery_b").get_config().model).und_projector \
      == "mlp2x_gelu"
  if name == "metaquery_l":
    # Tiny: a same-structure Qwen tower; an editing prompt's placeholders take its tokens.
    _, model = _model(name)
    c = model.config
    assert isinstance(model.und_encoder, Qwen25VisionTransformer) and model.und_projector is None
    n = model.num_image_tokens
    ids = jnp.concatenate([jnp.full((2, n), c.image_token_id), jnp.arange(1, 11).reshape(2, 5)], 1)
    images = jnp.zeros((2, c.und_encoder.image_size, c.und_encoder.image_size, 3))
    cond = nnx.eval_shape(lambda m: m.condition(ids, jnp.ones_like(ids), images), model)
    assert cond.shape == (2, c.num_queries, c.dit.caption_channels)


def test_blip3o_qwen_und_encoder_config_errors():
  config = importlib.import_module("configs.blip3o_8b").get_config("tiny")
  config.model.und_encoder.windw_size = 16
  with pytest.raises(ConfigError, match=r"config.model.und_encoder.windw_size: unknown field for Qwen25Vision"):
    unified_config(config.model)
  config = importlib.import_module("configs.blip3o_8b").get_config("tiny")
  config.model.und_encoder.out_hidden_size = 48
  with pytest.raises(ConfigError, match=r"und_projector='none' needs the und_encoder's output width \(48\)"):
    unified_config(config.model)
  config.model.und_projector = "linear"                      # a projector from the merger width instead
  model = nnx.eval_shape(lambda: UnifiedModel(unified_config(config.model), rngs=nnx.Rngs(0)))
  assert model.und_projector.fc1.kernel.shape == (48, 64)
  config = importlib.import_module("configs.blip3o_8b").get_config("tiny")
  config.model.gen_encoder = dict(model_type="qwen2_5_vl_vision")
  with pytest.raises(ConfigError, match=r"config.model.gen_encoder: the Qwen2.5-VL vision tower is supported"):
    unified_config(config.model)
