"""BLIP3-o's released layout (HF BLIP3o/BLIP3o-Model-8B, -4B; spec §2).

What a released directory holds (JiuhaiChen/BLIP3o branch main @ 4689ec3:
blip3o/model/language_model/blip3o_qwen.py and blip3o_qwen_inference.py, blip3o/model/blip3o_arch.py
`blip3oMetaModel`, multimodal_encoder/builder.py `build_dit`, nextdit_crossattn.py, train/train.py
`safe_save_model_for_hf_trainer`, inference.py; transformers 4.51.3 per requirements.txt):

  config.json   a Qwen2_5_VLConfig (text fields at the top level, `vision_config`) with model_type
                "blip3o_qwen" (training) or "blip3o_qwen_inference", plus n_query (64), gen_vision_tower
                ("eva-clip-E-14-plus"), gen_pooling ("early_pool2d_4"). The DiT's config is not stored:
                build_dit makes NextDiTCrossAttnConfig(latent_embedding_size=hidden_size), all else its
                defaults (8×8×1792, 24 layers, 28 heads); its sizes are read here from the tensor shapes.
  model.safetensors (or shards + index), transformers 4.51 names:
      visual.*                       the Qwen2.5-VL vision tower
      model.embed_tokens / model.layers.* / model.norm / lm_head     the Qwen2.5 language model
      model.latent_queries           [1, n_query, H] (randn-initialised, trained)
      model.dit.model.*              the NextDiT-CrossAttn DiT (LuminaNextDiT2DModel names plus
                                     caption_projection)
      model.gen_vision_tower.*       EVA-CLIP, when saved (built with delay_load: unused to sample)
  diffusion-decoder/   a diffusers pipeline (model_index.json, unet/ = SDXL UNet2DConditionModel,
                vae/ = AutoencoderKL, scheduler/; weights saved with variant "bf16") that inference.py
                loads with custom_pipeline "pipeline_llava_gen" to turn the 64×1792 features into pixels
  tokenizer files      Qwen2.5's, with [IMG] (151665), [/IMG] (151666), <image> (151667) added
  also mm_projector.bin / gen_projector.bin: pickles of the (empty) adapters, never opened here

Mapping onto `UnifiedModel`: und_encoder = the Qwen2.5-VL tower at a fixed 448² (und_projector
"none"), queries="learnable" (the 64 latent queries), connector "identity" (the DiT projects the
states itself), gen_target="latents" over the 8×8×1792 feature grid without an in-model decoder, so
`generate_image` returns the CLIP features [B, 8, 8, 1792] (row-major = the release's 64 tokens);
transformers ≥ 4.52 names (model.language_model.*, model.visual.*) are accepted as aliases.
The pixel decoder (`diffusion-decoder/`) loads as `pixel_decoder.SDXLFeatureDecoder`; without the
folder, generation stops at the features and `notes` says so.

UNCONFIRMED (the corpora hold the code, not the hub files): which model_type the hub config.json
carries (both names are accepted), the DiT FFN width (4864 or 7168 per diffusers version: read from
feed_forward.linear_1.weight here), the scheduler shift (the Lumina-Next-SFT scheduler_config.json's
`shift`; 1.0 assumed in `sampling`). Check the tensor names with the directory's
model.safetensors.index.json `weight_map`.
"""
from __future__ import annotations

import os
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.hf import llm_family, lumina_family, qwen2_5_vl_family
from jaxmodels.hf.keymap import Source
from jaxmodels.unified.config import UnifiedConfig
from jaxmodels.unified.model import UnifiedModel
from jaxmodels.unified.released import common

KIND = "blip3o"
MODEL_TYPES = ("blip3o_qwen", "blip3o_qwen_inference")
DIT = "model.dit.model."
DECODER_DIR = "diffusion-decoder"
IMAGE_SIZE = 448              # fixed side of the understanding tower (configs/blip3o_8b.py)
UND_IMAGE_TOKEN = 151655      # <|image_pad|> (blip3o/constants.py UND_IMAGE_TOKEN_IDX)
PROMPT = "Please generate image based on the following caption: {prompt}"      # inference.py
SYSTEM_PROMPT = "You are a helpful assistant."                                   # conv_templates["qwen"]
ALIASES = (("model.", "model.language_model."), ("visual.", "model.visual."))


def matches(config: dict, path: str) -> bool:
  return config.get("model_type") in MODEL_TYPES and "vision_config" in config


def dit_config(ckpt: common.Checkpoint, hidden: int, dtype: str):
  """NextDiTCrossAttn's config: its defaults, the AR width, and the sizes the stored tensors show."""
  dim, in_features = common.stored_shape(ckpt, DIT + "patch_embedder.proj.weight", "the DiT width")
  heads = common.stored_shape(ckpt, DIT + "layers.0.gate", "the DiT head count")[0]
  kv_rows = common.stored_shape(ckpt, DIT + "layers.0.attn1.to_k.weight", "the DiT kv head count")[0]
  ffn = common.stored_shape(ckpt, DIT + "layers.0.feed_forward.linear_1.weight", "the DiT FFN width")[0]
  layers = common.count_indexed(ckpt.weights, DIT + "layers.")
  if dim % heads or kv_rows % (dim // heads):
    raise CheckpointFormatError(f"{ckpt.weights.file_of(DIT + 'layers.0.gate')}: {heads} heads do not divide "
                                f"the DiT width {dim} (or its kv rows {kv_rows})")
  d = dict(model_type=lumina_family.BLIP3O_TYPE, dim=dim, in_channels=in_features, n_layers=layers,
           n_heads=heads, n_kv_heads=kv_rows // (dim // heads), latent_embedding_size=hidden,
           ffn_hidden_size=ffn)
  return common.convert(common.family("lumina"), d, ckpt.path, **common.exec_options(dtype))


def load(ckpt: common.Checkpoint, dtype: str) -> common.ReleasedModel:
  ckpt.kind = KIND
  d = ckpt.config
  exec_kw = common.exec_options(dtype)
  llm = common.qwen2_5_vl_language_model(d, ckpt.path, **exec_kw)
  vision = common.convert_scanned(common.family("qwen2_5_vl_vision"), {**d, "model_type": "qwen2_5_vl"}, ckpt.path,
                                  image_size=IMAGE_SIZE, **common.exec_options(dtype, scan=False))
  dit = dit_config(ckpt, llm.hidden_size, dtype)
  config = UnifiedConfig(
      llm=llm, dit=dit, und_encoder=vision, und_projector="none", image_token_id=UND_IMAGE_TOKEN,
      gen_target="latents", latent_size=dit.sample_size, latent_channels=dit.in_channels, vae=None,
      queries="learnable", num_queries=int(d.get("n_query", 64)), connector="identity", cfg_null="zeros")
  keymap = common.nest(llm_family.keymap(llm), ("llm",))
  keymap.update(common.nest(qwen2_5_vl_family.keymap(vision), ("und_encoder",), "visual."))
  keymap[("queries",)] = Source("model.latent_queries")                # [1, N, H] -> [N, H]
  keymap.update(common.nest(lumina_family.keymap(dit), ("dit",), "model.dit."))
  model = common.load(lambda: UnifiedModel(config, rngs=nnx.Rngs(0)), keymap, ckpt.weights, dtype, ALIASES)
  notes = ["Qwen2.5-VL images at a fixed 448² (one 32 × 32-patch frame, M-RoPE positions)",
           "prompt_suffix [IMG] must tokenise to id 151665 (the release appends that id after the prompt)",
           "sampling shift 1.0: the Lumina-Next-SFT scheduler's shift is UNCONFIRMED (spec §0.3)"]
  decoder_dir = ckpt.subdir(DECODER_DIR)
  decoder = None
  if decoder_dir is not None:
    from jaxmodels.unified.pixel_decoder import SDXLFeatureDecoder
    decoder = SDXLFeatureDecoder.from_directory(decoder_dir, dtype=jnp.dtype(dtype))
  else:
    notes.insert(0, f"no {DECODER_DIR}/ folder: generation stops at the CLIP features")
  return common.ReleasedModel(
      model=model, kind=KIND, path=ckpt.path, can_generate=True, can_answer=True, can_edit=False,
      tokenizer_dir=common.tokenizer_dir(ckpt.path), system_prompt=SYSTEM_PROMPT, prompt_template=PROMPT,
      prompt_suffix="[IMG]", answer_template="<|vision_start|><image><|vision_end|>{question}",
      sampling=dict(num_steps=30, guidance=3.0, solver="euler", shift=1.0), pixel_decoder=decoder,
      pixel_decoder_dir=decoder_dir if decoder_dir and os.path.isdir(decoder_dir) else None,
      notes=tuple(notes), unused=ckpt.weights.unused())
