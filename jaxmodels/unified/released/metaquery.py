"""MetaQuery's released layout (MetaQuery-B / -L / -XL, HF xcpan/MetaQuery-*; spec §4).

What a checkpoint directory holds (facebookresearch/metaquery @ 206f6de: models/metaquery.py
`MetaQuery(PreTrainedModel)`, models/model.py `MLLMInContext`, models/transformer_encoder.py
`Qwen2Encoder`, train.py: a transformers Trainer checkpoint, transformers 4.49 per environment.yml):

  config.json   model_type "metaquery": mllm_id ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
                "Qwen/Qwen2.5-VL-3B-Instruct" or -7B), diffusion_model_id / vae_id (a SANA diffusers
                pipeline, e.g. "Efficient-Large-Model/Sana_1600M_512px_diffusers"), num_metaqueries
                (256), connector_num_hidden_layers (24), input_size (16 = 512 / vae_downsample_f),
                in_channels (32), loss_type ("flow"; "diff" is the SD1.5 variant), system_prompt,
                max_input_text_tokens (256). The MLLM's and SANA's own configs are not stored: they are
                read from `mllm_id` / `diffusion_model_id` (a local folder, else the published sizes).
  model.safetensors (or shards + model.safetensors.index.json):
      model.mllm_backbone.*       the frozen MLLM, transformers 4.49 names —
          LLaVA-OneVision: language_model.model.* (Qwen2), vision_tower.vision_model.* (SigLIP),
                           multi_modal_projector.linear_1 / linear_2, image_newline (unused here)
          Qwen2.5-VL:      model.* (Qwen2), visual.* (the vision tower)
          no lm_head: MetaQuery replaces it by an identity before training. The embedding table has
          V + N + 2 rows: the tokenizer appends <begin_of_img>, <end_of_img>, <img0> .. <img{N-1}>
          after the V original rows (models/model.py), so <boi> = V, <eoi> = V + 1, <img_i> = V + 2 + i.
      model.transformer.*         SanaTransformer2DModel (diffusers names)
      model.connector.0.layers.i.{input_layernorm, self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm.gamma
                                  ([heads, 1, 64]), post_attention_layernorm, mlp.{gate,up,down}_proj}
      model.connector.1 / .3 / .4 Linear(H -> C), Linear(C -> C), RMSNorm(C) (the GELU(tanh) is .2)
      vae.*                       AutoencoderDC (diffusers names)
  no tokenizer files: the base MLLM's tokenizer is used (ours appends the query tokens itself).

Mapping onto `UnifiedModel` (queries="vocab", connector="transformer" with per-head γ, SANA DiT, DC-AE):
llm embed = rows [0, V) of the stored table, query_embed = rows <img0..N-1>, <boi>, <eoi> reordered into
our [img..., boi, eoi] layout; both towers' key maps (llm_family, vision_family / qwen2_5_vl_family,
sana_family, dcae_family) are reused with the prefixes above; transformers ≥ 4.52 names
(model.mllm_backbone.model.language_model.*, ...) are accepted as aliases.

UNCONFIRMED (the corpora hold the code, not the hub files): the transformers version of the released
files (4.49 names, with the newer spellings as aliases), and an XL head: Qwen2.5-VL-7B's head is untied
and not saved, so that model cannot answer here. Check a directory with its model.safetensors.index.json
`weight_map` (or `SafetensorsReader(dir).keys()`).
"""
from __future__ import annotations

import dataclasses

from flax import nnx

from jaxmodels import presets
from jaxmodels.errors import CheckpointFormatError
from jaxmodels.hf import dcae_family, llm_family, qwen2_5_vl_family, sana_family, vision_family
from jaxmodels.hf.keymap import Source
from jaxmodels.hf.safetensors_io import read_config
from jaxmodels.unified.config import UnifiedConfig
from jaxmodels.unified.model import UnifiedModel
from jaxmodels.unified.released import common

KIND = "metaquery"
SYSTEM_PROMPT = ("You will be given an image or its caption. Please describe the content of the image in "
                 "detail in your own words.")           # MLLMInContextConfig's default
QWEN_VL_IMAGE_SIZE = 448                                # fixed side of the Qwen2.5-VL tower (as the configs)
# Published base MLLMs: (kind, LLM preset, vision preset, image placeholder id).
MLLM_PRESETS = {
    "llava-hf/llava-onevision-qwen2-0.5b-ov-hf": ("llavaov", "qwen2-0.5b", "siglip-so400m-patch14-384", 151646),
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwenvl", "qwen2.5-3b", "qwen2.5-vl-3b-vision", 151655),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwenvl", "qwen2.5-7b", "qwen2.5-vl-7b-vision", 151655),
}
BACKBONE = "model.mllm_backbone."
ANSWER_TEMPLATES = {"llavaov": "<image>\n{question}",            # the processors' image slots
                    "qwenvl": "<|vision_start|><image><|vision_end|>{question}"}
PREFIXES = {  # kind -> (LLM key prefix, vision key prefix, projector key prefix)
    "llavaov": (BACKBONE + "language_model.", BACKBONE + "vision_tower.", BACKBONE + "multi_modal_projector."),
    "qwenvl": (BACKBONE, BACKBONE + "visual.", None),
}
ALIASES = {  # transformers >= 4.52 names of the same tensors (5.x also drops SigLIP's `vision_model.`)
    "llavaov": ((BACKBONE + "language_model.model.", BACKBONE + "model.language_model."),
                (BACKBONE + "vision_tower.vision_model.", BACKBONE + "model.vision_tower."),
                (BACKBONE + "vision_tower.", BACKBONE + "model.vision_tower."),
                (BACKBONE + "multi_modal_projector.", BACKBONE + "model.multi_modal_projector.")),
    "qwenvl": ((BACKBONE + "model.", BACKBONE + "model.language_model."),
               (BACKBONE + "visual.", BACKBONE + "model.visual.")),
}


def matches(config: dict, path: str) -> bool:
  return config.get("model_type") == KIND


def _stored_alias(ckpt: common.Checkpoint, key: str, aliases) -> str:
  """`key`, or its alias spelling when only that is stored."""
  for prefix, repl in aliases:
    alias = repl + key[len(prefix):]
    if not ckpt.weights.stored(key) and key.startswith(prefix) and ckpt.weights.stored(alias):
      return alias
  return key


def _backbone(ckpt: common.Checkpoint, dtype: str):
  """(kind, LLMConfig, vision config, image token id, base folder or None) of `mllm_id`."""
  mllm_id = ckpt.require("mllm_id")
  exec_kw = common.exec_options(dtype)
  folder = ckpt.local_dir(mllm_id)
  if folder is not None:
    base = read_config(folder)
    kind = {"llava_onevision": "llavaov", "qwen2_5_vl": "qwenvl"}.get(base.get("model_type"))
    if kind is None:
      raise CheckpointFormatError(f"{folder}/config.json: model_type {base.get('model_type')!r} is not a "
                                  f"MetaQuery backbone (llava_onevision or qwen2_5_vl)")
    if kind == "llavaov":
      text = {"model_type": "qwen2", **(base.get("text_config") or {})}
      vision = {"model_type": "siglip_vision_model", **(base.get("vision_config") or {})}
      llm = common.convert(common.family("llm"), text, folder, **exec_kw)
      vision = common.convert(common.family("vision"), vision, folder, **exec_kw)
      return kind, llm, vision, int(base.get("image_token_index", 151646)), folder
    llm = common.qwen2_5_vl_language_model(base, folder, **exec_kw)
    vision = common.convert_scanned(common.family("qwen2_5_vl_vision"), base, folder,
                                    image_size=QWEN_VL_IMAGE_SIZE, **common.exec_options(dtype, scan=False))
    return kind, llm, vision, int(base.get("image_token_id", 151655)), folder
  if mllm_id not in MLLM_PRESETS:
    raise CheckpointFormatError(
        f"{ckpt.config_file}: mllm_id={mllm_id!r} is neither a local folder nor a known MetaQuery backbone "
        f"({', '.join(MLLM_PRESETS)}); download its config.json and pass overrides={{'mllm_id': <folder>}}")
  kind, llm_name, vision_name, image_token = MLLM_PRESETS[mllm_id]
  llm = presets.llm_preset(llm_name, **exec_kw)
  if kind == "qwenvl":
    from jaxmodels.hf.qwen2_5_vl_family import DEFAULT_MROPE_SECTION
    llm = llm.replace(mrope_section=DEFAULT_MROPE_SECTION)
    return kind, llm, presets.qwen2_5_vl_vision_preset(vision_name, image_size=QWEN_VL_IMAGE_SIZE, **exec_kw), \
        image_token, None
  # The HF LLaVA-OneVision tower keeps 26 of SigLIP-so400m's 27 layers and no attention-pool head.
  layers = common.count_indexed(ckpt.weights, PREFIXES[kind][1] + "vision_model.encoder.layers.")
  vision = presets.vision_preset(vision_name, use_head=False, num_layers=layers or 26, **exec_kw)
  return kind, llm, vision, image_token, None


def connector_keymap(layers: int, prefix: str = "model.connector.") -> dict:
  """`Connector("transformer")` <- models/model.py's nn.Sequential(Qwen2Encoder, Linear, GELU, Linear,
  RMSNorm)."""
  m = {}
  for i in range(layers):
    ours, hf = ("connector", "encoder", "layers", i), f"{prefix}0.layers.{i}."
    m[ours + ("attn_norm", "scale")] = Source(hf + "input_layernorm.weight")
    m[ours + ("mlp_norm", "scale")] = Source(hf + "post_attention_layernorm.weight")
    for p in ("q", "k", "v"):
      m[ours + (p, "kernel")] = Source(hf + f"self_attn.{p}_proj.weight", "linear")
      m[ours + (p, "bias")] = Source(hf + f"self_attn.{p}_proj.bias", "bias")
    m[ours + ("o", "kernel")] = Source(hf + "self_attn.o_proj.weight", "linear", n_in=2)
    m[ours + ("q_gamma",)] = Source(hf + "self_attn.q_norm.gamma")      # [heads, 1, d] -> [heads, d]
    m[ours + ("k_gamma",)] = Source(hf + "self_attn.k_norm.gamma")
    for p in ("gate", "up", "down"):
      m[ours + ("mlp", p, "kernel")] = Source(hf + f"mlp.{p}_proj.weight", "linear")
  for ours, index in (("fc1", 1), ("fc2", 3)):
    m[("connector", "proj", ours, "kernel")] = Source(f"{prefix}{index}.weight", "linear")
    m[("connector", "proj", ours, "bias")] = Source(f"{prefix}{index}.bias", "bias")
  m[("connector", "proj", "norm", "scale")] = Source(f"{prefix}4.weight")
  return m


def load(ckpt: common.Checkpoint, dtype: str) -> common.ReleasedModel:
  ckpt.kind = KIND
  d = ckpt.config
  if d.get("loss_type", "flow") != "flow":
    raise CheckpointFormatError(f"{ckpt.config_file}: loss_type={d['loss_type']!r} (the SD1.5 UNet variant) "
                                f"is not supported; the SANA variants (loss_type 'flow') are")
  kind, llm, vision, image_token, base_dir = _backbone(ckpt, dtype)
  n = int(ckpt.require("num_metaqueries"))
  llm_prefix, vision_prefix, projector_prefix = PREFIXES[kind]
  aliases = ALIASES[kind]
  embed_key = _stored_alias(ckpt, llm_prefix + "model.embed_tokens.weight", aliases)
  rows = common.stored_shape(ckpt, embed_key, "the vocabulary size")[0]
  vocab = rows - n - 2
  if vocab < 1:
    raise CheckpointFormatError(f"{ckpt.weights.file_of(embed_key)}: tensor {embed_key!r} has {rows} rows, "
                                f"fewer than num_metaqueries + 2 = {n + 2}")
  head_stored = ckpt.weights.stored(_stored_alias(ckpt, llm_prefix + "lm_head.weight", aliases))
  answerable = head_stored or llm.tie_word_embeddings      # a tied base head is the embedding itself
  notes = [] if answerable else [
      "no lm_head in the release (MetaQuery replaces it by an identity) and the base MLLM's head is "
      "untied: answers are not available"]
  llm = dataclasses.replace(llm, vocab_size=vocab, tie_word_embeddings=not head_stored)
  sana = common.diffusers_part(ckpt, "diffusion_model_id", "transformer", dtype)
  vae = common.diffusers_part(ckpt, "vae_id", "vae", dtype)
  latent = int(d.get("input_size", 16))
  config = UnifiedConfig(
      llm=llm, dit=sana, und_encoder=vision, und_projector="mlp2x_gelu" if kind == "llavaov" else "none",
      image_token_id=image_token, gen_target="latents", queries="vocab", num_queries=n,
      connector="transformer", connector_layers=int(d.get("connector_num_hidden_layers", 24)),
      connector_per_head_gamma=True, cfg_null="empty_caption", latent_size=latent,
      latent_channels=int(d.get("in_channels", sana.in_channels)), vae=vae,
      gen_image_size=latent * int(d.get("vae_downsample_f", vae.spatial_compression_ratio)))
  keymap = common.nest(llm_family.keymap(llm), ("llm",), llm_prefix)
  keymap[("llm", "embed", "embedding")] = Source(embed_key, rows=(0, vocab))
  vision_map = (vision_family.keymap(vision) if kind == "llavaov" else qwen2_5_vl_family.keymap(vision))
  keymap.update(common.nest(vision_map, ("und_encoder",), vision_prefix))
  if projector_prefix is not None:
    for ours, hf in (("fc1", "linear_1"), ("fc2", "linear_2")):
      keymap[("und_projector", ours, "kernel")] = Source(f"{projector_prefix}{hf}.weight", "linear")
      keymap[("und_projector", ours, "bias")] = Source(f"{projector_prefix}{hf}.bias", "bias")
  queries = embed_key + f"[rows <img0..{n - 1}>, <boi>, <eoi>]"
  order = list(range(vocab + 2, vocab + 2 + n)) + [vocab, vocab + 1]
  ckpt.weights.view(queries, embed_key, lambda table: table[order])
  keymap[("query_embed",)] = Source(queries)
  keymap.update(connector_keymap(config.connector_layers))
  keymap.update(common.nest(sana_family.keymap(sana), ("dit",), "model.transformer."))
  keymap.update(common.nest(dcae_family.keymap(vae), ("vae",), "vae."))
  model = common.load(lambda: UnifiedModel(config, rngs=nnx.Rngs(0)), keymap, ckpt.weights, dtype, aliases)
  if kind == "llavaov":
    notes.append("LLaVA-OneVision's image path is approximated: one 384² view (no any-res tiles, no "
                 "image_newline) through the SigLIP tower's final (post-LayerNorm) output")
  else:
    notes.append(f"Qwen2.5-VL images at a fixed {QWEN_VL_IMAGE_SIZE}² (one frame, M-RoPE positions for "
                 "answers; an edit's input image keeps text-style positions)")
  notes.append("prompts end in '\\n' before <begin_of_img> (prompt_suffix); the <|im_end|> after "
               "<end_of_img> is not appended (it follows the queries causally)")
  notes.append("CFG null: the MLLM pass over no caption tokens (the release renders its chat template "
               "around an empty caption)")
  return common.ReleasedModel(
      model=model, kind=KIND, path=ckpt.path, can_generate=True, can_answer=answerable, can_edit=True,
      tokenizer_dir=common.tokenizer_dir(ckpt.path, base_dir),
      system_prompt=d.get("system_prompt", SYSTEM_PROMPT), prompt_template="{prompt}", prompt_suffix="\n",
      answer_template=ANSWER_TEMPLATES[kind], max_prompt_tokens=int(d.get("max_input_text_tokens", 256)),
      sampling=dict(num_steps=30, guidance=7.5, solver="dpm++2m", shift=3.0, image_guidance=1.5),
      notes=tuple(notes), unused=ckpt.weights.unused())
