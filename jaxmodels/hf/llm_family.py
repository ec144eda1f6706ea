"""HF decoder LMs (`llama`, `qwen2`, `qwen3`, `phi3`): config conversion and tensor names."""
from __future__ import annotations

from jaxmodels.errors import ConfigError
from jaxmodels.hf.keymap import KeyMap, Source
from jaxmodels.layers.rotary import SUPPORTED_ROPE_TYPES
from jaxmodels.llm import LLM, LLMConfig

MODEL_TYPES = ("llama", "qwen2", "qwen3", "phi3")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM"}


def config_from_hf(d: dict, **overrides) -> LLMConfig:
  mt = d["model_type"]
  rope = dict(d.get("rope_parameters") or {})
  legacy = d.get("rope_scaling") or {}
  theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
  scaling = {**rope, **legacy}
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if mt == "phi3" and rope_type in ("su", "yarn"):   # Phi3Config's legacy names for longrope
    rope_type = "longrope"
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ConfigError(f"config.json: rope_type {rope_type!r} is not supported "
                      f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
  scaling = {k: v for k, v in scaling.items() if k not in ("rope_theta", "partial_rotary_factor")}
  if rope_type == "longrope":
    scaling = _longrope_from_hf(d, scaling)
  if d.get("use_sliding_window"):
    raise ConfigError("config.json: use_sliding_window=true (per-layer sliding windows) is not supported")
  attention_bias = bool(d.get("attention_bias", False))
  kw = dict(
      model_type=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
      intermediate_size=d["intermediate_size"], num_layers=d["num_hidden_layers"],
      num_heads=d["num_attention_heads"],
      num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
      head_dim=d.get("head_dim"), rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
      rope_scaling=None if rope_type == "default" else scaling,
      partial_rotary_factor=float(rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))),
      max_position_embeddings=d.get("max_position_embeddings", 4096),
      qkv_bias={"qwen2": True, "phi3": False}.get(mt, attention_bias),
      o_bias={"qwen2": False, "phi3": False}.get(mt, attention_bias),
      mlp_bias=bool(d.get("mlp_bias", False)) if mt == "llama" else False,
      qk_norm=mt == "qwen3", tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      hidden_act=d.get("hidden_act", "silu"),
      sliding_window=d.get("sliding_window") if mt == "phi3" else None,
      bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
      pad_token_id=d.get("pad_token_id"))
  kw.update(overrides)
  return LLMConfig(**kw)


def _longrope_from_hf(d: dict, scaling: dict) -> dict:
  """Phi-3.5's longrope parameters; a top-level `original_max_position_embeddings` wins (as in
  transformers' Phi3Config)."""
  orig = d.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings")
  out = {"rope_type": "longrope",
         "original_max_position_embeddings": orig or d.get("max_position_embeddings")}
  for key in ("short_factor", "long_factor"):
    if not isinstance(scaling.get(key), list):
      raise ConfigError(f"config.json: rope_scaling.{key} must be a list of numbers for longrope")
    out[key] = tuple(float(x) for x in scaling[key])
  for key in ("factor", "attention_factor"):
    if scaling.get(key) is not None:
      out[key] = float(scaling[key])
  return out


def _check_exportable(c: LLMConfig):
  """Raises if `c` has a feature the HF architecture of `c.model_type` cannot express."""
  fixed = {"qwen2": dict(qkv_bias=True, o_bias=False, mlp_bias=False, qk_norm=False),
           "qwen3": dict(o_bias=c.qkv_bias, mlp_bias=False, qk_norm=True),
           "phi3": dict(qkv_bias=False, o_bias=False, mlp_bias=False, qk_norm=False),
           "llama": dict(o_bias=c.qkv_bias, qk_norm=False)}
  if c.model_type not in fixed:
    raise ConfigError(f"model_type {c.model_type!r} has no HF export (supported: {', '.join(MODEL_TYPES)})")
  for field, want in fixed[c.model_type].items():
    if getattr(c, field) != want:
      raise ConfigError(f"LLMConfig.{field}={getattr(c, field)} cannot be expressed by HF model_type "
                        f"{c.model_type!r} (it needs {field}={want})")
  if c.sliding_window is not None and c.model_type != "phi3":
    raise ConfigError(f"LLMConfig.sliding_window is only exportable for phi3, not {c.model_type!r}")


def config_to_hf(c: LLMConfig) -> dict:
  _check_exportable(c)
  rope = {"rope_type": "default", "rope_theta": c.rope_theta}
  if c.rope_scaling is not None:
    rope.update({k: list(v) if isinstance(v, tuple) else v for k, v in c.rope_scaling_dict.items()})
  if c.partial_rotary_factor != 1.0 or c.model_type == "phi3":
    rope["partial_rotary_factor"] = c.partial_rotary_factor
  d = dict(
      model_type=c.model_type, architectures=[ARCHITECTURES[c.model_type]], vocab_size=c.vocab_size,
      hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
      num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
      head_dim=c.resolved_head_dim, rms_norm_eps=c.rms_norm_eps, rope_parameters=rope,
      max_position_embeddings=c.max_position_embeddings, tie_word_embeddings=c.tie_word_embeddings,
      hidden_act=c.hidden_act, bos_token_id=c.bos_token_id,
      eos_token_id=list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id,
      pad_token_id=c.pad_token_id, dtype=c.param_dtype)
  if c.model_type in ("llama", "qwen3"):
    d["attention_bias"] = c.qkv_bias
  if c.model_type == "llama":
    d["mlp_bias"] = c.mlp_bias
  if c.model_type in ("qwen2", "qwen3"):
    d["use_sliding_window"] = False
  if c.model_type == "phi3":
    d["sliding_window"] = c.sliding_window
    if rope.get("rope_type") == "longrope":    # Phi3Config reads this top-level field first
      d["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
  return d


def keymap(c: LLMConfig) -> KeyMap:
  m: KeyMap = {("embed", "embedding"): Source("model.embed_tokens.weight"),
               ("norm", "scale"): Source("model.norm.weight")}
  if not c.tie_word_embeddings:
    m[("lm_head", "kernel")] = Source("lm_head.weight", "linear")
  n, k, h, f = c.num_heads, c.num_kv_heads, c.resolved_head_dim, c.intermediate_size
  for i in range(c.num_layers):
    ours = ("layers", "blocks", i)
    hf = f"model.layers.{i}."
    m[ours + ("attn_norm", "scale")] = Source(hf + "input_layernorm.weight")
    m[ours + ("mlp_norm", "scale")] = Source(hf + "post_attention_layernorm.weight")
    m[ours + ("attn", "o", "kernel")] = Source(hf + "self_attn.o_proj.weight", "linear", n_in=2)
    if c.o_bias:
      m[ours + ("attn", "o", "bias")] = Source(hf + "self_attn.o_proj.bias", "bias")
    if c.model_type == "phi3":
      fused = hf + "self_attn.qkv_proj.weight"
      m[ours + ("attn", "q", "kernel")] = Source(fused, "linear", rows=(0, n * h))
      m[ours + ("attn", "k", "kernel")] = Source(fused, "linear", rows=(n * h, (n + k) * h))
      m[ours + ("attn", "v", "kernel")] = Source(fused, "linear", rows=((n + k) * h, (n + 2 * k) * h))
      gate_up = hf + "mlp.gate_up_proj.weight"
      m[ours + ("mlp", "gate", "kernel")] = Source(gate_up, "linear", rows=(0, f))
      m[ours + ("mlp", "up", "kernel")] = Source(gate_up, "linear", rows=(f, 2 * f))
      m[ours + ("mlp", "down", "kernel")] = Source(hf + "mlp.down_proj.weight", "linear")
      continue
    for p in ("q", "k", "v"):
      m[ours + ("attn", p, "kernel")] = Source(hf + f"self_attn.{p}_proj.weight", "linear")
      if c.qkv_bias:
        m[ours + ("attn", p, "bias")] = Source(hf + f"self_attn.{p}_proj.bias", "bias")
    if c.qk_norm:
      m[ours + ("attn", "q_norm", "scale")] = Source(hf + "self_attn.q_norm.weight")
      m[ours + ("attn", "k_norm", "scale")] = Source(hf + "self_attn.k_norm.weight")
    for p in ("gate", "up", "down"):
      m[ours + ("mlp", p, "kernel")] = Source(hf + f"mlp.{p}_proj.weight", "linear")
      if c.mlp_bias:
        m[ours + ("mlp", p, "bias")] = Source(hf + f"mlp.{p}_proj.bias", "bias")
  return m


def _family():
  from jaxmodels.hf import Family
  return Family("llm", MODEL_TYPES, LLM, config_from_hf, config_to_hf, keymap)


FAMILY = _family()
