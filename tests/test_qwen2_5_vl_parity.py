"""Qwen2.5-VL vision tower against transformers (tiny random config) and the 7B preset's size."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (  # noqa: E402
    Qwen2_5_VisionTransformerPretrainedModel)
from transformers.vision_utils import get_vision_window_index  # noqa: E402

from jaxmodels import hf, presets, sharding  # noqa: E402
from jaxmodels.errors import ConfigError  # noqa: E402
from jaxmodels.vision.qwen2_5_vl import (Qwen25VisionConfig, Qwen25VisionTransformer,  # noqa: E402
                                         images_to_patches, window_order)
from oracles import perturb_, save_tiny  # noqa: E402

# patch 4, merge 2, window 16 px = 2×2 merged tokens = 4×4 patches per window.
TINY = dict(depth=4, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=4, window_size=16,
            fullatt_block_indexes=[1, 3], out_hidden_size=48)
GRIDS = {
    # two images of different sizes; 10×14 patches = 5×7 merged -> 3×4 windows, the edge ones partial
    "two_images": [[1, 10, 14], [1, 6, 4]],
    # a 2-frame video (windows and full attention stay inside each frame) next to an image
    "video_and_image": [[2, 4, 6], [1, 8, 8]],
}


def _tiny_config():
  return transformers.Qwen2_5_VLVisionConfig(**TINY)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
  torch.manual_seed(0)
  model = perturb_(Qwen2_5_VisionTransformerPretrainedModel(_tiny_config()).eval(), 0.05)
  return model, save_tiny(model, tmp_path_factory.mktemp("qwen2_5_vl_vision"))


# Every model call is jitted: on CPU one compile is much faster than eager op-by-op compiles.


def _patches(grid, seed=0):
  n = int(np.prod(np.asarray(grid), -1).sum())
  return np.random.RandomState(seed).uniform(-1, 1, (n, 3 * 2 * 4 * 4)).astype(np.float32)


def _reference(model, patches, grid):
  with torch.no_grad():
    return model(torch.tensor(patches), grid_thw=torch.tensor(grid), output_hidden_states=True)


def _hf_token_order(grid):
  """HF keeps hidden states in window order: the processor-order index of each of its rows."""
  units, _ = get_vision_window_index(torch.tensor(grid), spatial_merge_size=2, window_size=16, patch_size=4)
  return (units.numpy()[:, None] * 4 + np.arange(4)).reshape(-1)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_encode_patches_matches_transformers(oracle, name):
  model, path = oracle
  grid = np.array(GRIDS[name])
  patches = _patches(grid)
  ref = _reference(model, patches, grid)
  ours = hf.from_pretrained(path)
  assert isinstance(ours, Qwen25VisionTransformer)
  out = nnx.jit(lambda m, p: m.encode_patches(p, grid, output_hidden_states=True))(ours, jnp.asarray(patches))
  np.testing.assert_allclose(out.image_tokens, ref.pooler_output.numpy(), atol=1e-4)
  order = _hf_token_order(grid)
  np.testing.assert_allclose(out.last_hidden_state[order], ref.last_hidden_state.numpy(), atol=1e-4)
  assert out.hidden_states.shape[0] == len(ref.hidden_states) == TINY["depth"] + 1
  for ours_h, ref_h in zip(out.hidden_states, ref.hidden_states):
    np.testing.assert_allclose(ours_h[order], ref_h.numpy(), atol=1e-4)


@pytest.mark.parametrize("grid", [[[1, 10, 14], [1, 6, 4]], [[2, 4, 6], [1, 8, 8]], [[1, 8, 8]],
                                  [[3, 2, 2], [1, 12, 2]]])
def test_window_order_matches_transformers(grid):
  units, lengths = window_order(np.array(grid), 2, 2)
  ref_units, ref_cu = get_vision_window_index(torch.tensor(grid), spatial_merge_size=2, window_size=16,
                                              patch_size=4)
  np.testing.assert_array_equal(units, ref_units.numpy())
  np.testing.assert_array_equal(np.concatenate([[0], np.cumsum(lengths)]), ref_cu.numpy())


def test_images_match_processor_and_transformers(oracle):
  model, path = oracle
  pixels = np.random.RandomState(1).uniform(-1, 1, (2, 24, 32, 3)).astype(np.float32)
  processor = transformers.Qwen2VLImageProcessorPil(
      patch_size=4, temporal_patch_size=2, merge_size=2, do_resize=False, do_rescale=False,
      do_normalize=False, do_convert_rgb=False)
  proc = processor(images=list(pixels), return_tensors="np", input_data_format="channels_last")
  ours = hf.from_pretrained(path)
  patches, grid = images_to_patches(jnp.asarray(pixels), ours.config)
  np.testing.assert_array_equal(grid, proc["image_grid_thw"])
  np.testing.assert_allclose(patches, proc["pixel_values"], atol=1e-6)
  ref = _reference(model, proc["pixel_values"], proc["image_grid_thw"]).pooler_output.numpy()
  tokens = nnx.jit(lambda m, x: m(x))(ours, jnp.asarray(pixels))
  assert tokens.shape == (2, (24 // 8) * (32 // 8), 48)
  np.testing.assert_allclose(tokens, ref.reshape(2, 12, 48), atol=1e-4)
  out = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(ours, jnp.asarray(pixels))
  assert out.hidden_states.shape == (5, 2, 6 * 8, 32) and out.last_hidden_state.shape == (2, 48, 32)
  np.testing.assert_allclose(out.image_tokens, tokens, atol=1e-6)


def test_jit_remat_and_grad(oracle):
  _, path = oracle
  pixels = jnp.asarray(np.random.RandomState(2).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32))
  loss_fn = lambda m: jnp.mean(m(pixels) ** 2)                           # noqa: E731
  loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(hf.from_pretrained(path, remat="full"))
  np.testing.assert_allclose(loss, nnx.jit(loss_fn)(hf.from_pretrained(path)), rtol=1e-5)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and all(v > 0 for v in norms)


@pytest.mark.parametrize("scan", [False, True])
def test_sharded_matches_unsharded(oracle, scan):
  _, path = oracle
  ours = hf.from_pretrained(path)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  sharded = sharding.shard_module(hf.from_pretrained(path, scan_layers=scan), mesh)
  q = sharded.blocks.blocks.attn.q if scan else sharded.blocks[0].attn.q
  assert len(q.kernel.get_value().sharding.device_set) == 8
  pixels = jnp.asarray(np.random.RandomState(4).uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32))
  call = nnx.jit(lambda m, x: m(x))
  with sharding.use_mesh(mesh):
    tokens = call(sharded, pixels)
  np.testing.assert_allclose(np.asarray(tokens), call(ours, pixels), atol=1e-5)


def test_full_checkpoint_loads_visual_tower(tmp_path):
  torch.manual_seed(1)
  text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=1, vocab_size=64, bos_token_id=0, eos_token_id=1,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
  config = transformers.Qwen2_5_VLConfig(vision_config=TINY, text_config=text, image_token_id=60,
                                         video_token_id=61, vision_start_token_id=62)
  full = perturb_(transformers.Qwen2_5_VLForConditionalGeneration(config).eval(), 0.05)
  path = save_tiny(full, tmp_path)
  grid = np.array(GRIDS["two_images"])
  patches = _patches(grid, seed=3)
  ref = _reference(full.model.visual, patches, grid).pooler_output.numpy()
  ours = hf.from_pretrained(path, module=Qwen25VisionTransformer)     # (the default: the whole model)
  assert isinstance(ours, Qwen25VisionTransformer) and ours.config.out_hidden_size == 48
  tokens = nnx.jit(lambda m, p: m.encode_patches(p, grid))(ours, jnp.asarray(patches))
  np.testing.assert_allclose(tokens, ref, atol=1e-4)


def test_save_pretrained_round_trip(oracle, tmp_path):
  model, path = oracle
  hf.save_pretrained(hf.from_pretrained(path), str(tmp_path))
  back = Qwen2_5_VisionTransformerPretrainedModel.from_pretrained(str(tmp_path)).eval()
  for name, tensor in model.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)


def _transformers_param_count(out_hidden_size: int) -> int:
  v = presets.QWEN25_VL_VISION_PRESETS["qwen2.5-vl-7b-vision"]
  config = transformers.Qwen2_5_VLVisionConfig(
      depth=v["depth"], hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
      num_heads=v["num_heads"], patch_size=v["patch_size"], temporal_patch_size=v["temporal_patch_size"],
      spatial_merge_size=v["spatial_merge_size"], window_size=v["window_size"],
      fullatt_block_indexes=list(v["fullatt_block_indexes"]), out_hidden_size=out_hidden_size)
  with torch.device("meta"):
    model = Qwen2_5_VisionTransformerPretrainedModel(config)
  return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,out_hidden", [("qwen2.5-vl-7b-vision", 3584), ("qwen2.5-vl-3b-vision", 2048)])
def test_preset_param_count(name, out_hidden):
  config = presets.qwen2_5_vl_vision_preset(name)
  assert config.out_hidden_size == out_hidden
  abstract = nnx.eval_shape(lambda: Qwen25VisionTransformer(config, rngs=nnx.Rngs(0)))
  count = sharding.param_count(abstract)
  assert count == _transformers_param_count(out_hidden)
  if name == "qwen2.5-vl-7b-vision":
    # ~0.67B for Qwen2.5-VL's ViT incl. the merger (the figure the task quotes); exactly 676,550,144.
    assert count == 676_550_144
    assert abs(count / 0.67e9 - 1) < 0.02


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_groups_match_loop_and_transformers(oracle, remat):
  # TINY's full-attention blocks 1, 3: a scan over 2 groups of (window, full).
  model, path = oracle
  grid = np.array(GRIDS["two_images"])
  patches = jnp.asarray(_patches(grid, seed=5))
  loop, scanned = hf.from_pretrained(path), hf.from_pretrained(path, scan_layers=True, remat=remat)
  assert scanned.config.layer_period == 2
  assert scanned.blocks.blocks.attn.q.kernel.get_value().shape[0] == TINY["depth"]   # stacked [L, ...]
  call = nnx.jit(lambda m, p: m.encode_patches(p, grid, output_hidden_states=True))
  ours, want = call(scanned, patches), call(loop, patches)
  for field in ("image_tokens", "last_hidden_state", "hidden_states"):
    np.testing.assert_allclose(getattr(ours, field), getattr(want, field), atol=1e-5, err_msg=field)
  ref = _reference(model, np.asarray(patches), grid)
  np.testing.assert_allclose(ours.image_tokens, ref.pooler_output.numpy(), atol=1e-4)
  pixels = jnp.asarray(np.random.RandomState(6).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32))
  loss_fn = lambda m: jnp.mean(m(pixels) ** 2)                           # noqa: E731
  (loss, grads), want_loss = nnx.jit(nnx.value_and_grad(loss_fn))(scanned), nnx.jit(loss_fn)(loop)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  assert all(np.isfinite(float(jnp.abs(g).sum())) for g in jax.tree.leaves(grads))


def test_scanned_save_pretrained_round_trip(oracle, tmp_path):
  model, path = oracle
  hf.save_pretrained(hf.from_pretrained(path, scan_layers=True), str(tmp_path))
  back = Qwen2_5_VisionTransformerPretrainedModel.from_pretrained(str(tmp_path)).eval()
  for name, tensor in model.state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)


def test_config_errors(oracle):
  _, path = oracle
  with pytest.raises(ConfigError, match="scan_layers.*fullatt_block_indexes"):
    hf.from_pretrained(path, scan_layers=True, fullatt_block_indexes=(1, 2))
  with pytest.raises(ConfigError, match="scan_layers"):
    Qwen25VisionConfig(depth=4, fullatt_block_indexes=(3,), scan_layers=True)
  assert Qwen25VisionConfig().layer_period == 8          # the released towers: 7, 15, 23, 31
  with pytest.raises(ConfigError, match="fullatt_block_indexes"):
    Qwen25VisionConfig(depth=4, fullatt_block_indexes=(4,))
  ours = hf.from_pretrained(path)
  with pytest.raises(ValueError, match="multiples of 8"):
    ours(jnp.zeros((1, 20, 24, 3)))
  with pytest.raises(ValueError, match="spatial merge size"):
    ours.encode_patches(jnp.zeros((15, 96)), [[1, 3, 5]])
  with pytest.raises(ValueError, match="needs"):
    ours.encode_patches(jnp.zeros((10, 96)), [[1, 4, 4]])
