"""Released unified models loaded whole from their own checkpoint directories.

    from jaxmodels.unified import from_pretrained
    r = from_pretrained("/ckpts/BLIP3o-NEXT-SFT-3B")            # or MetaQuery-*, BLIP3o-Model-*, florence-vl-*
    r.kind, r.can_generate, r.can_answer, r.can_edit, r.tokenizer_dir, r.notes
    # text -> image (BLIP3-o, BLIP3o-NEXT, MetaQuery):
    text = tokenizer.apply_chat_template(r.generation_messages("a red cube"), tokenize=False,
                                         add_generation_prompt=True) + r.prompt_suffix
    ids, mask = ...                                              # tokenised at once, left-padded [B, T]
    images = jaxmodels.unified.sampling.sample_images(r.model, ids, mask, rng,
                                                      r.sampling["num_steps"], r.sampling["guidance"])
    # (or r.model.generate_image(ids, mask, rng, **r.sampling) for the paper's solver and shift;
    #  BLIP3-o returns its 8×8×1792 CLIP features while r.pixel_decoder is None)
    # image + question -> answer (Florence-VL, and the MLLM backbones where can_answer):
    tokens = r.model.answer(images, ids, mask, max_new_tokens=64)   # ids from r.answer_messages(q), with
    #   "<image>" expanded to r.model.num_image_tokens copies of r.model.config.image_token_id

The layout is recognised from config.json (`detect`): model_type "metaquery" (MetaQuery); "blip3o_qwen"
/ "blip3o_qwen_inference" with a `vision_config` (BLIP3-o, Qwen2.5-VL based) or with
`num_image_tokens` / `diffusion_name_or_path` (BLIP3o-NEXT, Qwen3 based); "llava_phi" / "llava_llama"
(Florence-VL). Each layout's file (blip3o.py, blip3o_next.py, metaquery.py, florence_vl.py) documents
what the release holds, key for key, and the source it was read from. `overrides` replace config.json
entries, e.g. {"mllm_id": "/models/llava-onevision-qwen2-0.5b-ov-hf"} when the base model named there
should be read from a local folder (its config.json) rather than from the published sizes.

Errors are one line naming the file and key: no config.json, a layout matching no known model, an
unknown model_type, a missing or mis-shaped tensor; pickle weights (.bin, .pt, ...) are refused, never
unpickled.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax.numpy as jnp

from jaxmodels.errors import CheckpointFormatError
from jaxmodels.unified.released import blip3o, blip3o_next, florence_vl, metaquery, siglip2_sana
from jaxmodels.unified.released.common import (Checkpoint, ReleasedModel, Weights, open_safetensors,
                                               refuse_pickles)

LAYOUTS = {"blip3o": blip3o, "blip3o_next": blip3o_next, "metaquery": metaquery, "florence_vl": florence_vl,
           "siglip2_sana": siglip2_sana}
__all__ = ["LAYOUTS", "ReleasedModel", "detect", "from_pretrained"]


def detect(path: str, config: Mapping[str, Any]) -> str:
  """The layout ("blip3o" | "blip3o_next" | "metaquery" | "florence_vl") of a directory's config.json."""
  file = os.path.join(path, "config.json")
  found = [name for name, module in LAYOUTS.items() if module.matches(config, path)]
  if found:
    return found[0]
  model_type = config.get("model_type")
  from jaxmodels.hf import FAMILIES
  if any(model_type in f.model_types for f in FAMILIES):
    raise CheckpointFormatError(f"{file}: model_type {model_type!r} is a single tower, not a released "
                                f"unified model: load it with jaxmodels.hf.from_pretrained")
  if florence_vl.is_llava(config):
    raise CheckpointFormatError(f"{file}: a LLaVA checkpoint whose vision tower is not Florence-2 "
                                f"(mm_vision_tower={config.get('mm_vision_tower')!r}); only Florence-VL's "
                                f"is known")
  if model_type in blip3o.MODEL_TYPES:
    raise CheckpointFormatError(f"{file}: model_type {model_type!r} without 'vision_config' (BLIP3-o) or "
                                f"'num_image_tokens' / 'diffusion_name_or_path' (BLIP3o-NEXT)")
  known = ("blip3o_qwen[_inference] (BLIP3-o, BLIP3o-NEXT), metaquery, llava_phi / llava_llama (Florence-VL), "
           "SigLIP2_SANA (encoder / diffusion_decoder with unet_id)")
  if model_type is None:
    raise CheckpointFormatError(f"{file}: no 'model_type' key: the layout matches no released unified "
                                f"model (known: {known})")
  raise CheckpointFormatError(f"{file}: model_type {model_type!r} matches no released unified model "
                              f"(known: {known})")


def from_pretrained(path: str, *, dtype: str = "float32",
                    overrides: Mapping[str, Any] | None = None) -> ReleasedModel:
  """Loads a released unified model's directory whole (see the module docstring).

  dtype: parameter and compute dtype of every tower ("float32", "bfloat16"); overrides: config.json
  entries to replace. Returns a `ReleasedModel` (model, kind, can_generate / can_answer / can_edit,
  tokenizer_dir, prompt templates, the paper's sampling settings, notes)."""
  dtype = jnp.dtype(dtype).name
  if not os.path.isdir(path):
    raise CheckpointFormatError(f"{path}: not a directory")
  if not os.path.exists(os.path.join(path, "config.json")):
    if os.path.exists(os.path.join(path, "model_index.json")):
      raise CheckpointFormatError(f"{path}/model_index.json: a diffusers pipeline, not a released unified "
                                  f"model; load its parts with jaxmodels.hf.from_pretrained")
    refuse_pickles(path)
  from jaxmodels.hf.safetensors_io import read_config
  config = {**read_config(path), **dict(overrides or {})}
  kind = detect(path, config)
  return LAYOUTS[kind].load(Checkpoint(path, config, Weights(open_safetensors(path))), dtype)
