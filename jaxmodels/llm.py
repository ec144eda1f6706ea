"""Decoder-only language models: Llama 3.x, Qwen2/2.5, Qwen3 and Phi-3 as one module + config.

The HF model types differ only in config: qkv bias (Qwen2), per-head qk RMSNorm (Qwen3), RoPE
scaling (Llama 3.1+ "llama3", Phi-3.5 "longrope"), partial rotary (Phi), GQA ratio and embedding
tying. Qwen2.5-VL's language model is Qwen2 with M-RoPE (`mrope_section`; positions [3, B, T], see
`jaxmodels.layers.rotary`). Loading and saving HF checkpoints lives in `jaxmodels.hf`.

    model = jaxmodels.hf.from_pretrained("/ckpt/Qwen2.5-0.5B")
    logits = model(input_ids)                    # [B, T] int32 -> [B, T, V]
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import sharding
from jaxmodels.layers import BlockStack, Embed, Linear, RMSNorm, TransformerBlock
from jaxmodels.layers.attention import make_attention_mask
from jaxmodels.layers.rotary import rope_tables

KVCache = tuple  # (k, v), each [L, B, S, K, H], or each a tuple of L [B, S, K, H] (per layer)


def cache_length(cache: KVCache) -> int:
  """S, the number of slots of a stacked or per-layer KV cache."""
  k = cache[0]
  return k[0].shape[1] if isinstance(k, (tuple, list)) else k.shape[2]


@dataclasses.dataclass(frozen=True)
class LLMConfig:
  """Decoder LM hyper-parameters (names follow HF where they exist). Defaults: Llama-3-8B."""
  model_type: str = "llama"
  vocab_size: int = 128256
  hidden_size: int = 4096
  intermediate_size: int = 14336
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int = 8
  head_dim: int | None = None           # default hidden_size // num_heads
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  rope_scaling: tuple | None = None     # HF rope parameters for "linear"/"llama3"/"longrope" (dict
                                        # accepted; lists, e.g. longrope's factors, become tuples)
  partial_rotary_factor: float = 1.0
  mrope_section: tuple[int, ...] | None = None   # Qwen2.5-VL M-RoPE, e.g. (16, 24, 24): positions may
                                                 # be [3, B, T] (temporal, height, width)
  max_position_embeddings: int = 8192
  qkv_bias: bool = False                # Qwen2: True
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False                 # Qwen3: True
  tie_word_embeddings: bool = False
  hidden_act: str = "silu"
  sliding_window: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | tuple | None = None
  pad_token_id: int | None = None
  # Execution choices (not part of the checkpoint).
  scan_layers: bool = False
  remat: str = "none"                   # layers.block.REMAT_POLICIES (compared per platform in
                                        # BENCHMARKS.md); train.py drops remat for multi-process CPU
                                        # runs (gloo)
  attention_impl: str = "einsum"
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    # Modules keep their config as static (hashed) graph data: freeze dicts and lists.
    if self.rope_scaling is not None:
      items = self.rope_scaling.items() if hasattr(self.rope_scaling, "items") else self.rope_scaling
      object.__setattr__(self, "rope_scaling", tuple(sorted(
          (k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in items)))
    if isinstance(self.eos_token_id, list):
      object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
    if self.mrope_section is not None:
      object.__setattr__(self, "mrope_section", tuple(int(s) for s in self.mrope_section))

  @property
  def rope_scaling_dict(self) -> dict | None:
    return None if self.rope_scaling is None else dict(self.rope_scaling)

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def rotary_dim(self) -> int:
    return int(self.resolved_head_dim * self.partial_rotary_factor)

  def replace(self, **kw: Any) -> "LLMConfig":
    return dataclasses.replace(self, **kw)


@flax.struct.dataclass   # a pytree: can be returned from jit
class LMOutput:
  hidden: jax.Array                     # [B, T, D] after the final norm
  cache: KVCache | None = None
  layer_outputs: jax.Array | None = None  # [L, B, T, D] (before the final norm)


class LLM(nnx.Module):
  """Decoder LM: ids [B, T] -> logits [B, T, V]."""

  def __init__(self, config: LLMConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    self.embed = Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=pdtype, rngs=rngs)

    def make_block(r):
      return TransformerBlock(
          c.hidden_size, c.num_heads, c.intermediate_size, num_kv_heads=c.num_kv_heads,
          head_dim=c.resolved_head_dim, norm="rms", norm_eps=c.rms_norm_eps, mlp="gated",
          activation=c.hidden_act, qkv_bias=c.qkv_bias, out_bias=c.o_bias, mlp_bias=c.mlp_bias,
          qk_norm=c.qk_norm, attention_impl=c.attention_impl, causal=True, dtype=dtype, param_dtype=pdtype,
          rngs=r)

    self.layers = BlockStack(c.num_layers, make_block, scan=c.scan_layers, remat=c.remat, rngs=rngs)
    self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps, param_dtype=pdtype, rngs=rngs)
    self.lm_head = None if c.tie_word_embeddings else Linear(
        c.hidden_size, c.vocab_size, axes=("embed", "vocab"), dtype=dtype, param_dtype=pdtype, rngs=rngs)

  def __call__(self, input_ids: jax.Array | None, positions: jax.Array | None = None,
               attention_mask: jax.Array | None = None, *,
               inputs_embeds: jax.Array | None = None) -> jax.Array:
    """input_ids [B, T] (or inputs_embeds [B, T, D]); attention_mask [B, T] (1 = token, 0 = pad);
    positions [B, T] default 0..T−1 (as HF's forward), or [3, B, T] with `mrope_section`.
    Returns logits [B, T, V]."""
    out = self.forward(input_ids, positions, attention_mask, inputs_embeds=inputs_embeds)
    return self.logits(out.hidden)

  def forward(self, input_ids, positions=None, attention_mask=None, *, inputs_embeds=None,
              cache: KVCache | None = None, cache_index=0, return_layer_outputs=False) -> LMOutput:
    """The trunk. Without a cache, keys are the T inputs (causal + padding mask). With a cache
    (see `init_cache`) the inputs occupy slots [cache_index, cache_index+T) and `attention_mask`
    is [B, S_max], marking which cache slots hold real tokens. positions: [B, T], or [3, B, T]
    (M-RoPE, configs with `mrope_section`)."""
    c = self.config
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(jnp.dtype(c.dtype))
    b, t = x.shape[:2]
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))
    q_slots = jnp.arange(t) + cache_index
    if positions is None:
      positions = jnp.broadcast_to(q_slots[None], (b, t))
    elif positions.ndim == 3 and c.mrope_section is None:
      raise ValueError(f"positions {tuple(positions.shape)}: [3, B, T] positions need an M-RoPE config "
                       "(LLMConfig.mrope_section)")
    k_slots = q_slots if cache is None else jnp.arange(cache_length(cache))
    if (cache is None and attention_mask is None and c.sliding_window is None
        and c.attention_impl != "einsum"):
      mask = None                # plain causal: fused kernels apply it themselves (is_causal)
    else:
      mask = make_attention_mask(q_slots, k_slots, attention_mask, causal=True,
                                 sliding_window=c.sliding_window)
    rope = rope_tables(positions, c.rotary_dim, c.rope_theta, c.rope_scaling_dict, c.max_position_embeddings,
                       c.mrope_section)
    x, cache, layer_outputs = self.layers(x, mask=mask, rope=rope, cache=cache, cache_index=cache_index,
                                          return_hidden=return_layer_outputs)
    return LMOutput(self.norm(x), cache, layer_outputs)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, V] (float32)."""
    out = self.embed.attend(hidden) if self.lm_head is None else self.lm_head(hidden)
    return sharding.constrain(out, ("act_batch", "act_length", "vocab")).astype(jnp.float32)

  def init_cache(self, batch_size: int, max_length: int, dtype=None, *, per_layer: bool = False) -> KVCache:
    """Zeroed KV cache (k, v), each [L, B, max_length, K, H]; with `per_layer`, each a tuple of L
    arrays [B, max_length, K, H] (what `generate` uses: a decode step then writes its token into each
    layer's buffer in place, where the stacked layout copied every layer's cache slice out and back in
    at every token; needs unstacked layers, `BlockStack.unstack`)."""
    c = self.config
    shape = (c.num_layers, batch_size, max_length, c.num_kv_heads, c.resolved_head_dim)
    dtype = dtype or jnp.dtype(c.dtype)
    if per_layer:
      return tuple(tuple(jnp.zeros(shape[1:], dtype) for _ in range(c.num_layers)) for _ in range(2))
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
