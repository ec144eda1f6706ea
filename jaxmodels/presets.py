"""Published tower sizes (the values of their Hugging Face config.json files), by name.

Configs build paper models from these, so a config named after a paper has that paper's parts at
full size. Each entry is a dict of our config fields; `llm_preset` / `vision_preset` return configs.
"""
from __future__ import annotations

from typing import Any

from jaxmodels.errors import ConfigError
from jaxmodels.llm import LLMConfig
from jaxmodels.vision.vit import VisionConfig

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

LLM_PRESETS: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.1-8B(-Instruct)
    "llama3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                        num_layers=32, num_heads=32, num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                        rope_scaling=LLAMA31_ROPE, max_position_embeddings=131072),
    # Qwen/Qwen2.5-7B-Instruct (= the language model of Qwen2.5-VL-7B)
    "qwen2.5-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                       num_layers=28, num_heads=28, num_kv_heads=4, rms_norm_eps=1e-6, rope_theta=1e6,
                       qkv_bias=True, max_position_embeddings=32768),
    # Qwen/Qwen2.5-3B-Instruct (= the language model of Qwen2.5-VL-3B)
    "qwen2.5-3b": dict(model_type="qwen2", vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                       num_layers=36, num_heads=16, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                       qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=32768),
    # Qwen/Qwen2.5-0.5B (MetaQuery-B's LLaVA-OneVision-Qwen2-0.5B has the same shape)
    "qwen2.5-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                         num_layers=24, num_heads=14, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                         qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=32768),
    # Qwen/Qwen2-0.5B (= the LLM of llava-hf/llava-onevision-qwen2-0.5b-ov, MetaQuery-B; theta 1e6)
    "qwen2-0.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
                       num_layers=24, num_heads=14, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                       qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=32768),
    # Qwen/Qwen2-1.5B (= the language model of Qwen2-VL-2B)
    "qwen2-1.5b": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                       num_layers=28, num_heads=12, num_kv_heads=2, rms_norm_eps=1e-6, rope_theta=1e6,
                       qkv_bias=True, tie_word_embeddings=True, max_position_embeddings=32768),
    # Qwen/Qwen3-1.7B and Qwen/Qwen3-0.6B
    "qwen3-1.7b": dict(model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       rope_theta=1e6, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=40960),
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                       num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6,
                       rope_theta=1e6, qk_norm=True, tie_word_embeddings=True, max_position_embeddings=40960),
    # microsoft/Phi-3-mini-4k-instruct
    "phi3-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                      num_layers=32, num_heads=32, num_kv_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                      sliding_window=2047, max_position_embeddings=4096),
    # microsoft/Phi-3.5-mini-instruct. Its config.json uses rope_scaling type "longrope" (short/long
    # factor lists, original context 4096), which jaxmodels.layers.rotary does not implement: this
    # preset keeps plain RoPE (theta 1e4), so it is exact in shapes / parameter counts only, not in
    # logits of the released checkpoint.
    "phi3.5-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                        num_layers=32, num_heads=32, num_kv_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                        sliding_window=262144, max_position_embeddings=131072, bos_token_id=1,
                        eos_token_id=32000, pad_token_id=32000),
}

VISION_PRESETS: dict[str, dict[str, Any]] = {
    # google/siglip-so400m-patch14-384 (vision tower)
    "siglip-so400m-patch14-384": dict(model_type="siglip_vision_model", hidden_size=1152,
                                      intermediate_size=4304, num_layers=27, num_heads=16, image_size=384,
                                      patch_size=14, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
    # openai/clip-vit-large-patch14-336 (vision tower)
    "clip-vit-l-14-336": dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                              num_layers=24, num_heads=16, image_size=336, patch_size=14,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5, use_head=False),
    # EVA-CLIP-E/14-plus as BLIP3-o uses it (spec §2.3: width 1792, 64 layers, 16 heads, mlp ratio
    # 8.5714, 448 px, patch 14). Built as a CLIP-style ViT: EVA's own block details (e.g. its
    # attention variant) are not modelled, so treat it as an "EVA-CLIP-style" tower of that size.
    "eva-clip-e-14-plus": dict(model_type="clip_vision_model", hidden_size=1792, intermediate_size=15360,
                               num_layers=64, num_heads=16, image_size=448, patch_size=14,
                               hidden_act="gelu", layer_norm_eps=1e-6, use_head=False),
}


def _get(table: dict, name: str, kind: str) -> dict:
  if name not in table:
    raise ConfigError(f"unknown {kind} preset {name!r}; known: {', '.join(sorted(table))}")
  return dict(table[name])


def llm_preset(name: str, **overrides) -> LLMConfig:
  return LLMConfig(**{**_get(LLM_PRESETS, name, "LLM"), **overrides})


def vision_preset(name: str, **overrides) -> VisionConfig:
  return VisionConfig(**{**_get(VISION_PRESETS, name, "vision"), **overrides})
