"""FLOP counts for MFU (model FLOPs utilisation) of decoder LMs.

Training FLOPs per token = 6·N + 12·L·T·d_attn (PaLM, appendix B): 6·N for the forward (2·N) and
backward (4·N) matmuls of the N non-embedding parameters plus the tied/untied output projection, and
12·L·T·d_attn for the attention score and value products (QKᵀ and A·V, 2·T·d_attn each, forward and
backward). With `causal=True` the attention term is halved (only the lower triangle is needed), which
MaxText adopted in 2025; the paper numbers use the full term.
"""
from __future__ import annotations

from jaxmodels.llm import LLMConfig


def llm_param_counts(c: LLMConfig) -> dict[str, int]:
  """Exact parameter counts of `jaxmodels.llm.LLM(c)` by component (no model is built)."""
  d, f, h = c.hidden_size, c.intermediate_size, c.resolved_head_dim
  q, kv = c.num_heads * h, c.num_kv_heads * h
  attn = d * q + 2 * d * kv + q * d
  attn += (q + 2 * kv) if c.qkv_bias else 0
  attn += d if c.o_bias else 0
  attn += 2 * h if c.qk_norm else 0
  mlp = 3 * d * f + ((2 * f + d) if c.mlp_bias else 0)
  layer = attn + mlp + 2 * d
  embed = c.vocab_size * d
  head = 0 if c.tie_word_embeddings else c.vocab_size * d
  return {"embedding": embed, "layers": c.num_layers * layer, "final_norm": d, "lm_head": head,
          "total": embed + c.num_layers * layer + d + head}


def train_flops_per_token(c: LLMConfig, seq_len: int, *, causal: bool = False) -> float:
  """Training FLOPs per token (forward + backward), see the module docstring."""
  n = llm_param_counts(c)
  matmul_params = n["layers"] + c.vocab_size * c.hidden_size   # the output projection is a matmul
  attention = 12 * c.num_layers * seq_len * c.num_heads * c.resolved_head_dim
  return 6 * matmul_params + (attention / 2 if causal else attention)
