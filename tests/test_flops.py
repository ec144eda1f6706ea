"""The FLOP formula behind MFU, against published numbers."""
from flax import nnx

from jaxmodels import presets
from jaxmodels.flops import llm_param_counts, train_flops_per_token
from jaxmodels.llm import LLM, LLMConfig
from jaxmodels.sharding import param_count

# meta-llama/Llama-2-7b-hf config.json
LLAMA2_7B = LLMConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32,
                      num_heads=32, num_kv_heads=32, rope_theta=10000.0, scan_layers=True)


def test_param_counts_match_the_model_and_published_sizes():
  assert llm_param_counts(LLAMA2_7B)["total"] == 6_738_415_616   # Llama-2-7B's published count
  for cfg in (LLAMA2_7B, presets.llm_preset("qwen3-1.7b", scan_layers=True),
              presets.llm_preset("qwen2.5-0.5b", scan_layers=True)):
    model = nnx.eval_shape(lambda: LLM(cfg, rngs=nnx.Rngs(0)))
    assert llm_param_counts(cfg)["total"] == param_count(model)


def test_train_flops_per_token_llama2_7b():
  # PaLM's formula at seq 4096: 6·(matmul parameters: all but the input embedding and the final norm)
  # + 12·L·T·d_attn.
  flops = train_flops_per_token(LLAMA2_7B, 4096)
  expected = 6 * (6_738_415_616 - 32000 * 4096 - 4096) + 12 * 32 * 4096 * 4096
  assert flops == expected
  assert abs(flops / 1e9 - 46.08) < 0.05      # ≈ 46 GFLOP per trained token
  assert train_flops_per_token(LLAMA2_7B, 4096, causal=True) == expected - 6 * 32 * 4096 * 4096
