"""Builders shared by the paper configs: full-size parts from published presets, and `tiny` variants
with the same structure (same part types and wiring, CPU-sized widths) for tests and laptops."""
from __future__ import annotations

import ml_collections

from jaxmodels.config_schema import base_config, execution_block

# Tiny variants scan their layers: one compiled block per tower keeps CPU compile times short. The
# full-size towers scan too (LLMs, ViTs, the Lumina and SANA DiTs, the Qwen2.5-VL tower in groups of
# window + full blocks): an unrolled 8B-class train step takes 20+ minutes to compile for a plan.
TINY_LLM = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                num_kv_heads=2, max_position_embeddings=512, scan_layers=True)
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=32, patch_size=4,
                scan_layers=True)
TINY_DIT = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, in_channels=32, ffn_hidden_size=128,
                scan_layers=True)
# Qwen2.5-VL vision tower at CPU size: same structure (window blocks + one full-attention block,
# 2×2 patch merger to the LLM width); 32 px / (patch 4 · merge 2) = 4×4 = 16 tokens in 2×2-token windows.
TINY_QWEN_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4,
                        window_size=16, fullatt_block_indexes=(1,), out_hidden_size=TINY_LLM["hidden_size"],
                        image_size=32)
FROZEN_BACKBONE = ["llm/.*", "und_encoder/.*", "und_projector/.*", "gen_encoder/.*"]


def _trainer(c, *, tiny, lr, warmup, steps, frozen=None, ema_decay=None):
  c.optim.lr, c.optim.warmup_steps, c.optim.frozen = lr, warmup, frozen
  c.optim.min_lr_ratio = 0.1
  c.train.total_steps = steps
  c.train.ema_decay = ema_decay
  c.model.execution = execution_block()   # --config.model.execution.remat=... sets every tower's
  if tiny:   # ShapesWorld evaluations sized for a laptop run of a tiny variant
    c.evals.update(qa_per_kind=8, geneval_prompts=16, sample_steps=4, batch_size=16)
  return c


def blip3o(*, llm: str, caption_dim: int, ffn: str, tiny: bool) -> ml_collections.ConfigDict:
  """BLIP3-o stage 2 (spec §2): frozen backbone, 64 queries + NextDiT over 8×8 EVA-CLIP features.

  Understanding is the Qwen2.5-VL MLLM's own: its vision tower (`qwen2.5-vl-{7b,3b}-vision`, from the
  language preset's size) at 448×448 -> 16×16 = 256 merged tokens of the LLM width, spliced without a
  projector (und_projector="none"). `llm` is "qwen2.5-7b" or "qwen2.5-3b"."""
  c = base_config()
  vision = {"qwen2.5-7b": "qwen2.5-vl-7b-vision", "qwen2.5-3b": "qwen2.5-vl-3b-vision"}[llm]
  if tiny:
    llm_cfg = dict(preset=llm, **TINY_LLM)
    gen = dict(preset="eva-clip-e-14-plus", **{**TINY_VIT, "patch_size": 2})   # 16×16 grid -> 4×4
    und = dict(preset=vision, **TINY_QWEN_VISION)
    dit = dict(type="lumina", preset="blip3o", ffn=ffn, caption_dim=TINY_LLM["hidden_size"], **TINY_DIT)
    queries = 8
  else:
    llm_cfg = dict(preset=llm, scan_layers=True, remat="full", dtype="bfloat16")
    gen = dict(preset="eva-clip-e-14-plus", scan_layers=True, dtype="bfloat16")
    # 448 px: the EVA-CLIP target's input side too, so one image size serves both paths (why: module
    # doc of configs/blip3o_8b.py). Its blocks scan as 4 groups of 8 (7 window blocks + 1 full one).
    und = dict(preset=vision, image_size=448, scan_layers=True, remat="full", dtype="bfloat16")
    dit = dict(type="lumina", preset="blip3o", ffn=ffn, caption_dim=caption_dim, scan_layers=True,
               remat="full")
    queries = 64
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=und, und_projector="none", gen_encoder=gen, dit=dit, gen_target="gen_encoder",
      gen_pool=4, num_queries=queries, connector="identity", cond_dropout=0.1, und_weight=0.0, gen_weight=1.0,
      image_token_id=TINY_LLM["vocab_size"] - 1 if tiny else 151667))
  if not tiny:   # BLIP3-o's eval/geneval/generate.py wraps each benchmark prompt so (`:tiny` trains
    # on bare ShapesWorld captions and keeps "{prompt}")
    c.evals.prompt_template = "Please generate image based on the following caption: {prompt}"
  # lr 1e-4 cosine to a 1e-5 floor, warmup ratio 0.003 (spec §2.5); backbone frozen (sequential stage).
  return _trainer(c, tiny=tiny, lr=1e-4, warmup=3 if tiny else 450, steps=1000 if tiny else 150_000,
                  frozen=FROZEN_BACKBONE, ema_decay=None)


def pisces(*, tiny: bool) -> ml_collections.ConfigDict:
  """Pisces (spec §1): decoupled understanding / generation encoders, one LLM, joint losses."""
  c = base_config()
  if tiny:
    llm_cfg = dict(preset="llama3.1-8b", **TINY_LLM, rope_scaling=None)
    und = dict(preset="siglip-so400m-patch14-384", **TINY_VIT, use_head=False)
    gen = dict(preset="clip-vit-l-14-336", **{**TINY_VIT, "patch_size": 2})
    dit = dict(type="lumina", preset="blip3o", caption_dim=TINY_LLM["hidden_size"], **TINY_DIT)
    queries, image_token = 8, TINY_LLM["vocab_size"] - 1
  else:
    llm_cfg = dict(preset="llama3.1-8b", scan_layers=True, remat="full", dtype="bfloat16")
    und = dict(preset="siglip-so400m-patch14-384", scan_layers=True, dtype="bfloat16")
    gen = dict(preset="clip-vit-l-14-336", image_size=448, scan_layers=True, dtype="bfloat16")
    dit = dict(type="lumina", preset="blip3o", caption_dim=4096, in_channels=1024, scan_layers=True,
               remat="full")
    queries, image_token = 64, 128_011    # a reserved Llama-3 special token as <image>
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=und, gen_encoder=gen, dit=dit, gen_target="gen_encoder", gen_pool=4,
      num_queries=queries, connector="identity", cond_dropout=0.1, und_weight=1.0, gen_weight=1.0,
      gen_projector=True,   # image inputs of generation prompts: pooled gen features -> own projector
      image_token_id=image_token))
  frozen = ["gen_encoder/.*"]   # the generation encoder defines the target space: kept frozen
  return _trainer(c, tiny=tiny, lr=2e-5 if not tiny else 1e-3, warmup=3 if tiny else 2000,
                  steps=1000 if tiny else 100_000, frozen=frozen)


# SANA at CPU size: same block types (linear self-attention, cross-attention, Mix-FFN), 4×4×8 latents.
TINY_SANA = dict(type="sana", in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16,
                 num_layers=1, num_cross_attention_heads=2, cross_attention_head_dim=16,
                 cross_attention_dim=32, caption_channels=48, mlp_ratio=2.5, sample_size=4)
TINY_LATENT = dict(latent_size=4, latent_channels=8)
# DC-AE at CPU size with f32c32's structure (ResBlock stages then EfficientViT stages with multi-scale
# kernel 5, stride-2 conv down / nearest-interpolate up, both shortcuts, SANA's scaling factor): 4 stages,
# 8× compression, 32×32×3 <-> 4×4×8 (TINY_LATENT).
TINY_VAE = dict(
    latent_channels=8, attention_head_dim=8,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 32, 32),
    encoder_layers_per_block=(1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
    encoder_qkv_multiscales=((), (), (5,), (5,)), decoder_qkv_multiscales=((), (), (5,), (5,)),
    downsample_block_type="Conv", upsample_block_type="interpolate", scaling_factor=0.41407)
MLLM_FROZEN = ["llm/.*", "und_encoder/.*", "und_projector/.*"]
# SANA's DC-AE f32c32 (bf16 compute over f32 weights), frozen in the model: the latent targets of the
# SANA / LaTtE-Flow heads are computed from the batch's images on the fly. `config.model.vae = None`
# trains on precomputed latents instead (batch["gen_latents"], from a pipeline of your own).
SANA_DCAE = dict(preset="dc-ae-f32c32", dtype="bfloat16")


# MetaQuery-L / -XL sit on Qwen2.5-VL-3B / -7B (spec §4.1): their MLLM's own vision tower.
QWEN_VL_VISION = {"qwen2.5-3b": "qwen2.5-vl-3b-vision", "qwen2.5-7b": "qwen2.5-vl-7b-vision"}


def metaquery(*, llm: str, tiny: bool) -> ml_collections.ConfigDict:
  """MetaQuery (spec §4): frozen MLLM + N=256 vocabulary query tokens (only their rows train) ->
  24-layer bidirectional QK-L2-norm encoder + projection/RMSNorm(√5.5) -> SANA-1.6B (512px: 16×16×32
  DC-AE latents, fully fine-tuned), empty-caption CFG null, 3-way guidance for editing inputs.

  Understanding (and the prompt's input images) go through the frozen MLLM's vision tower: for the
  Qwen2.5-VL backbones (L: qwen2.5-3b, XL: qwen2.5-7b) the Qwen2.5-VL ViT + merger at 448×448 ->
  16×16 = 256 tokens of the LLM width, spliced without a projector (as BLIP3-o); for MetaQuery-B
  (LLaVA-OneVision-Qwen2-0.5B) a SigLIP-so400m tower + MLP projector stands in for LLaVA-OV's."""
  c = base_config()
  vision = QWEN_VL_VISION.get(llm)
  projector = "none" if vision else "mlp2x_gelu"
  if tiny:
    llm_cfg = dict(preset=llm, **TINY_LLM)
    und = (dict(preset=vision, **TINY_QWEN_VISION) if vision else
           dict(preset="siglip-so400m-patch14-384", **TINY_VIT, use_head=False))
    dit = dict(TINY_SANA)
    extra = dict(num_queries=8, connector_layers=1, image_token_id=TINY_LLM["vocab_size"] - 1,
                 vae=dict(TINY_VAE), gen_image_size=32, **TINY_LATENT)
  else:
    llm_cfg = dict(preset=llm, scan_layers=True, remat="full", dtype="bfloat16")
    und = (dict(preset=vision, image_size=448, scan_layers=True, remat="full", dtype="bfloat16") if vision else
           dict(preset="siglip-so400m-patch14-384", scan_layers=True, dtype="bfloat16"))
    # Sana_1600M_512px: the 1.6B layout at sample_size 16 (512 / 32).
    dit = dict(type="sana", preset="sana-1600m", sample_size=16, scan_layers=True, remat="full")
    extra = dict(num_queries=256, connector_layers=24, image_token_id=151655, latent_size=16,
                 latent_channels=32, vae=dict(SANA_DCAE), gen_image_size=512)
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=und, und_projector=projector, dit=dit, gen_target="latents", queries="vocab",
      connector="transformer", cfg_null="empty_caption", cond_dropout=0.1, und_weight=0.0, gen_weight=1.0,
      **extra))
  # 0.5B T2I recipe (spec §4.2): lr 1e-4 cosine to 1e-5, warmup 5k.
  return _trainer(c, tiny=tiny, lr=1e-4, warmup=3 if tiny else 5000, steps=1000 if tiny else 200_000,
                  frozen=MLLM_FROZEN + ["vae/.*"])


def blip3o_next(*, llm: str, tiny: bool, edit: bool = False) -> ml_collections.ConfigDict:
  """BLIP3o-NEXT (spec §3): Qwen3 with 65,536 image + 3 scale + 2 tag tokens appended to its vocab,
  TA-Tok-style SimVQ tokenizer (SigLIP2-so400m/14-384 stand-in: our SigLIP-so400m preset shape), joint
  CE + flow loss, connector Linear-GELU-Linear-RMSNorm(√5.5) -> SANA 1.5 1.6B (1024px, 32×32×32) over
  the latents of the frozen in-model DC-AE f32c32 (`vae`; tiny: TINY_VAE, 32 px -> 4×4×8).

  edit: the editing variant (spec §3.6): gen_ids' `image_token_id` placeholders take the reference
  image's (batch gen_cond_image) discrete tokens, and its DC-AE latents enter the DiT condition and the
  noisy input (edit_latents="cond_noise", latent_codec.py)."""
  c = base_config()
  if tiny:
    offset, codebook = 256, 64
    llm_cfg = dict(preset=llm, **{**TINY_LLM, "vocab_size": offset + codebook + 5})
    tok = dict(encoder=dict(preset="siglip-so400m-patch14-384", **TINY_VIT, use_head=False),
               codebook_size=codebook, code_dim=8, scale=2)       # 8×8 grid pooled 2× -> 16 tokens
    dit = dict(TINY_SANA)
    extra = dict(image_top_k=16, image_token_id=offset - 1, vae=dict(TINY_VAE), gen_image_size=32,
                 **TINY_LATENT)
  else:
    from jaxmodels import presets
    offset, codebook = presets.LLM_PRESETS[llm]["vocab_size"], 65536
    llm_cfg = dict(preset=llm, vocab_size=offset + codebook + 5, scan_layers=True, remat="full",
                   dtype="bfloat16")
    tok = dict(encoder=dict(preset="siglip-so400m-patch14-384", scan_layers=True, dtype="bfloat16"),
               codebook_size=codebook, code_dim=64, scale=1)
    dit = dict(type="sana", preset="sana-1600m", qk_norm="rms_norm_across_heads", scan_layers=True,
               remat="full")
    # SANA's DC-AE f32c32 (1024 px -> 32×32×32), bf16 compute over f32 weights; gen_image_size is the
    # side the data pipeline resizes targets to (Resize + CenterCrop 1024, spec §3.1).
    extra = dict(image_top_k=1200, image_token_id=offset - 1, latent_size=32, latent_channels=32,
                 vae=dict(SANA_DCAE), gen_image_size=1024)
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=None, image_tokenizer=tok, image_vocab_offset=offset, dit=dit,
      gen_target="latents", queries="image_tokens", connector="mlp_norm", cfg_null="zeros",
      cond_dropout=0.1, image_top_p=0.95, und_weight=0.0, gen_weight=1.0,
      edit_latents="cond_noise" if edit else "none", **extra))
  # Trainable: the whole AR LM + connector + SANA's caption parts (+ the edit injection); tokenizer and
  # DC-AE frozen (spec §3.2).
  return _trainer(c, tiny=tiny, lr=1e-4, warmup=3 if tiny else 3360, steps=1000 if tiny else 336_000,
                  frozen=["image_tokenizer/.*", "vae/.*", "dit/(?!caption).*"])


def latte_flow(*, tiny: bool) -> ml_collections.ConfigDict:
  """LaTtE-Flow (spec §5): frozen Qwen2-VL-2B-sized LLM (28 layers) + a 28-layer generation stack in
  K=4 groups of 7 reading its per-layer prompt states, TCRA on; 16×16×32 latents (UNCONFIRMED)."""
  c = base_config()
  if tiny:
    llm_cfg = dict(preset="qwen2-1.5b", **{**TINY_LLM, "num_layers": 4})
    und = dict(preset="siglip-so400m-patch14-384", **TINY_VIT, use_head=False)
    dit = dict(type="latte", hidden_size=32, num_layers=4, num_groups=2, num_heads=2, intermediate_size=64,
               context_dim=TINY_LLM["hidden_size"], in_channels=8, sample_size=4)
    extra = dict(image_token_id=TINY_LLM["vocab_size"] - 1, vae=dict(TINY_VAE), gen_image_size=32,
                 **TINY_LATENT)
  else:
    llm_cfg = dict(preset="qwen2-1.5b", scan_layers=True, remat="full", dtype="bfloat16")
    und = dict(preset="siglip-so400m-patch14-384", scan_layers=True, dtype="bfloat16")
    dit = dict(type="latte", hidden_size=1536, num_layers=28, num_groups=4, num_heads=12,
               intermediate_size=8960, context_dim=1536, in_channels=32, sample_size=16)
    extra = dict(image_token_id=151655, latent_size=16, latent_channels=32, vae=dict(SANA_DCAE),
                 gen_image_size=512)
  c.model = ml_collections.ConfigDict(dict(
      llm=llm_cfg, und_encoder=und, dit=dit, gen_target="latents", queries="none", connector="identity",
      cfg_null="zeros", cond_dropout=0.1, und_weight=0.0, gen_weight=1.0, **extra))
  return _trainer(c, tiny=tiny, lr=1e-4, warmup=3 if tiny else 2000, steps=1000 if tiny else 100_000,
                  frozen=MLLM_FROZEN + ["vae/.*"])
