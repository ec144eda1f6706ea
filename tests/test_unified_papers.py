"""MetaQuery, BLIP3o-NEXT and LaTtE-Flow as configs of the unified model: tiny variants train a step
and sample; LaTtE-Flow's layerwise experts run M of L layers per sampling step; full-size SANA-1.6B
checked with nnx.eval_shape only."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmodels import flow, presets
from jaxmodels.flow.sana import sana_1600m_config
from jaxmodels.llm import LLM
from jaxmodels.sharding import param_count
from jaxmodels.trainer import TrainState, make_optimizer, make_train_step, trainable_filter
from jaxmodels.unified import UnifiedModel
from jaxmodels.unified.build import unified_config
from jaxmodels.unified.connector import SanaDiT


def _model(name):
  config = importlib.import_module(f"configs.{name}").get_config("tiny")
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
  else:
    assert {f"gen_loss_group{k}" for k in range(2)} <= set(metrics)
    assert any(p.startswith("dit/layers") for p in changed)

  c = model.config
  gen = nnx.jit(lambda m, i, k, r: m.generate_image(i, k, r, num_steps=2, guidance=2.0))
  images = gen(model, batch["gen_ids"], batch["gen_mask"], jax.random.key(2))
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


def test_metaquery_editing_three_way_guidance():
  _, model = _model("metaquery_b")
  c = model.config
  batch = _batch(model)
  n = model.num_image_tokens
  ids = jnp.concatenate([jnp.full((2, n), c.image_token_id), batch["gen_ids"]], 1)
  mask = jnp.ones_like(ids)
  out = model.generate_image(ids, mask, jax.random.key(0), num_steps=1, guidance=3.0,
                             cond_images=batch["gen_image"], image_guidance=1.5)
  assert out.shape == (2, c.latent_size, c.latent_size, c.latent_channels)
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
  _, model = _model("latte_flow")
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
  n = _count(lambda: SanaDiT(sana_1600m_config(), rngs=nnx.Rngs(0)))
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
    if name == "blip3o_next_3b":
      assert ucfg.llm.vocab_size == 151936 + 65536 + 5
