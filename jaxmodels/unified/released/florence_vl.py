"""Florence-VL's released layout (HF jiuhai/florence-vl-3b-sft, jiuhai/florence-vl-8b-sft; spec §6).

What a released directory holds (JiuhaiChen/Florence-VL @ c1d4abd: llava/model/llava_arch.py,
language_model/llava_{phi3,llama}.py, multimodal_encoder/florence_encoder.py,
multimodal_projector/builder.py, train/train.py `safe_save_model_for_hf_trainer`):

  config.json      model_type "llava_phi" (Phi-3.5-mini, 3B) or "llava_llama" (Llama-3.1-8B, 8B): the
                   LLM's own config keys plus LLaVA's mm_vision_tower (the Florence-2 folder the run
                   read), mm_projector_type "mlp3x_gelu", mm_hidden_size 1024, image_aspect_ratio "pad"
  model*.safetensors (+ model.safetensors.index.json) — the trainer's full state dict:
      model.embed_tokens / model.layers.* / model.norm / lm_head            the LLM (transformers names)
      model.mm_projector.encoder_mlp.0 / .1.1 / .2.1   DualMLPProjector: Linear(4·1024 -> D), then
                                                       (GELU, Linear(D -> D)) × 2
      model.vision_tower.vision_tower.*                Florence-2 in its *remote-code* names
                                                       (microsoft/Florence-2-large's modeling file)
  vision_tower/    the Florence-2 config.json (remote-code keys: vision_config.dim_embed, ...),
                   preprocessor_config.json (768×768) and tokenizer files; with tune_entire_model also a
                   pickle vision_tower/pytorch_model.bin, never opened here
  tokenizer files  the LLM's tokenizer (the trainer saves it)

Florence-2 names: the remote-code layout differs from transformers' native `Florence2ForConditionalGeneration`
(which jaxmodels/hf/florence2_family.py maps) by a fixed renaming — the one transformers'
models/florence2/convert_florence2_original_pytorch_to_hf.py applies: `vision_tower.convs.i.proj` ->
`.conv`, blocks' `conv{1,2}.fn.dw` -> `conv{1,2}`, `window_attn.norm` / `channel_attn.norm` -> `norm1`,
`*.fn.qkv|proj` -> `*.qkv|proj`, `ffn.norm` -> `norm2`, `ffn.fn.net.fc*` -> `ffn.fc*`, `image_projection`
(a [in, out] Parameter; native: a Linear weight, transposed) -> `multi_modal_projector.image_projection`,
`image_proj_norm` / `image_pos_embed` -> `multi_modal_projector.image_proj_norm` / `.image_position_embed`,
`language_model.model.*` -> `model.language_model.*`. The native key map is reused through the inverse
renaming (`REMOTE_NAMES`). Where the main safetensors lack the Florence-2 tensors, the safetensors of
vision_tower/ or of a local `mm_vision_tower` folder (remote names, no prefix) are read instead; the
published vision-tower repos (e.g. HF jiuhai/florence-phi-vision-tower) hold pickles, which are refused.

The three DBFusion prompts are the token ids the release passes (florence_encoder.py `task_ids`: the
BART tokenisation of spec §6.1's prompts with <s> ... </s>; its padding dropped, our encoder masks it —
the release passes no mask, UNCONFIRMED whether the remote model attends to those pads). The image
side comes from vision_tower/preprocessor_config.json (768 when absent). `<image>` is spliced at the
configs' placeholder id (32011 for Phi-3.5, 128011 for Llama-3.1, the last vocabulary row when those do
not exist), since the release's LLaVA index −200 is no token.

UNCONFIRMED (the corpora hold the code, not the hub files): whether the released main safetensors hold
the Florence-2 tensors (the trainer saves its whole state dict, so they should; otherwise a
vision_tower/model.safetensors is read), and whether the remote model attends to the prompts' pads.
Check a directory with its model.safetensors.index.json `weight_map` (or
`SafetensorsReader(dir).keys()`): the keys under model.vision_tower.vision_tower.*.
"""
from __future__ import annotations

import os

from flax import nnx

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.hf import florence2_family, llm_family
from jaxmodels.hf.keymap import Source
from jaxmodels.hf.safetensors_io import read_config
from jaxmodels.unified.dbfusion import DBFusionConfig
from jaxmodels.unified.florence_vl import florence_vl
from jaxmodels.unified.model import UnifiedModel
from jaxmodels.unified.released import common
from jaxmodels.vision.florence2 import florence2_preset

KIND = "florence_vl"
MODEL_TYPES = {"llava_phi": "phi3", "llava_llama": "llama"}
REMOTE = "model.vision_tower.vision_tower."
# florence_encoder.py's task_ids without their trailing pads (id 1).
RELEASE_PROMPT_IDS = ((0, 47066, 21700, 11, 4617, 99, 16, 2343, 11, 5, 2274, 4, 2),
                      (0, 2264, 16, 5, 2788, 11, 5, 2274, 116, 2),
                      (0, 574, 22486, 5, 8720, 11, 5, 2274, 6, 19, 49, 24173, 4, 2))
IMAGE_TOKEN_IDS = {"phi3": 32_011, "llama": 128_011}
# Native transformers Florence-2 key -> the remote-code key stored in the release (see the docstring).
REMOTE_NAMES = (
    (r"^model\.vision_tower\.convs\.(\d+)\.conv\.", r"vision_tower.convs.\1.proj."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"\.(spatial|channel)_block\.conv([12])\.", r".\1_block.conv\2.fn.dw."),
    (r"\.spatial_block\.norm1\.", ".spatial_block.window_attn.norm."),
    (r"\.channel_block\.norm1\.", ".channel_block.channel_attn.norm."),
    (r"\.(spatial_block\.window_attn|channel_block\.channel_attn)\.(qkv|proj)\.", r".\1.fn.\2."),
    (r"\.(spatial|channel)_block\.norm2\.", r".\1_block.ffn.norm."),
    (r"\.(spatial|channel)_block\.ffn\.(fc[12])\.", r".\1_block.ffn.fn.net.\2."),
    (r"^model\.multi_modal_projector\.image_projection\.weight$", "image_projection"),
    (r"^model\.multi_modal_projector\.image_proj_norm\.", "image_proj_norm."),
    (r"^model\.multi_modal_projector\.image_position_embed\.", "image_pos_embed."),
    (r"^model\.language_model\.", "language_model.model."),
)
SYSTEM_PROMPTS = {  # llava/conversation.py: conv_phi3_instruct, conv_llama3
    "phi3": "You are a helpful AI assistant.",
    "llama": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
             "helpful, detailed, and polite answers to the user's questions."}
_VISION_KEYS = ("in_channels", "depths", "patch_size", "patch_stride", "patch_padding", "patch_prenorm",
                "num_heads", "num_groups", "window_size", "mlp_ratio", "qkv_bias", "projection_dim")


def is_llava(config: dict) -> bool:
  return config.get("model_type") in MODEL_TYPES


def matches(config: dict, path: str) -> bool:
  """A LLaVA directory whose vision tower is Florence-2 (by its name, or vision_tower/config.json)."""
  if not is_llava(config):
    return False
  if "florence" in str(config.get("mm_vision_tower", "")).lower():
    return True
  folder = os.path.join(path, "vision_tower")
  return (os.path.exists(os.path.join(folder, "config.json"))
          and read_config(folder).get("model_type") == "florence2")


def _native_florence2(d: dict) -> dict:
  """A Florence-2 config.json dict in transformers' native keys (remote-code ones converted)."""
  v = dict(d.get("vision_config") or {})
  if "embed_dim" in v or "dim_embed" not in v:
    return {**d, "model_type": "florence2"}
  native = {k: v[k] for k in _VISION_KEYS if k in v}
  native.update(embed_dim=v["dim_embed"],
                max_position_embeddings=(v.get("image_pos_embed") or {}).get("max_pos_embeddings", 50),
                max_temporal_embeddings=(v.get("visual_temporal_embedding") or {}).get(
                    "max_temporal_embeddings", 100))
  return {"model_type": "florence2", "vision_config": native, "text_config": dict(d.get("text_config") or {})}


def _florence2_config(ckpt: common.Checkpoint, dtype: str):
  """Florence-2's config: vision_tower/config.json, else the mm_vision_tower folder's, else the preset
  its name implies (Florence-2-large / -base)."""
  exec_kw = dict(common.exec_options(dtype), decoder=False)
  for folder in (ckpt.subdir("vision_tower"), ckpt.local_dir(ckpt.config.get("mm_vision_tower"))):
    if folder and os.path.exists(os.path.join(folder, "config.json")):
      raw = read_config(folder)
      return common.convert(common.family("florence2"), _native_florence2(raw), folder, **exec_kw), folder
  name = str(ckpt.config.get("mm_vision_tower", "")).lower()
  preset = "florence2-base" if "base" in name else "florence2-large"
  return florence2_preset(preset, **exec_kw), None


def _image_size(folder: str | None) -> int:
  """The Florence-2 processor's side (preprocessor_config.json), 768 without one."""
  if not folder or not os.path.exists(os.path.join(folder, "preprocessor_config.json")):
    return 768
  size = read_config(folder, "preprocessor_config.json").get("size", 768)
  return int(size.get("height", 768) if isinstance(size, dict) else size)


def _florence2_weights(ckpt: common.Checkpoint) -> None:
  """Mounts the Florence-2 tensors of vision_tower/ or a local mm_vision_tower folder when the main
  files lack them (a folder holding only pickles raises naming the file)."""
  if any(k.startswith(REMOTE) for k in ckpt.weights.keys()):
    return
  tower = ckpt.config.get("mm_vision_tower")
  for folder in (ckpt.subdir("vision_tower"), ckpt.local_dir(tower)):
    if folder is not None:
      ckpt.weights.mount(REMOTE, common.open_safetensors(folder))
      return
  raise CheckpointFormatError(f"{ckpt.path}: no Florence-2 tensors ({REMOTE}*) in the safetensors, no "
                              f"vision_tower/ folder, and mm_vision_tower={tower!r} is no local folder")


def load(ckpt: common.Checkpoint, dtype: str) -> common.ReleasedModel:
  ckpt.kind = KIND
  d = ckpt.config
  llm_type = MODEL_TYPES[d["model_type"]]
  llm = common.convert(common.family("llm"), {**d, "model_type": llm_type}, ckpt.path,
                       **common.exec_options(dtype))
  projector = d.get("mm_projector_type", "mlp3x_gelu")
  if projector != "mlp3x_gelu":
    raise CheckpointFormatError(f"{ckpt.config_file}: mm_projector_type={projector!r}; Florence-VL's "
                                f"DBFusion projector is 'mlp3x_gelu'")
  florence, folder = _florence2_config(ckpt, dtype)
  _florence2_weights(ckpt)
  image_token = IMAGE_TOKEN_IDS[llm_type]
  image_token = image_token if image_token < llm.vocab_size else llm.vocab_size - 1
  fusion = DBFusionConfig(florence=florence, out_dim=llm.hidden_size, image_size=_image_size(folder),
                          prompt_ids=RELEASE_PROMPT_IDS, frozen=True)
  config = florence_vl(llm, fusion, image_token)
  keymap = common.nest(llm_family.keymap(llm), ("llm",))
  remote = common.regex_renamer(REMOTE_NAMES)
  florence_map = common.nest(florence2_family.keymap(florence), ("und_encoder", "florence"), REMOTE, remote)
  florence_map[("und_encoder", "florence", "image_projection", "projection", "kernel")] = \
      Source(REMOTE + "image_projection")        # stored [in, out]: our kernel layout
  keymap.update(florence_map)
  for i in range(3):
    hf = "model.mm_projector.encoder_mlp." + ("0" if i == 0 else f"{i}.1")
    keymap[("und_encoder", "projector", "layers", i, "kernel")] = Source(hf + ".weight", "linear")
    keymap[("und_encoder", "projector", "layers", i, "bias")] = Source(hf + ".bias", "bias")
  aliases = ((REMOTE + "language_model.model.shared.", REMOTE + "language_model.model.encoder.embed_tokens."),)
  model = common.load(lambda: UnifiedModel(config, rngs=nnx.Rngs(0)), keymap, ckpt.weights, dtype, aliases)
  return common.ReleasedModel(
      model=model, kind=KIND, path=ckpt.path, can_generate=False, can_answer=True, can_edit=False,
      tokenizer_dir=common.tokenizer_dir(ckpt.path), system_prompt=SYSTEM_PROMPTS[llm_type],
      answer_template="<image>\n{question}", unused=ckpt.weights.unused(),
      notes=("image placeholder: id %d ×%d tokens at the <image> slot (the release splices at LLaVA's "
             "index -200)" % (image_token, fusion.num_tokens),
             "DBFusion prompts masked past their end; the release passes its padded task_ids unmasked "
             "(UNCONFIRMED effect)"))
