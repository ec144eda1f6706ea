"""Published tower sizes (the values of their Hugging Face config.json files), by name.

Configs build paper models from these, so a config named after a paper has that paper's parts at
full size. Each entry is a dict of our config fields; `llm_preset` / `vision_preset` return configs.
"""
from __future__ import annotations

from typing import Any

from jaxmodels.errors import ConfigError
from jaxmodels.llm import LLMConfig
from jaxmodels.vision.eva_clip import EvaClipConfig
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionConfig
from jaxmodels.vision.vit import VisionConfig

LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# rope_scaling of microsoft/Phi-3.5-mini-instruct's config.json (48 = head_dim 96 / 2 factors each).
PHI35_ROPE = {
    "rope_type": "longrope", "original_max_position_embeddings": 4096,
    "short_factor": (
        1.0, 1.0199999809265137, 1.0299999713897705, 1.0299999713897705, 1.0499999523162842,
        1.0499999523162842, 1.0499999523162842, 1.0499999523162842, 1.0499999523162842,
        1.0699999332427979, 1.0999999046325684, 1.1099998950958252, 1.1599998474121094,
        1.1599998474121094, 1.1699998378753662, 1.2899998426437378, 1.339999794960022,
        1.679999828338623, 1.7899998426437378, 1.8199998140335083, 1.8499997854232788,
        1.8799997568130493, 1.9099997282028198, 1.9399996995925903, 1.9899996519088745,
        2.0199997425079346, 2.0199997425079346, 2.0199997425079346, 2.0199997425079346,
        2.0199997425079346, 2.0199997425079346, 2.0299997329711914, 2.0299997329711914,
        2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0299997329711914,
        2.0299997329711914, 2.0299997329711914, 2.0299997329711914, 2.0799996852874756,
        2.0899996757507324, 2.189999580383301, 2.2199995517730713, 2.5899994373321533,
        2.729999542236328, 2.749999523162842, 2.8399994373321533),
    "long_factor": (
        1.0800000429153442, 1.1100000143051147, 1.1399999856948853, 1.340000033378601,
        1.5899999141693115, 1.600000023841858, 1.6200000047683716, 2.620000123977661,
        3.2300000190734863, 3.2300000190734863, 4.789999961853027, 7.400000095367432,
        7.700000286102295, 9.09000015258789, 12.199999809265137, 17.670000076293945,
        24.46000099182129, 28.57000160217285, 30.420001983642578, 30.840002059936523,
        32.590003967285156, 32.93000411987305, 42.320003509521484, 44.96000289916992,
        50.340003967285156, 50.45000457763672, 57.55000305175781, 57.93000411987305,
        58.21000289916992, 60.1400032043457, 62.61000442504883, 62.62000274658203,
        62.71000289916992, 63.1400032043457, 63.1400032043457, 63.77000427246094,
        63.93000411987305, 63.96000289916992, 63.970001220703125, 64.02999877929688,
        64.06999969482422, 64.08000183105469, 64.12000274658203, 64.41000366210938,
        64.4800033569336, 64.51000213623047, 64.52999877929688, 64.83999633789062),
}

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
    # microsoft/Phi-3.5-mini-instruct: longrope (short/long factors below, original context 4096,
    # max 131072 -> cos/sin scaled by sqrt(1 + ln 32 / ln 4096) ≈ 1.19).
    "phi3.5-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                        num_layers=32, num_heads=32, num_kv_heads=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                        sliding_window=262144, max_position_embeddings=131072, bos_token_id=1,
                        eos_token_id=32000, pad_token_id=32000, rope_scaling=PHI35_ROPE),
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
}

# Qwen2.5-VL vision towers (`Qwen25VisionConfig`): the `vision_config` of Qwen/Qwen2.5-VL-7B-Instruct and
# Qwen/Qwen2.5-VL-3B-Instruct config.json (depth 32, hidden_size 1280, num_heads 16, intermediate_size
# 3420, patch_size 14, temporal_patch_size 2, spatial_merge_size 2, window_size 112,
# fullatt_block_indexes [7, 15, 23, 31], tokens_per_second 2); they differ only in out_hidden_size = the
# LLM width (these match transformers' Qwen2_5_VLVisionConfig defaults, except hidden_size 3584 there).
# 676.6M parameters for 7B, merger included (tests/test_qwen2_5_vl_parity.py counts transformers' model).
_QWEN25_VL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                         temporal_patch_size=2, spatial_merge_size=2, window_size=112,
                         fullatt_block_indexes=(7, 15, 23, 31), hidden_act="silu", tokens_per_second=2)
QWEN25_VL_VISION_PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-vl-7b-vision": dict(_QWEN25_VL_VISION, out_hidden_size=3584),
    "qwen2.5-vl-3b-vision": dict(_QWEN25_VL_VISION, out_hidden_size=2048),
}


# EVA-CLIP towers (`EvaClipConfig`, jaxmodels/vision/eva_clip.py). EVA-CLIP-E/14-plus as BLIP3-o's target
# encoder builds it (`model_configs/eva-clip-E-14-plus.json`, spec §2.3): width 1792, 64 layers, head
# width 112 (16 heads), mlp_ratio 8.571428571428571 (15360), 448 px, patch 14 (32×32 patches), postnorm,
# q/v biases; 4,350,093,568 parameters (the published ~4.4B vision tower; tests/test_eva_clip.py).
EVA_CLIP_PRESETS: dict[str, dict[str, Any]] = {
    "eva-clip-e-14-plus": dict(hidden_size=1792, intermediate_size=15360, num_layers=64, num_heads=16,
                               image_size=448, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu",
                               postnorm=True, qkv_bias="qv"),
}


def _get(table: dict, name: str, kind: str) -> dict:
  if name not in table:
    raise ConfigError(f"unknown {kind} preset {name!r}; known: {', '.join(sorted(table))}")
  return dict(table[name])


def llm_preset(name: str, **overrides) -> LLMConfig:
  return LLMConfig(**{**_get(LLM_PRESETS, name, "LLM"), **overrides})


def vision_preset(name: str, **overrides) -> VisionConfig:
  return VisionConfig(**{**_get(VISION_PRESETS, name, "vision"), **overrides})


def eva_clip_preset(name: str, **overrides) -> EvaClipConfig:
  return EvaClipConfig(**{**_get(EVA_CLIP_PRESETS, name, "EVA-CLIP"), **overrides})


def qwen2_5_vl_vision_preset(name: str, **overrides) -> Qwen25VisionConfig:
  return Qwen25VisionConfig(**{**_get(QWEN25_VL_VISION_PRESETS, name, "Qwen2.5-VL vision"), **overrides})
