"""save_pretrained round trips through transformers; loader errors are one clear line."""
import json
import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxmodels import hf  # noqa: E402
from jaxmodels.errors import CheckpointFormatError, ConfigError  # noqa: E402
from jaxmodels.hf import safetensors_io  # noqa: E402
from jaxmodels.llm import LLM, LLMConfig  # noqa: E402
from jaxmodels.vision import VisionConfig, VisionTransformer  # noqa: E402
from oracles import nchw, torch_logits  # noqa: E402

TINY_LM = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
               max_position_embeddings=64)
LM_CASES = {
    "llama": dict(num_kv_heads=2, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0,
                                                "original_max_position_embeddings": 16}),
    "qwen2": dict(num_kv_heads=2, qkv_bias=True, tie_word_embeddings=True),
    "qwen3": dict(num_kv_heads=1, qk_norm=True, head_dim=16),
    "phi3": dict(num_kv_heads=2, partial_rotary_factor=0.5),
}


def _randomize(model: nnx.Module, seed=0):
  """Random values for every parameter (biases and norms included)."""
  rs = np.random.RandomState(seed)
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    var.set_value(jnp.asarray(rs.normal(0, 0.1, var.get_value().shape), jnp.float32) +
                  var.get_value())
  return model


@pytest.mark.parametrize("model_type", sorted(LM_CASES))
def test_llm_export_loads_in_transformers(model_type, tmp_path):
  cfg = LLMConfig(model_type=model_type, **TINY_LM, **LM_CASES[model_type])
  ours = _randomize(LLM(cfg, rngs=nnx.Rngs(0)))
  hf.save_pretrained(ours, str(tmp_path))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  ids = np.random.RandomState(0).randint(0, 64, (2, 9))
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), torch_logits(theirs, ids), atol=1e-4)
  back = hf.from_pretrained(str(tmp_path), scan_layers=True)   # and back into the scanned layout
  np.testing.assert_allclose(np.asarray(back(jnp.asarray(ids))), np.asarray(ours(jnp.asarray(ids))),
                             atol=1e-5)


@pytest.mark.parametrize("model_type", ["siglip_vision_model", "clip_vision_model"])
def test_vision_export_loads_in_transformers(model_type, tmp_path):
  cfg = VisionConfig(model_type=model_type, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     image_size=32, patch_size=8, hidden_act="gelu_pytorch_tanh")
  ours = _randomize(VisionTransformer(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0)))
  hf.save_pretrained(ours, str(tmp_path))
  theirs = transformers.AutoModel.from_pretrained(str(tmp_path)).eval()
  x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    ref = theirs(pixel_values=nchw(x))
  out = ours(jnp.asarray(x), output_hidden_states=True)
  np.testing.assert_allclose(out.last_hidden_state, ref.last_hidden_state.numpy(), atol=1e-4)
  np.testing.assert_allclose(out.pooler_output, ref.pooler_output.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def saved_llm(tmp_path_factory):
  cfg = LLMConfig(model_type="qwen2", **TINY_LM, num_kv_heads=2, qkv_bias=True)
  model = _randomize(LLM(cfg, rngs=nnx.Rngs(0)))
  path = str(tmp_path_factory.mktemp("lm"))
  hf.save_pretrained(model, path)
  return model, path


def test_sharded_checkpoint_and_bf16(saved_llm, tmp_path):
  model, _ = saved_llm
  hf.save_pretrained(model, str(tmp_path), max_shard_size=20_000)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))
  assert len(set(index["weight_map"].values())) > 1
  ids = jnp.arange(10).reshape(1, 10)
  np.testing.assert_allclose(hf.from_pretrained(str(tmp_path))(ids), model(ids), atol=1e-6)
  assert transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)) is not None
  bf16 = hf.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
  assert bf16.embed.embedding.get_value().dtype == jnp.bfloat16
  np.testing.assert_allclose(bf16(ids).astype(np.float32), model(ids), atol=0.15)


def _copy(path, tmp_path):
  for name in os.listdir(path):
    with open(os.path.join(path, name), "rb") as src, open(tmp_path / name, "wb") as dst:
      dst.write(src.read())
  return tmp_path


def test_missing_directory_and_config(tmp_path):
  with pytest.raises(CheckpointFormatError, match="not a directory"):
    hf.from_pretrained(str(tmp_path / "nope"))
  with pytest.raises(CheckpointFormatError, match="config.json: missing"):
    hf.from_pretrained(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointFormatError, match="invalid JSON"):
    hf.from_pretrained(str(tmp_path))


def test_unsupported_model_type(saved_llm, tmp_path):
  d = _copy(saved_llm[1], tmp_path)
  cfg = json.load(open(d / "config.json"))
  cfg["model_type"] = "mamba"
  json.dump(cfg, open(d / "config.json", "w"))
  with pytest.raises(CheckpointFormatError, match="unsupported model type 'mamba'"):
    hf.from_pretrained(str(d))


def test_unsupported_rope_type(saved_llm, tmp_path):
  d = _copy(saved_llm[1], tmp_path)
  cfg = json.load(open(d / "config.json"))
  cfg["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}
  json.dump(cfg, open(d / "config.json", "w"))
  with pytest.raises(ConfigError, match="rope_type 'yarn'"):
    hf.from_pretrained(str(d))


def test_missing_weights_tensor_and_shape(saved_llm, tmp_path):
  _, path = saved_llm
  d = _copy(path, tmp_path)
  reader = safetensors_io.SafetensorsReader(str(d))
  tensors = {k: np.array(reader.get(k)) for k in reader.keys()}
  del reader
  os.remove(d / "model.safetensors")
  with pytest.raises(CheckpointFormatError, match="no weights found"):
    hf.from_pretrained(str(d))
  missing = dict(tensors)
  del missing["model.layers.1.mlp.up_proj.weight"]
  safetensors_io._write_file(str(d / "model.safetensors"), missing)
  with pytest.raises(CheckpointFormatError, match="'model.layers.1.mlp.up_proj.weight' not found"):
    hf.from_pretrained(str(d))
  bad = dict(tensors)
  bad["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
  safetensors_io._write_file(str(d / "model.safetensors"), bad)
  with pytest.raises(CheckpointFormatError, match=r"k_proj.weight' has shape \(8, 32\).*layers.blocks.0.attn.k"):
    hf.from_pretrained(str(d))
  (d / "model.safetensors").write_bytes(b"\x01\x02")
  with pytest.raises(CheckpointFormatError, match="not a readable safetensors file"):
    hf.from_pretrained(str(d))


def test_missing_shard_file(saved_llm, tmp_path):
  hf.save_pretrained(saved_llm[0], str(tmp_path), max_shard_size=20_000)
  os.remove(sorted(tmp_path.glob("model-*.safetensors"))[1])
  with pytest.raises(CheckpointFormatError, match="listed in model.safetensors.index.json but missing"):
    hf.from_pretrained(str(tmp_path))


def test_export_rejects_configs_hf_cannot_express(tmp_path):
  model = LLM(LLMConfig(model_type="qwen2", **TINY_LM, num_kv_heads=2, qkv_bias=False), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="qkv_bias=False cannot be expressed by HF model_type 'qwen2'"):
    hf.save_pretrained(model, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_failed_save_keeps_existing_checkpoint(saved_llm, tmp_path, monkeypatch):
  model, path = saved_llm
  d = _copy(path, tmp_path)
  before = {n: (d / n).read_bytes() for n in os.listdir(d)}

  def boom(*a, **k):
    raise OSError("disk full")
  monkeypatch.setattr(safetensors_io, "_write_file", boom)
  with pytest.raises(OSError, match="disk full"):
    hf.save_pretrained(model, str(d))
  assert {n: (d / n).read_bytes() for n in os.listdir(d)} == before


# --------------------------------------------------------------------------- issue 28: loader errors

def _edit_config(d, edit):
  cfg = json.load(open(d / "config.json"))
  edit(cfg)
  (d / "config.json").write_text(json.dumps(cfg))


def test_config_json_missing_a_needed_key_names_file_and_key(saved_llm, tmp_path):
  d = _copy(saved_llm[1], tmp_path)
  _edit_config(d, lambda c: c.pop("hidden_size"))
  with pytest.raises(CheckpointFormatError) as err:
    hf.from_pretrained(str(d))
  message = str(err.value)
  assert message.startswith(str(d / "config.json")) and "missing key 'hidden_size'" in message
  assert "\n" not in message


def test_config_json_without_model_type(saved_llm, tmp_path):
  d = _copy(saved_llm[1], tmp_path)
  _edit_config(d, lambda c: c.pop("model_type"))
  with pytest.raises(CheckpointFormatError, match=r"config.json: no 'model_type' .* or '_class_name'"):
    hf.from_pretrained(str(d))


def test_config_json_that_is_not_an_object(tmp_path):
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(CheckpointFormatError, match=r"config.json: expected a JSON object, got list"):
    hf.from_pretrained(str(tmp_path))


def test_unsupported_config_value_names_the_file(saved_llm, tmp_path):
  d = _copy(saved_llm[1], tmp_path)
  _edit_config(d, lambda c: c.update(use_sliding_window=True))
  with pytest.raises(ConfigError) as err:
    hf.from_pretrained(str(d))
  assert str(err.value).startswith(f"{d / 'config.json'}: use_sliding_window=true")


def test_unknown_from_pretrained_option_names_it(saved_llm):
  with pytest.raises(ConfigError, match=r"unknown option 'scan_layer'"):
    hf.from_pretrained(saved_llm[1], scan_layer=True)


def test_missing_tensor_names_the_parameter_and_wrong_shape_names_the_shard(saved_llm, tmp_path):
  hf.save_pretrained(saved_llm[0], str(tmp_path), max_shard_size=20_000)
  index = json.load(open(tmp_path / "model.safetensors.index.json"))
  key = "model.layers.1.self_attn.v_proj.weight"
  shard = tmp_path / index["weight_map"][key]
  reader = safetensors_io.SafetensorsReader(str(tmp_path))
  tensors = {k: np.array(reader.get(k)) for k in reader.keys() if reader.file_of(k) == str(shard)}
  del reader
  wrong = dict(tensors, **{key: np.zeros((3, 32), np.float32)})
  safetensors_io._write_file(str(shard), wrong)
  with pytest.raises(CheckpointFormatError) as err:
    hf.from_pretrained(str(tmp_path))
  assert str(err.value).startswith(str(shard)) and f"'{key}' has shape (3, 32)" in str(err.value)
  safetensors_io._write_file(str(shard), {k: v for k, v in tensors.items() if k != key})
  with pytest.raises(CheckpointFormatError, match=rf"'{key}' not found .*parameter layers.blocks.1.attn.v"):
    hf.from_pretrained(str(tmp_path))


def test_truncated_safetensors_names_file_and_tensor(saved_llm, tmp_path):
  d = _copy(saved_llm[1], tmp_path)
  blob = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(blob[:-64])
  with pytest.raises(CheckpointFormatError, match=r"model.safetensors: tensor '.*' lies outside the file"):
    hf.from_pretrained(str(d))


def test_safetensors_header_bytes_that_do_not_fit_the_shape(tmp_path):
  import struct
  header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 8]}}).encode()
  (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
  with pytest.raises(CheckpointFormatError, match=r"tensor 'w' has 8 bytes, which does not fit shape \(2, 3\)"):
    safetensors_io.SafetensorsReader(str(tmp_path))


def test_invalid_shard_index(saved_llm, tmp_path):
  hf.save_pretrained(saved_llm[0], str(tmp_path), max_shard_size=20_000)
  (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a", "b"]}))
  with pytest.raises(CheckpointFormatError, match=r"model.safetensors.index.json: invalid index"):
    hf.from_pretrained(str(tmp_path))
