"""SANA transformer against diffusers' SanaTransformer2DModel (tiny random configs)."""
import json
import os

import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
import torch  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxmodels import hf, sharding  # noqa: E402
from jaxmodels.errors import ConfigError  # noqa: E402
from jaxmodels.flow.sana import SanaTransformer, sana_1600m_config  # noqa: E402
from oracles import nchw, perturb_, save_tiny  # noqa: E402

TINY = dict(in_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
            caption_channels=12, sample_size=8)
CASES = {
    # SANA 1.0 layout: no qk-norm, no positional embedding, patch 1.
    "sana_1_0": dict(out_channels=4),
    # SANA 1.5 / Sprint features together: qk RMSNorm across heads, guidance embedding, patch 2,
    # sin-cos positions, affine pre-FFN norm, q/k/v bias, other cross-attention head split.
    "sana_1_5_sprint": dict(out_channels=6, num_cross_attention_heads=4, cross_attention_head_dim=4,
                            patch_size=2, interpolation_scale=1.0, qk_norm="rms_norm_across_heads",
                            norm_elementwise_affine=True, guidance_embeds=True, attention_bias=True),
}
# Rows: a padded caption, a 1-token caption, and an all-padding caption.
MASK = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.int64)
TIMESTEPS = np.array([999.0, 250.5, 3.0], np.float32)      # 1000·σ
GUIDANCE = np.array([4.5, 0.3, 1.0], np.float32)

# Published: "Sana-1.6B: 1604M" parameters (SANA paper, arXiv 2410.10629, model table). The exact
# count below is diffusers 0.42.1 `SanaTransformer2DModel(**sana_1600m_config fields)` (meta device).
PUBLISHED_1600M = 1_604_000_000
DIFFUSERS_1600M = 1_604_462_752
DIFFUSERS_1600M_QK_NORM = 1_604_641_952


def _inputs(hw, seed=0):
  rs = np.random.RandomState(seed)
  x = rs.randn(3, *hw, 4).astype(np.float32)
  y = rs.randn(3, MASK.shape[1], TINY["caption_channels"]).astype(np.float32)
  return x, y


def _reference(model, x, y, mask, guided):
  kw = {"guidance": torch.tensor(GUIDANCE)} if guided else {}
  with torch.no_grad():
    out = model(nchw(x), torch.tensor(y), torch.tensor(TIMESTEPS),
                encoder_attention_mask=None if mask is None else torch.tensor(mask), **kw).sample
  return out.permute(0, 2, 3, 1).numpy()


@nnx.jit
def _forward(model, x, t, y, mask, guidance):
  return model(x, t, y, mask, guidance=guidance)


def _ours(model, x, y, mask, guided):
  return np.asarray(_forward(model, jnp.asarray(x), jnp.asarray(TIMESTEPS), jnp.asarray(y),
                             None if mask is None else jnp.asarray(mask),
                             jnp.asarray(GUIDANCE) if guided else None))


@pytest.fixture(scope="module", params=sorted(CASES))
def oracle(request, tmp_path_factory):
  torch.manual_seed(0)
  cfg = {**TINY, **CASES[request.param]}
  model = perturb_(diffusers.SanaTransformer2DModel(**cfg).eval(), 0.05)
  path = save_tiny(model, tmp_path_factory.mktemp(request.param))
  return cfg, model, path, hf.from_pretrained(path)


@pytest.mark.parametrize("hw", [(8, 8), (8, 12)])
def test_matches_diffusers(oracle, hw):
  cfg, model, _, ours = oracle
  guided = cfg.get("guidance_embeds", False)
  x, y = _inputs(hw)
  ref = _reference(model, x, y, MASK, guided)
  out = _ours(ours, x, y, MASK, guided)
  assert out.shape == (3, *hw, cfg["out_channels"])
  np.testing.assert_allclose(out[:2], ref[:2], atol=1e-4)
  # All-padding caption: diffusers adds −10000 to every logit in float32, a no-op for softmax but
  # it rounds the logits to ~1e-3 (the float32 spacing at 10⁴); we skip the bias, so allow that.
  np.testing.assert_allclose(out[2], ref[2], atol=1e-3)
  np.testing.assert_allclose(_ours(ours, x, y, None, guided), _reference(model, x, y, None, guided),
                             atol=1e-4)


def test_remat_matches(oracle):
  cfg, _, path, ours = oracle
  guided = cfg.get("guidance_embeds", False)
  x, y = _inputs((8, 8), seed=1)
  remat = hf.from_pretrained(path, remat="full")
  np.testing.assert_allclose(_ours(remat, x, y, MASK, guided), _ours(ours, x, y, MASK, guided), atol=1e-5)
  if cfg.get("patch_size", 1) > 1:
    with pytest.raises(ValueError, match="not divisible by patch_size 2"):
      ours(jnp.zeros((1, 5, 3, 4)), jnp.ones((1,)), jnp.zeros((1, 3, 12)), guidance=jnp.ones((1,)))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_matches_loop_and_diffusers(oracle, remat):
  cfg, model, path, ours = oracle
  guided = cfg.get("guidance_embeds", False)
  x, y = _inputs((8, 12), seed=3)
  scanned = hf.from_pretrained(path, scan_layers=True, remat=remat)
  assert scanned.blocks.blocks.attn1.q.kernel.get_value().shape[0] == TINY["num_layers"]   # [L, ...]
  out = _ours(scanned, x, y, MASK, guided)
  np.testing.assert_allclose(out, _ours(ours, x, y, MASK, guided), atol=1e-5)
  np.testing.assert_allclose(out[:2], _reference(model, x, y, MASK, guided)[:2], atol=1e-4)


def test_scanned_export_loads_in_diffusers(oracle, tmp_path):
  _, model, path, _ = oracle
  hf.save_pretrained(hf.from_pretrained(path, scan_layers=True), str(tmp_path))
  theirs = diffusers.SanaTransformer2DModel.from_pretrained(str(tmp_path)).eval()
  for name, tensor in model.state_dict().items():
    np.testing.assert_array_equal(theirs.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)


def test_export_loads_in_diffusers(oracle, tmp_path):
  cfg, model, _, ours = oracle
  guided = cfg.get("guidance_embeds", False)
  hf.save_pretrained(ours, str(tmp_path))
  with open(os.path.join(tmp_path, "config.json")) as f:
    assert json.load(f)["_class_name"] == "SanaTransformer2DModel"
  theirs = diffusers.SanaTransformer2DModel.from_pretrained(str(tmp_path)).eval()
  for key, value in model.config.items():
    if not key.startswith("_"):
      assert theirs.config[key] == value, key
  x, y = _inputs((8, 8), seed=2)
  np.testing.assert_allclose(_reference(theirs, x, y, MASK, guided), _reference(model, x, y, MASK, guided),
                             atol=1e-6)


def test_1600m_param_count_without_allocating():
  abstract = nnx.eval_shape(lambda: SanaTransformer(sana_1600m_config(), rngs=nnx.Rngs(0)))
  count = sharding.param_count(abstract)
  assert count == DIFFUSERS_1600M
  assert abs(count - PUBLISHED_1600M) / PUBLISHED_1600M < 0.02
  # SANA 1.5's qk-norm adds 4 RMSNorm weights of width 2240 per layer.
  assert DIFFUSERS_1600M_QK_NORM - DIFFUSERS_1600M == 20 * 4 * 2240
  shapes = {".".join(map(str, p)): v.get_value().shape
            for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
  assert shapes["blocks.0.attn1.q.kernel"] == (2240, 70, 32)
  assert shapes["blocks.0.attn2.k.kernel"] == (2240, 20, 112)
  assert shapes["blocks.0.ff.inverted_value.kernel"] == (1, 1, 2240, 5600)
  assert shapes["caption_projection.linear_1.kernel"] == (2304, 2240)
  assert len(abstract.blocks) == 20
  scanned = nnx.eval_shape(lambda: SanaTransformer(sana_1600m_config(scan_layers=True), rngs=nnx.Rngs(0)))
  assert sharding.param_count(scanned) == DIFFUSERS_1600M
  assert scanned.blocks.blocks.attn1.q.kernel.get_value().shape == (20, 2240, 70, 32)


@pytest.mark.parametrize("key, value, match", [
    ("qk_norm", "layer_norm", "qk_norm='layer_norm' is not supported"),
    ("dropout", 0.1, "dropout=0.1 is not supported"),
    ("use_rope", True, "option 'use_rope' is not implemented"),
])
def test_unsupported_config_option_is_a_clear_error(tmp_path, key, value, match):
  with open(os.path.join(tmp_path, "config.json"), "w") as f:
    json.dump({"_class_name": "SanaTransformer2DModel", **TINY, key: value}, f)
  with pytest.raises(ConfigError, match=match) as err:
    hf.from_pretrained(str(tmp_path))
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (1, 2, 5), (2, 0, 3)])
def test_cpu_depthwise_path_equals_grouped_convolution(stride, padding, k):
  import jax
  from jaxmodels.layers.conv import _depthwise_shifted_sum
  x = jax.random.normal(jax.random.key(0), (2, 9, 10, 6))
  kernel = jax.random.normal(jax.random.key(1), (k, k, 1, 6))
  ref = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((padding, padding), (padding, padding)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6)
  np.testing.assert_allclose(_depthwise_shifted_sum(x, kernel[:, :, 0], stride, padding), ref, atol=1e-5)
