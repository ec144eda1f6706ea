"""Qwen2.5-VL as a whole model (vision tower + M-RoPE language model) against transformers' tiny random
`Qwen2_5_VLForConditionalGeneration`: M-RoPE positions, logits, greedy decoding, HF import / export."""
import json
import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxmodels import hf  # noqa: E402
from jaxmodels.errors import CheckpointFormatError, ConfigError, JaxModelsError  # noqa: E402
from jaxmodels.hf import qwen2_5_vl_family  # noqa: E402
from jaxmodels.hf.safetensors_io import SafetensorsReader, write_checkpoint  # noqa: E402
from jaxmodels.llm import LLM  # noqa: E402
from jaxmodels.qwen2_5_vl_model import Qwen25VLModel, mrope_positions  # noqa: E402
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionTransformer  # noqa: E402
from oracles import perturb_, save_tiny  # noqa: E402

IMAGE, VIDEO, START, END = 120, 121, 122, 123
VISION = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=4, window_size=16,
              fullatt_block_indexes=[1], out_hidden_size=64)
# head_dim 16: 8 rotary frequencies split 2 (temporal) + 3 (height) + 3 (width).
TEXT = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, bos_token_id=None, eos_token_id=None, pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
# Three images (t, h, w in patches; merge 2): A and C in row 0, B in row 1 (left-padded).
GRID = np.array([[1, 4, 6], [1, 4, 4], [1, 6, 4]])
NEW = 8


def _image(grid_row):
  t, h, w = grid_row
  return [START] + [IMAGE] * (t * h * w // 4) + [END]


def _text(rs, n):
  return list(rs.randint(1, 100, n))


def _batch():
  """Two rows laid out as the processor does: row 0 = text, A, text, C, text; row 1 = two pads,
  text, B, text. Returns (input_ids [2, 22], attention_mask, pixel_values [64, 96])."""
  rs = np.random.RandomState(0)
  row0 = _text(rs, 3) + _image(GRID[0]) + _text(rs, 2) + _image(GRID[1]) + _text(rs, 3)
  row1 = [0, 0] + _text(rs, 4) + _image(GRID[2]) + _text(rs, 8)
  ids = np.array([row0, row1])
  mask = np.ones_like(ids)
  mask[1, :2] = 0
  n = int(np.prod(GRID, -1).sum())
  pixels = rs.uniform(-1, 1, (n, 3 * 2 * 4 * 4)).astype(np.float32)
  return ids, mask, pixels


def _torch_inputs(ids, mask, pixels, grid=GRID):
  return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
              pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
              mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)))


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.Qwen2_5_VLConfig(vision_config=VISION, text_config=TEXT, image_token_id=IMAGE,
                                         video_token_id=VIDEO, vision_start_token_id=START,
                                         vision_end_token_id=END)
  model = perturb_(transformers.Qwen2_5_VLForConditionalGeneration(config).eval(), 0.05)
  return model, save_tiny(model, tmp_path_factory.mktemp("qwen2_5_vl"))


@pytest.fixture(scope="module")
def ours(oracle):
  return hf.from_pretrained(oracle[1])


@pytest.fixture(scope="module")
def reference_logits(oracle):
  ids, mask, pixels = _batch()
  with torch.no_grad():
    return oracle[0](**_torch_inputs(ids, mask, pixels)).logits.numpy()


_logits = nnx.jit(lambda m, ids, px, mask: m(ids, px, GRID, mask))


@pytest.mark.parametrize("case", ["padded", "unpadded", "text_only"])
def test_mrope_positions_match_transformers(oracle, case):
  ids, mask, _ = _batch()
  grid = GRID
  if case == "unpadded":
    ids, mask, grid = ids[:1], None, GRID[:2]
  elif case == "text_only":
    ids, grid = np.where(ids >= IMAGE, 7, ids), None
  ref_kw = dict(mm_token_type_ids=torch.tensor((ids == IMAGE).astype(np.int64)),
                image_grid_thw=None if grid is None else torch.tensor(grid),
                attention_mask=None if mask is None else torch.tensor(mask))
  positions, deltas = mrope_positions(ids, grid, mask, image_token_id=IMAGE, spatial_merge_size=2,
                                      video_token_id=VIDEO)
  if grid is None:     # transformers has no 3-D index for a text-only batch: 0, 1, ... over real tokens
    real = np.ones_like(ids) if mask is None else mask
    np.testing.assert_array_equal(positions, np.broadcast_to(np.maximum(np.cumsum(real, -1) - 1, 0) * real,
                                                             (3,) + ids.shape))
    np.testing.assert_array_equal(deltas, 0)
    return
  ref_pos, ref_deltas = oracle[0].model.get_rope_index(torch.tensor(ids), **ref_kw)
  np.testing.assert_array_equal(positions, ref_pos.numpy())
  np.testing.assert_array_equal(deltas, ref_deltas.numpy()[:, 0])


def test_logits_match_transformers(ours, reference_logits):
  ids, mask, pixels = _batch()
  assert isinstance(ours, Qwen25VLModel) and ours.config.text.mrope_section == (2, 3, 3)
  out = np.asarray(_logits(ours, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
  real = mask.astype(bool)
  np.testing.assert_allclose(out[real], reference_logits[real], atol=1e-4)


def test_hidden_states_from_inputs_embeds(ours):
  # The backbone use: embeddings (here the model's own, spliced), M-RoPE positions, last-layer states.
  ids, mask, pixels = _batch()

  def hidden(m, ids, px, mask):
    embeds = m.embed(ids, px, GRID)
    positions, _ = m.rope_index(ids, GRID, mask)
    return m.forward(inputs_embeds=embeds, positions=positions, attention_mask=mask).hidden

  h = nnx.jit(hidden)(ours, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
  logits = np.asarray(_logits(ours, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)))
  np.testing.assert_allclose(np.asarray(ours.logits(h)), logits, atol=1e-5)


def test_greedy_generation_matches_transformers(oracle, ours):
  ids, mask, pixels = _batch()
  with torch.no_grad():
    ref = oracle[0].generate(**_torch_inputs(ids, mask, pixels), max_new_tokens=NEW, do_sample=False).numpy()
  out = np.asarray(ours.generate(ids, NEW, pixels, GRID, attention_mask=mask))
  assert out.shape == (2, ids.shape[1] + NEW)
  np.testing.assert_array_equal(out, ref)


def test_serving_decoder_with_mrope_positions_matches_transformers(oracle, ours):
  """serve.py's chunked decoder (prefill + chunks over the KV cache) given the prompt's M-RoPE positions:
  the same greedy tokens as transformers' generate (left-padded row included)."""
  from jaxmodels.serving.decode import ChunkedDecoder
  from jaxmodels.qwen2_5_vl_model import _prompt_inputs
  ids, mask, pixels = _batch()
  with torch.no_grad():
    ref = oracle[0].generate(**_torch_inputs(ids, mask, pixels), max_new_tokens=8, do_sample=False).numpy()
  jids, jmask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
  embeds, positions = _prompt_inputs(ours, jids, jnp.asarray(pixels), jmask, grid=tuple(map(tuple, GRID)))
  decoder = ChunkedDecoder(ours.llm, eos_id=[], pad_id=0, chunk=4)
  chunks = decoder.run(jids, jmask, embeds, new_tokens=8, temperature=[0.0, 0.0], top_p=[1.0, 1.0],
                       keys=jax.random.split(jax.random.key(0), 2), positions=positions)
  np.testing.assert_array_equal(np.concatenate(list(chunks), axis=1), ref[:, ids.shape[1]:])


def test_export_loads_in_transformers(oracle, ours, reference_logits, tmp_path):
  hf.save_pretrained(ours, str(tmp_path))
  config = json.load(open(tmp_path / "config.json"))
  assert config["model_type"] == "qwen2_5_vl" and config["text_config"]["model_type"] == "qwen2_5_vl_text"
  assert config["text_config"]["rope_parameters"]["mrope_section"] == [2, 3, 3]
  keys = set(SafetensorsReader(str(tmp_path)).keys())
  assert keys == set(SafetensorsReader(oracle[1]).keys())          # the names transformers 5 saves
  back = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  for name, tensor in oracle[0].state_dict().items():
    np.testing.assert_array_equal(back.state_dict()[name].numpy(), tensor.numpy(), err_msg=name)
  ids, mask, pixels = _batch()
  with torch.no_grad():
    logits = back(**_torch_inputs(ids, mask, pixels)).logits.numpy()
  np.testing.assert_array_equal(logits, reference_logits)


def _rewrite(src, dst, rename=None, drop=(), config=None):
  """A copy of checkpoint `src` in `dst`: tensors renamed / dropped, config.json replaced."""
  reader = SafetensorsReader(src)
  tensors = {(rename(k) if rename else k): reader.get(k) for k in reader.keys() if k not in drop}
  write_checkpoint(str(dst), config or json.load(open(os.path.join(src, "config.json"))), tensors)
  return str(dst)


def _same_params(a, b):
  for (path, x), (_, y) in zip(nnx.to_flat_state(nnx.state(a, nnx.Param)),
                               nnx.to_flat_state(nnx.state(b, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(x.get_value()), np.asarray(y.get_value()), err_msg=str(path))


def test_module_names_and_released_flat_config_load_the_same(oracle, ours, tmp_path):
  # transformers' in-memory names (model.language_model.*, model.visual.*), and config.json as the
  # released checkpoints write it: text keys at the top, rope_scaling {type: mrope}, in_chans.
  def rename(key):
    if key.startswith("visual."):
      return "model." + key
    return "model.language_model." + key[len("model."):] if key.startswith("model.") else key

  nested = json.load(open(os.path.join(oracle[1], "config.json")))
  text = dict(nested.pop("text_config"))
  rope = text.pop("rope_parameters")
  vision = dict(nested.pop("vision_config"), model_type="qwen2_5_vl")
  vision["in_chans"] = vision.pop("in_channels")
  flat = dict(nested, **{k: v for k, v in text.items() if k != "model_type"}, vision_config=vision,
              rope_theta=rope["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
  loaded = hf.from_pretrained(_rewrite(oracle[1], tmp_path, rename, config=flat))
  assert loaded.config == ours.config
  _same_params(loaded, ours)


def test_parts_of_a_full_checkpoint(oracle, ours):
  path = oracle[1]
  tower = hf.from_pretrained(path, module=Qwen25VisionTransformer)
  lm = hf.from_pretrained(path, module=LLM)
  assert isinstance(tower, Qwen25VisionTransformer) and isinstance(lm, LLM)
  assert lm.config == ours.config.text and tower.config == ours.config.vision
  _same_params(tower, ours.visual)
  _same_params(lm, ours.llm)
  with pytest.raises(ConfigError, match="qwen2_5_vl_text"):      # M-RoPE has no plain-LLM export
    hf.save_pretrained(lm, "/nonexistent")
  scanned = hf.from_pretrained(path, text_config=dict(scan_layers=True))
  assert scanned.llm.layers.scan and not scanned.config.vision.scan_layers
  with pytest.raises(ConfigError, match="unknown option 'scan_layerz'"):
    hf.from_pretrained(path, scan_layerz=True)


def test_bad_checkpoints_name_the_file_and_key(oracle, tmp_path):
  src = oracle[1]
  config = json.load(open(os.path.join(src, "config.json")))
  key = "model.layers.1.self_attn.k_proj.bias"
  missing = _rewrite(src, tmp_path / "missing", drop=(key,))
  with pytest.raises(CheckpointFormatError, match=rf"missing: tensor '{key}' not found"):
    hf.from_pretrained(missing)
  reader = SafetensorsReader(src)
  tensors = {k: reader.get(k) for k in reader.keys()}
  tensors["visual.merger.mlp.2.weight"] = tensors["visual.merger.mlp.2.weight"][:, :-1]
  write_checkpoint(str(tmp_path / "shape"), config, tensors)
  with pytest.raises(CheckpointFormatError, match=r"model.safetensors: tensor 'visual.merger.mlp.2.weight' "
                                                  r"has shape \(64, 127\)"):
    hf.from_pretrained(str(tmp_path / "shape"))
  bad_type = _rewrite(src, tmp_path / "type", config=dict(config, model_type="qwen2_5_vl_moe"))
  with pytest.raises(CheckpointFormatError, match=r"config.json: unsupported model type 'qwen2_5_vl_moe'"):
    hf.from_pretrained(bad_type)
  text = {k: v for k, v in config["text_config"].items() if k != "num_hidden_layers"}
  no_layers = _rewrite(src, tmp_path / "key", config=dict(config, text_config=text))
  with pytest.raises(CheckpointFormatError, match=r"config.json: missing key 'num_hidden_layers'"):
    hf.from_pretrained(no_layers)


def test_bad_inputs_are_one_line_errors(ours):
  ids, mask, pixels = _batch()
  video = ids.copy()
  video[0, 4] = VIDEO
  with pytest.raises(JaxModelsError, match="video inputs are not supported"):
    ours.generate(video, 2, pixels, GRID, attention_mask=mask)
  with pytest.raises(ValueError, match="input_ids hold 16 image tokens .* has 10 merged tokens"):
    ours.rope_index(ids, GRID[:2], mask)
  with pytest.raises(ValueError, match="input_ids hold 16 image tokens .* has 10 merged tokens"):
    ours.generate(ids, 2, pixels[:40], GRID[:2], attention_mask=mask)
  with pytest.raises(ValueError, match="hold 16 image tokens .* but image_grid_thw=None has 0 merged tokens"):
    ours.rope_index(ids)


def test_text_config_round_trip():
  c = qwen2_5_vl_family.text_config_from_hf({"text_config": TEXT, "tie_word_embeddings": True})
  assert c.tie_word_embeddings and c.rope_theta == 10000.0 and c.qkv_bias and not c.o_bias
  back = qwen2_5_vl_family.text_config_to_hf(c)
  assert back["rope_parameters"]["mrope_section"] == [2, 3, 3]
  assert qwen2_5_vl_family.text_config_from_hf({"text_config": back, "tie_word_embeddings": True}) == c
  with pytest.raises(ConfigError, match="head_dim"):
    qwen2_5_vl_family.text_config_to_hf(c.replace(head_dim=32))


def test_mrope_of_text_positions_is_the_1d_rotation():
  from jaxmodels.layers.rotary import rope_tables
  positions = jnp.arange(12).reshape(2, 6) * 3
  mrope = rope_tables(positions, 16, 10000.0, mrope_section=(2, 3, 3))
  for ours, plain in zip(mrope, rope_tables(positions, 16, 10000.0)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(plain))
  with pytest.raises(ConfigError, match=r"mrope_section \[2, 3, 2\] must be non-negative and sum to"):
    rope_tables(positions, 16, 10000.0, mrope_section=(2, 3, 2))
