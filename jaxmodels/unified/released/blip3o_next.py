"""BLIP3o-NEXT's released layout (HF BLIP3o/BLIP3o-NEXT-SFT-3B, -GRPO-*; spec §3).

What a released directory holds (JiuhaiChen/BLIP3o branch BLIP3o-NEXT @ 6ced364:
blip3o/model/language_model/blip3o_qwen.py and blip3o_qwen_inference.py, blip3o/model/blip3o_arch.py
`blip3oMetaModel`, multimodal_encoder/ta_tok_encoder.py, multimodal_decoder/builder.py, tok/ta_tok.py,
tok/ar_dtok/bottleneck.py; blip3o/train/train.py saves the trainer's full state dict):

  config.json   a Qwen3Config with model_type "blip3o_qwen" (saved by training; the inference class
                registers "blip3o_qwen_inference") and the keys train.py / initialize_vision_tokenizer
                add: mm_vision_tower (TA-Tok), diffusion_name_or_path (the SANA pipeline, e.g.
                "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"), image_start_tag_id /
                image_end_tag_id (<im_start>, <im_end>), scale_start_token_id / num_scale_tokens
                (<S0..S2>), image_start_token_id / num_image_tokens (<I0..I65535>), vocab_size.
                The tokenizer appends, after its V0 text ids: <im_start>, <im_end>, <S0..2>, <I0..>.
  model.safetensors (or shards + index), transformers names:
      model.embed_tokens / model.layers.* / model.norm / lm_head    Qwen3 with the grown vocabulary
      model.vision_tower.vision_tower.*   TA-Tok (TextAlignedTokenizer): encoder.* (SigLIP2 vision
          model, `vision_model.*` names without that prefix), encode_task_layer.0 (Linear; Tanh),
          bottleneck.in_linear, bottleneck.regularizer.embedding (codebook [K, d]),
          bottleneck.regularizer.embedding_proj (Linear d -> d, with bias), plus its pixel decoder
          (decoder.*, decode_task_layer.*, bottleneck.out_linear), unused here
      model.diffusion_connector.0 / .2 / .3   Linear(H -> 2304), GELU(tanh), Linear, RMSNorm(2304)
      model.sana.*        SanaTransformer2DModel (diffusers names)
      model.sana_vae.*    AutoencoderDC (diffusers names)
  tokenizer files (the trainer saves the grown tokenizer)

Mapping onto `UnifiedModel` (queries="image_tokens", connector="mlp_norm", SANA DiT, in-model DC-AE):
our vocabulary is [text 0..V0) + codes + scale tokens + <im_start>, <im_end>, so the stored embedding
and lm_head rows are reordered by views (the text rows are unchanged: prompts tokenise as the release's
tokenizer does; the model appends <im_start><S0> itself). The SANA / DC-AE configs come from
`diffusion_name_or_path` (a local pipeline folder, else the published config of that hub id); TA-Tok's
encoder config from `mm_vision_tower` when it is a local folder with a SigLIP config.json, else the
SigLIP2-so400m/14-384 shape; the code dimension is read from the stored codebook (UNCONFIRMED in the
spec). TA-Tok's L2 normalisation (its checkpoint args, not stored here) is taken as on; override with
overrides={"ta_tok_l2_normalized": False}.

UNCONFIRMED (the corpora hold the code, not the hub files): the Qwen3 size of the 3B release (read from
its config.json here, so any size loads), TA-Tok's L2 normalisation (its ta_tok.pth args
`bottleneck.args.regularizer.args.l2_normalized`, a pickle: read it in a trusted environment), whether
lm_head is stored (tied configs store only the embedding; both load). Check the tensor names with the
directory's model.safetensors.index.json `weight_map`.
"""
from __future__ import annotations

from flax import nnx

from jaxmodels import presets
from jaxmodels.errors import CheckpointFormatError
from jaxmodels.hf import dcae_family, llm_family, sana_family, vision_family
from jaxmodels.hf.keymap import Source
from jaxmodels.hf.safetensors_io import read_config
from jaxmodels.unified.config import ImageTokenizerConfig, UnifiedConfig
from jaxmodels.unified.model import UnifiedModel
from jaxmodels.unified.released import common

KIND = "blip3o_next"
MODEL_TYPES = ("blip3o_qwen", "blip3o_qwen_inference")
TOK = "model.vision_tower.vision_tower."
PROMPT = "Please generate image based on the following caption: {prompt}"     # inference.py
SYSTEM_PROMPT = "You are a helpful assistant."


def matches(config: dict, path: str) -> bool:
  return (config.get("model_type") in MODEL_TYPES and "vision_config" not in config
          and ("num_image_tokens" in config or "diffusion_name_or_path" in config))


def vocabulary_order(ckpt: common.Checkpoint) -> tuple[int, list[int]]:
  """(V0, stored row of each of our vocabulary rows): text, codes, scale tokens, <im_start>, <im_end>."""
  d = ckpt.config
  vocab = int(ckpt.require("vocab_size"))
  codes, scales = int(ckpt.require("num_image_tokens")), int(d.get("num_scale_tokens", 3))
  first = {k: int(ckpt.require(k)) for k in ("image_start_token_id", "scale_start_token_id",
                                              "image_start_tag_id", "image_end_tag_id")}
  v0 = vocab - codes - scales - 2
  order = (list(range(v0)) + list(range(first["image_start_token_id"], first["image_start_token_id"] + codes))
           + list(range(first["scale_start_token_id"], first["scale_start_token_id"] + scales))
           + [first["image_start_tag_id"], first["image_end_tag_id"]])
  if v0 < 1 or sorted(order) != list(range(vocab)):
    raise CheckpointFormatError(
        f"{ckpt.config_file}: vocab_size={vocab} with num_image_tokens={codes}, num_scale_tokens={scales} and "
        f"the start ids {first} do not tile the vocabulary (text ids, then <im_start>, <im_end>, scale and "
        f"image tokens)")
  return v0, order


def _encoder(ckpt: common.Checkpoint, dtype: str):
  """TA-Tok's SigLIP encoder config: a local mm_vision_tower folder's config.json, else SigLIP2-so400m/14."""
  exec_kw = common.exec_options(dtype)
  folder = ckpt.local_dir(ckpt.config.get("mm_vision_tower"))
  if folder is not None:
    base = read_config(folder)
    return common.convert(common.family("vision"), {**base, "model_type": base.get("model_type",
                                                                                 "siglip_vision_model")},
                          folder, use_head=False, **exec_kw)
  return presets.vision_preset("siglip-so400m-patch14-384", use_head=False, **exec_kw)


def load(ckpt: common.Checkpoint, dtype: str) -> common.ReleasedModel:
  ckpt.kind = KIND
  d = ckpt.config
  exec_kw = common.exec_options(dtype)
  llm = common.convert(common.family("llm"), {**d, "model_type": "qwen3", "rope_scaling": None}, ckpt.path,
                       **exec_kw)
  v0, order = vocabulary_order(ckpt)
  encoder = _encoder(ckpt, dtype)
  codes = int(d["num_image_tokens"])
  codebook, code_dim = common.stored_shape(ckpt, TOK + "bottleneck.regularizer.embedding.weight",
                                           "the code dimension")
  if codebook != codes:
    raise CheckpointFormatError(f"{ckpt.weights.file_of(TOK + 'bottleneck.regularizer.embedding.weight')}: "
                                f"the TA-Tok codebook has {codebook} rows, config num_image_tokens={codes}")
  tokenizer = ImageTokenizerConfig(encoder=encoder, codebook_size=codes, code_dim=code_dim,
                                   l2_norm=bool(d.get("ta_tok_l2_normalized", True)),
                                   num_scale_tokens=int(d.get("num_scale_tokens", 3)), scale=1,
                                   codebook_proj_bias=True)
  sana = common.diffusers_part(ckpt, "diffusion_name_or_path", "transformer", dtype)
  vae = common.diffusers_part(ckpt, "diffusion_name_or_path", "vae", dtype)
  config = UnifiedConfig(
      llm=llm, dit=sana, und_encoder=None, image_tokenizer=tokenizer, image_vocab_offset=v0,
      image_token_id=v0 - 1, gen_target="latents", queries="image_tokens", connector="mlp_norm",
      cfg_null="zeros", image_top_k=1200, image_top_p=0.95, latent_size=sana.sample_size,
      latent_channels=sana.in_channels, vae=vae, gen_image_size=sana.sample_size * vae.spatial_compression_ratio)
  for key in ("model.embed_tokens.weight", "lm_head.weight"):      # rows into our vocabulary order
    ckpt.weights.view(key, key, lambda table: table[order])
  keymap = common.nest(llm_family.keymap(llm), ("llm",))
  keymap.update(common.nest(vision_family.keymap(encoder), ("image_tokenizer", "encoder"), TOK,
                            lambda k: "encoder." + k[len("vision_model."):]))
  for ours, hf in (("encode_task_layer", "encode_task_layer.0"), ("bottleneck", "bottleneck.in_linear"),
                   ("codebook_proj", "bottleneck.regularizer.embedding_proj")):
    keymap[("image_tokenizer", ours, "kernel")] = Source(f"{TOK}{hf}.weight", "linear")
    keymap[("image_tokenizer", ours, "bias")] = Source(f"{TOK}{hf}.bias", "bias")
  keymap[("image_tokenizer", "codebook")] = Source(TOK + "bottleneck.regularizer.embedding.weight")
  for ours, index in (("fc1", 0), ("fc2", 2)):
    keymap[("connector", "proj", ours, "kernel")] = Source(f"model.diffusion_connector.{index}.weight", "linear")
    keymap[("connector", "proj", ours, "bias")] = Source(f"model.diffusion_connector.{index}.bias", "bias")
  keymap[("connector", "proj", "norm", "scale")] = Source("model.diffusion_connector.3.weight")
  keymap.update(common.nest(sana_family.keymap(sana), ("dit",), "model.sana."))
  keymap.update(common.nest(dcae_family.keymap(vae), ("vae",), "model.sana_vae."))
  model = common.load(lambda: UnifiedModel(config, rngs=nnx.Rngs(0)), keymap, ckpt.weights, dtype)
  return common.ReleasedModel(
      model=model, kind=KIND, path=ckpt.path, can_generate=True, can_answer=False, can_edit=False,
      tokenizer_dir=common.tokenizer_dir(ckpt.path), system_prompt=SYSTEM_PROMPT, prompt_template=PROMPT,
      sampling=dict(num_steps=30, guidance=2.0, solver="euler", shift=1.0),
      notes=(f"vocabulary rows from {v0} on are reordered to [codes, <S0..>, <im_start>, <im_end>]: ids the "
             f"release's tokenizer gives those tokens differ here (prompts need only text ids; the model "
             f"appends <im_start><S0>)",
             "the condition re-run masks left padding (the release re-runs without a mask)",
             "TA-Tok L2 normalisation assumed on (UNCONFIRMED; overrides={'ta_tok_l2_normalized': False})",
             "no editing path in this layout (BLIP3o-NEXT-edit's injection is UNCONFIRMED)"),
      unused=ckpt.weights.unused())

