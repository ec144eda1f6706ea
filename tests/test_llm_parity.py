"""Decoder LMs against transformers: tiny random configs saved with save_pretrained and imported."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from jaxmodels import hf  # noqa: E402
from jaxmodels.generate import generate  # noqa: E402
from oracles import perturb_, save_tiny, torch_logits  # noqa: E402

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            max_position_embeddings=128)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# Phi-3.5-style longrope on the tiny config: head_dim 8 -> 4 factors each; context 16 of 128, so the
# attention factor is sqrt(1 + ln 8 / ln 16) and sequences longer than 16 switch to the long factors.
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.3, 2.1, 3.7],
            "long_factor": [1.5, 4.0, 9.0, 30.0], "original_max_position_embeddings": 16}

CASES = {
    # name: (config class, extra kwargs) — covering GQA ratios, tying, biases, qk-norm, rope scaling.
    "llama3_gqa2_llama3rope": (transformers.LlamaConfig, dict(
        num_attention_heads=4, num_key_value_heads=2, rope_parameters=LLAMA3_ROPE)),
    "llama_mqa_tied_bias_linear": (transformers.LlamaConfig, dict(
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, attention_bias=True,
        mlp_bias=True, rope_parameters={"rope_type": "linear", "rope_theta": 500000.0, "factor": 4.0})),
    "qwen2_qkvbias_tied": (transformers.Qwen2Config, dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_mha": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=4)),
    "qwen3_qknorm_headdim": (transformers.Qwen3Config, dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16)),
    "phi3_fused": (transformers.Phi3Config, dict(
        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, eos_token_id=1, bos_token_id=2)),
    "phi3_gqa_partial_rotary": (transformers.Phi3Config, dict(
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "phi3_longrope": (transformers.Phi3Config, dict(
        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        original_max_position_embeddings=16, rope_parameters=LONGROPE)),
}


def _oracle(name, tmp_path_factory):
  cls, extra = CASES[name]
  model = transformers.AutoModelForCausalLM.from_config(cls(**TINY, **extra)).eval()
  perturb_(model, 0.05)
  return name, model, save_tiny(model, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module", params=sorted(CASES))
def oracle(request, tmp_path_factory):
  return _oracle(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def longrope_oracle(tmp_path_factory):
  return _oracle("phi3_longrope", tmp_path_factory)


@pytest.mark.parametrize("scan", [False, True])
def test_logits_match_transformers(oracle, scan):
  _, model, path = oracle
  ids = np.random.RandomState(0).randint(0, 96, (2, 12))
  ours = hf.from_pretrained(path, scan_layers=scan)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), torch_logits(model, ids), atol=1e-4)


def test_padded_batch_matches_transformers(oracle):
  _, model, path = oracle
  rs = np.random.RandomState(1)
  ids = rs.randint(0, 96, (3, 10))
  mask = np.ones_like(ids)
  mask[1, :4] = 0   # left padding
  mask[2, 7:] = 0   # right padding
  ours = np.asarray(hf.from_pretrained(path)(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  ref = torch_logits(model, ids, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], ref[real], atol=1e-4)


# Greedy decoding with the KV cache, one case per family besides Llama's (tests/test_generate.py):
# qkv bias + tying, qk-norm + an explicit head_dim, fused qkv / gate_up with an eos that can stop rows.
GREEDY_CASES = ["qwen2_qkvbias_tied", "qwen3_qknorm_headdim", "phi3_fused"]


@pytest.mark.parametrize("oracle", GREEDY_CASES, indirect=True)
def test_greedy_generation_matches_transformers(oracle):
  _, model, path = oracle
  ids = np.random.RandomState(3).randint(3, 96, (2, 7))
  mask = np.ones_like(ids)
  mask[1, :3] = 0                   # left padding
  ids[mask == 0] = model.config.pad_token_id or 0
  with torch.no_grad():
    ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10,
                         do_sample=False).numpy()
  out = np.asarray(generate(hf.from_pretrained(path), ids, 10, attention_mask=mask))
  np.testing.assert_array_equal(out[:, :ref.shape[1]], ref)
  assert (out[:, ref.shape[1]:] == (model.config.pad_token_id or 0)).all()   # rows past eos: pad


def test_config_is_read(oracle):
  name, model, path = oracle
  c = hf.from_pretrained(path).config
  assert c.num_kv_heads == model.config.num_key_value_heads
  assert c.tie_word_embeddings == bool(model.config.tie_word_embeddings)
  assert c.qk_norm == name.startswith("qwen3")


@pytest.mark.parametrize("length", [10, 16, 17, 40])   # <=, = and > original_max_position_embeddings
def test_longrope_short_and_long_sequences(longrope_oracle, length):
  _, model, path = longrope_oracle
  ids = np.random.RandomState(length).randint(0, 96, (2, length))
  ours = hf.from_pretrained(path)
  scaling = ours.config.rope_scaling_dict
  assert scaling["rope_type"] == "longrope" and scaling["original_max_position_embeddings"] == 16
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids))), torch_logits(model, ids), atol=1e-4)


def test_longrope_config_round_trip(tmp_path):
  from jaxmodels.hf.llm_family import config_from_hf, config_to_hf
  from jaxmodels.presets import llm_preset
  ours = llm_preset("phi3.5-mini")
  theirs = transformers.Phi3Config(**{k: v for k, v in config_to_hf(ours).items() if k != "architectures"})
  assert theirs.original_max_position_embeddings == 4096
  assert theirs.rope_parameters["rope_type"] == "longrope"
  assert theirs.rope_parameters["long_factor"] == list(ours.rope_scaling_dict["long_factor"])
  theirs.save_pretrained(tmp_path)
  import json
  back = config_from_hf(json.load(open(tmp_path / "config.json")))
  assert back.rope_scaling == ours.rope_scaling and back.max_position_embeddings == 131072
