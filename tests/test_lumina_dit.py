"""Lumina-Next DiT against diffusers' `LuminaNextDiT2DModel` (tiny random oracles), the BLIP3-o
NextDiT-CrossAttn variant, HF export round trips and config errors."""
import functools
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
from jaxmodels.flow.embeddings import patchify, timestep_embedding, unpatchify  # noqa: E402
from jaxmodels.flow.lumina import (LuminaConfig, LuminaNextDiT, blip3o_dit_config,  # noqa: E402
                                   lumina_ffn_hidden_size, timestep_from_sigma, velocity_from_output)
from jaxmodels.hf import lumina_family  # noqa: E402
from jaxmodels.hf.safetensors_io import write_checkpoint  # noqa: E402
from jaxmodels.sharding import param_count  # noqa: E402
from oracles import nchw, perturb_  # noqa: E402

TINY = dict(sample_size=8, patch_size=2, in_channels=4, hidden_size=64, num_layers=2,
            num_attention_heads=4, num_kv_heads=2, multiple_of=16, cross_attention_dim=24)
ATOL = 1e-4


@functools.partial(nnx.jit, static_argnames=("rope_linear_factor", "rope_ntk_factor",
                                             "base_sequence_length"))
def _apply(model, x, t, cap, mask=None, **kw):
  """Jitted forward (one compile instead of one per eager op)."""
  return model(x, t, cap, mask, **kw)


def _ours(model, x, t, cap, mask=None, **kw):
  return np.asarray(_apply(model, *(None if a is None else jnp.asarray(a) for a in (x, t, cap, mask)), **kw))


def _perturbed(model):
  with torch.no_grad():
    if hasattr(model, "pad_token"):
      model.pad_token.zero_()          # torch.empty: give it defined values before perturbing
    perturb_(model, 0.05)
    gen = torch.Generator().manual_seed(1)
    for layer in model.layers:         # open the tanh cross-attention gates (zero at init)
      layer.gate.copy_(torch.randn(layer.gate.shape, generator=gen))
  return model.eval()


def _inputs(seed=0, batch=2, size=8, channels=4, cap_len=5, cap_dim=24, width=None):
  rs = np.random.RandomState(seed)
  x = rs.randn(batch, size, width or size, channels).astype(np.float32)
  t = np.array([0.3, 0.85][:batch], np.float32)
  cap = rs.randn(batch, cap_len, cap_dim).astype(np.float32)
  mask = np.ones((batch, cap_len), np.int32)
  mask[0, 3:] = 0                      # padded caption in the first row
  return x, t, cap, mask


def _torch_out(model, x, t, cap, mask, *, linear_factor=1.0, ntk_factor=1.0, kwargs=None):
  rope = diffusers.models.embeddings.get_2d_rotary_pos_embed_lumina(
      model.head_dim, 384, 384, linear_factor=linear_factor, ntk_factor=ntk_factor)
  with torch.no_grad():
    out = model(nchw(x), torch.tensor(t), torch.tensor(cap), torch.tensor(mask), rope,
                cross_attention_kwargs=kwargs or {}).sample
  return out.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
  torch.manual_seed(0)
  model = _perturbed(diffusers.LuminaNextDiT2DModel(**TINY))
  path = str(tmp_path_factory.mktemp("lumina"))
  model.save_pretrained(path)
  return model, path


@pytest.fixture(scope="module")
def ours(oracle):
  return hf.from_pretrained(oracle[1])


def test_config_from_diffusers(oracle, ours):
  model, _ = oracle
  c = ours.config
  assert (c.hidden_size, c.num_heads, c.resolved_num_kv_heads, c.cross_attention_dim) == (64, 4, 2, 24)
  assert c.learn_sigma and c.out_channels == 8 and c.time_convention == "data_level"
  assert c.resolved_ffn_hidden_size == model.layers[0].feed_forward.linear_1.out_features


def test_matches_diffusers(oracle, ours):
  model, _ = oracle
  x, t, cap, mask = _inputs()
  ref = _torch_out(model, x, t, cap, mask)
  out = _ours(ours, x, t, cap, mask)
  assert out.shape == ref.shape == (2, 8, 8, 8)
  print(f"lumina parity max abs diff: {np.abs(out - ref).max():.2e}")
  np.testing.assert_allclose(out, ref, atol=ATOL)
  # Sensitivity: the caption (through the gated cross-attention and the pooled t/c embedding).
  other = _ours(ours, x, t, cap[::-1].copy(), mask)
  assert np.abs(other - out).max() > 1e-2
  # Masked caption tokens are ignored.
  cap2 = cap.copy()
  cap2[0, 3:] = 100.0
  np.testing.assert_allclose(_ours(ours, x, t, cap2, mask), out, atol=1e-5)


def test_rope_scaling_and_proportional_attention_match(oracle, ours):
  model, _ = oracle
  x, t, cap, mask = _inputs(seed=1, size=8, width=4)          # non-square: 4x2 token grid
  ref = _torch_out(model, x, t, cap, mask, linear_factor=2.0, ntk_factor=1.5,
                   kwargs={"base_sequence_length": 4})
  out = _ours(ours, x, t, cap, mask, rope_linear_factor=2.0, rope_ntk_factor=1.5, base_sequence_length=4)
  assert out.shape == (2, 8, 4, 8)
  np.testing.assert_allclose(out, ref, atol=ATOL)


def test_scanned_and_jitted(oracle, ours):
  _, path = oracle
  x, t, cap, mask = _inputs(seed=2)
  scanned = hf.from_pretrained(path, scan_layers=True, remat="full")
  np.testing.assert_allclose(_ours(scanned, x, t, cap, mask), _ours(ours, x, t, cap, mask), atol=1e-5)


def test_sharded_matches_unsharded(ours):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  x, t, cap, mask = (np.concatenate([a, a[::-1]]) for a in _inputs(seed=5))     # batch 4
  with sharding.use_mesh(mesh):
    sharded = sharding.shard_module(ours, mesh)
    assert tuple(sharded.layers.blocks[0].attn1.to_q.kernel.sharding.spec) == ("fsdp", "tensor", None)
    out = _ours(sharded, jax.device_put(x, sharding.batch_sharding(mesh, 4)), t, cap, mask)
  np.testing.assert_allclose(out, _ours(ours, x, t, cap, mask), atol=1e-5)


def test_save_pretrained_round_trip(oracle, ours, tmp_path):
  model, _ = oracle
  hf.save_pretrained(ours, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f)["_class_name"] == "LuminaNextDiT2DModel"
  back = diffusers.LuminaNextDiT2DModel.from_pretrained(str(tmp_path)).eval()
  x, t, cap, mask = _inputs(seed=3)
  np.testing.assert_allclose(_torch_out(back, x, t, cap, mask), _torch_out(model, x, t, cap, mask),
                             atol=1e-6)


def test_timestep_and_velocity_conventions():
  sigma = jnp.array([0.0, 0.25, 1.0])
  np.testing.assert_allclose(timestep_from_sigma(sigma, "data_level"), [1.0, 0.75, 0.0])
  np.testing.assert_allclose(timestep_from_sigma(sigma, "sigma_1000"), [0.0, 250.0, 1000.0])
  out = jnp.arange(2 * 4, dtype=jnp.float32).reshape(1, 1, 2, 4)    # learn_sigma: C = 2, C_out = 4
  np.testing.assert_allclose(velocity_from_output(out, "data_level", 2), -out[..., :2])
  np.testing.assert_allclose(velocity_from_output(out, "sigma_1000", 2), out[..., :2])


def test_embedding_helpers():
  from diffusers.models.embeddings import get_timestep_embedding
  t = np.array([0.0, 0.5, 999.0], np.float32)
  ref = get_timestep_embedding(torch.tensor(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0)
  # f32 angles up to ~1000 rad: one-ulp differences in exp() give ~3e-5 at t = 999.
  np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), 256), ref.numpy(), atol=1e-4)
  x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
  np.testing.assert_array_equal(unpatchify(patchify(x, 2), 2, 3), x)
  first = np.asarray(patchify(x, 2, channels_first=True))[0, 0, 0]     # (C, p_h, p_w) order
  np.testing.assert_array_equal(first, np.asarray(x)[0, :2, :2, :].transpose(2, 0, 1).reshape(-1))


# ---------------------------------------------------------------------------------------------
# BLIP3-o NextDiT-CrossAttn: diffusers' Lumina-Next with a PixArt caption projection in front.


BLIP3O_TINY = dict(input_size=4, patch_size=1, in_channels=8, dim=32, n_layers=2, n_heads=2,
                   n_kv_heads=2, multiple_of=16, latent_embedding_size=24, learn_sigma=False)


@pytest.fixture(scope="module")
def blip3o_oracle(tmp_path_factory):
  """BLIP3-o's forward is diffusers' Lumina on `caption_projection(caption)`; build it from parts."""
  c = BLIP3O_TINY
  torch.manual_seed(1)
  dit = _perturbed(diffusers.LuminaNextDiT2DModel(
      sample_size=c["input_size"], patch_size=1, in_channels=c["in_channels"], hidden_size=c["dim"],
      num_layers=c["n_layers"], num_attention_heads=c["n_heads"], num_kv_heads=c["n_kv_heads"],
      multiple_of=c["multiple_of"], learn_sigma=False, cross_attention_dim=c["dim"]))
  proj = perturb_(diffusers.models.embeddings.PixArtAlphaTextProjection(
      c["latent_embedding_size"], c["dim"]), 0.05, seed=3).eval()
  tensors = {f"model.{k}": v.numpy() for k, v in dit.state_dict().items() if k != "pad_token"}
  tensors.update({f"model.caption_projection.{k}": v.numpy() for k, v in proj.state_dict().items()})
  path = str(tmp_path_factory.mktemp("blip3o"))
  write_checkpoint(path, {"model_type": "nextdit-crossattn", **c}, tensors, weights_name="model.safetensors")

  def forward(x, t, cap, mask):
    with torch.no_grad():
      projected = proj(torch.tensor(cap)).numpy()
    return _torch_out(dit, x, t, projected, mask)
  return forward, path


def test_blip3o_variant_matches_parts(blip3o_oracle, tmp_path):
  forward, path = blip3o_oracle
  ours = hf.from_pretrained(path)
  c = ours.config
  assert c.caption_projection and not c.use_pad_token and c.time_convention == "sigma_1000"
  x, _, cap, mask = _inputs(seed=4, size=4, channels=8, cap_len=6, cap_dim=24)
  t = np.array([250.0, 999.0], np.float32)                 # BLIP3-o feeds t = 1000·σ
  out = _ours(ours, x, t, cap, mask)
  assert out.shape == (2, 4, 4, 8)
  ref = forward(x, t, cap, mask)
  print(f"blip3o-variant parity max abs diff: {np.abs(out - ref).max():.2e}")
  np.testing.assert_allclose(out, ref, atol=ATOL)
  # The velocity helper: t = 1000·σ and no sign flip for this variant.
  v = nnx.jit(lambda m, *a: m.velocity(*a))(ours, jnp.asarray(x), jnp.asarray(t / 1000), jnp.asarray(cap),
                                             jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(v), out, atol=1e-5)
  # Our own export of the variant loads back identically.
  hf.save_pretrained(ours, str(tmp_path))
  again = hf.from_pretrained(str(tmp_path))
  np.testing.assert_allclose(_ours(again, x, t, cap, mask), out, atol=1e-6)


def test_blip3o_tiny_shapes():
  """Tiny BLIP3-o-style DiT (patch 1 over an 8×8 grid, 64 caption tokens), abstractly evaluated."""
  cfg = blip3o_dit_config("4864", caption_dim=40, in_channels=16, hidden_size=32, num_layers=2,
                          num_heads=2, num_kv_heads=2, ffn_hidden_size=48)
  model = nnx.eval_shape(lambda: LuminaNextDiT(cfg, rngs=nnx.Rngs(0)))
  assert model.caption_projection is not None and model.pad_token is None
  assert model.caption_projection.linear_1.kernel.shape == (40, 32)
  x = jax.ShapeDtypeStruct((3, 8, 8, 16), jnp.float32)
  cap = jax.ShapeDtypeStruct((3, 64, 40), jnp.float32)
  sigma = jax.ShapeDtypeStruct((3,), jnp.float32)
  assert jax.eval_shape(lambda m, *a: m(*a), model, x, sigma, cap).shape == (3, 8, 8, 16)
  assert jax.eval_shape(lambda m, *a: m.velocity(*a), model, x, sigma, cap).shape == (3, 8, 8, 16)


def test_blip3o_full_size_param_count():
  """Full-size BLIP3-o DiT with FFN width 4864: ≈1.36B parameters (abstract, nothing allocated)."""
  cfg = blip3o_dit_config("4864", scan_layers=True)    # scan: one abstract block, fast eval_shape
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.in_channels, cfg.cross_attention_dim) == \
      (24, 1792, 28, 1792, 3584)
  assert cfg.resolved_ffn_hidden_size == 4864 == lumina_ffn_hidden_size(1792, 256, None)
  model = nnx.eval_shape(lambda: LuminaNextDiT(cfg, rngs=nnx.Rngs(0)))
  count = param_count(model)
  assert abs(count - 1.36e9) / 1.36e9 < 0.05, count
  spec = jax.ShapeDtypeStruct
  out = jax.eval_shape(lambda m, *a: m(*a), model, spec((2, 8, 8, 1792), jnp.float32),
                       spec((2,), jnp.float32), spec((2, 64, 3584), jnp.float32))
  assert out.shape == (2, 8, 8, 1792)
  assert blip3o_dit_config("7168").resolved_ffn_hidden_size == 7168


def test_bad_configs_are_clear_errors(ours):
  with pytest.raises(ConfigError, match="head_dim 6"):
    LuminaConfig(hidden_size=24, num_heads=4)
  with pytest.raises(ConfigError, match="num_kv_heads"):
    LuminaConfig(hidden_size=64, num_heads=4, num_kv_heads=3)
  with pytest.raises(ConfigError, match="time_convention"):
    LuminaConfig(time_convention="t")
  with pytest.raises(ConfigError, match="ffn="):
    blip3o_dit_config("5000")
  with pytest.raises(ConfigError, match="ffn_hidden_size=40 cannot be expressed"):
    lumina_family.config_to_hf(ours.config.replace(ffn_hidden_size=40))    # what save_pretrained calls
  with pytest.raises(ConfigError, match="use_pad_token=False"):
    lumina_family.config_to_hf(ours.config.replace(use_pad_token=False))
  with pytest.raises(ValueError, match="not divisible by patch_size"):
    ours(jnp.zeros((1, 7, 8, 4)), jnp.zeros((1,)), jnp.zeros((1, 2, 24)))
  with pytest.raises(ValueError, match=r"expects latents \[B, H, W, 4\]"):
    ours(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1, 2, 24)))
