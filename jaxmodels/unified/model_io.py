"""A model's input contract, stated once: what a data pipeline must produce for the model a config builds.

The data layer (input_pipeline) reads these facts from here instead of from `config.model` itself, and
the entry points hand them over, so the pipeline never imports the trainer or rebuilds a model config:

    io = model_io(config.model)                       # configs only: no parameters are built
    io.und_image_size, io.image_token_id, io.num_image_tokens     # und_image [S, S, 3], placeholders
    io.gen_image_size, io.generates                               # gen_image [G, G, 3] (None: no pixels)
    data = make_train_data(config, workdir, io=io)

`num_image_tokens` is also what the built model's `num_image_tokens` returns (UnifiedModel reads it
from here), so a pipeline's placeholder count and the model's tokens cannot disagree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxmodels.errors import ConfigError
from jaxmodels.unified.dbfusion import IMAGENET_MEAN
from jaxmodels.unified.encoders import encoder_num_tokens, is_dbfusion

MODEL_TYPES = ("unified", "florence_vl", "lm")
UNIFIED_PAD_FILL = (127, 127, 127)   # grey, the [-1, 1] midpoint: a unified model's padding colour


def model_type(model: Mapping[str, Any]) -> str:
  """`config.model.type`: how `config.model` is written — "unified" (default; `UnifiedModel` fields,
  build.unified_config), "florence_vl" (Florence-VL's llm / florence / dbfusion fields, which
  florence_vl.florence_vl_config turns into an understanding-only `UnifiedModel`) or "lm" (`TextLM`,
  text-only SFT)."""
  kind = model.get("type", None) or "unified"
  if kind not in MODEL_TYPES:
    raise ConfigError(f"config.model.type={kind!r}: expected one of {MODEL_TYPES}")
  return kind


@dataclasses.dataclass(frozen=True)
class ModelIO:
  """What the model reads.

  kind: the model type (MODEL_TYPES). und_image_size: side S of the understanding images [S, S, 3]
  in [-1, 1] (None: a text-only model). image_token_id / num_image_tokens: the placeholder id and how
  many copies of it one image occupies in a token sequence (-1 / 0: none). pad_fill: RGB of the padding
  that squares a non-square image (the tower's processor mean). gen_image_size: side G of the
  generation targets [G, G, 3] (None: the model does not generate pixels from gen_image).
  gen_latents_only: generation reads precomputed latents (batch["gen_latents"]; a latents target
  without an in-model VAE). dense_grid: side of the understanding encoder's patch grid, for per-token
  labels (0: none). edit_image_tokens: placeholders an edit prompt's source image occupies (None: as
  num_image_tokens; a patch-token reference takes its own slots)."""
  kind: str
  und_image_size: int | None
  image_token_id: int
  num_image_tokens: int
  pad_fill: tuple[int, int, int]
  gen_image_size: int | None = None
  gen_latents_only: bool = False
  dense_grid: int = 0
  edit_image_tokens: int | None = None

  @property
  def edit_tokens(self) -> int:
    return self.num_image_tokens if self.edit_image_tokens is None else self.edit_image_tokens

  @property
  def generates(self) -> bool:
    return self.gen_image_size is not None or self.gen_latents_only

  @property
  def reads_images(self) -> bool:
    return self.und_image_size is not None and self.image_token_id >= 0


def unified_num_image_tokens(config) -> int:
  """Placeholders one image occupies in a UnifiedModel's understanding sequence (UnifiedConfig):
  (grid / und_pool)² with grid = image_size / patch_size for a ViT, image_size / (patch_size · merge)
  for Qwen2.5-VL, DBFusion's num_tokens; without an understanding encoder, the discrete image
  tokenizer's grid² (BLIP3o-NEXT)."""
  if config.und_encoder is not None:
    return encoder_num_tokens(config.und_encoder, config.und_pool)
  if config.image_tokenizer is not None:
    return (config.image_tokenizer.encoder.grid_size // config.image_tokenizer.scale) ** 2
  return 0


def unified_io(config, kind: str = "unified") -> ModelIO:
  """ModelIO of a UnifiedConfig (`kind`: the config.model.type it was written as). Without an
  understanding encoder the images are read through the discrete image tokenizer (BLIP3o-NEXT); a
  DBFusion encoder pads with Florence-2's processor mean."""
  enc = config.und_encoder
  if config.gen_target == "none":
    gen = None
  elif config.gen_target == "patch_tokens":
    gen = config.patch_tokens.image_size
  elif config.autoencoder is not None:
    gen = config.autoencoder.image_size
  elif config.gen_encoder is not None:
    gen = config.gen_encoder.image_size
  elif config.gen_target == "latents" and config.vae is None:
    gen = None
  else:
    gen = config.gen_image_size
  tokenizer = config.image_tokenizer
  und = enc.image_size if enc is not None else tokenizer.encoder.image_size if tokenizer is not None else None
  fill = (tuple(int(round(255 * m)) for m in IMAGENET_MEAN) if is_dbfusion(enc) else UNIFIED_PAD_FILL)
  return ModelIO(kind, und, config.image_token_id if und is not None else -1,
                 unified_num_image_tokens(config), fill,
                 gen_image_size=gen, gen_latents_only=gen is None and config.generates,
                 dense_grid=enc.image_size // enc.patch_size if hasattr(enc, "patch_size") else 0,
                 edit_image_tokens=(config.patch_tokens.num_slots if config.patch_tokens is not None
                                    and config.patch_tokens.reference_tokens else None))


def model_io(model: Mapping[str, Any]) -> ModelIO:
  """The ModelIO of `config.model` (any MODEL_TYPES; cheap: configs only, no parameters)."""
  kind = model_type(model)
  if kind == "lm":
    return ModelIO("lm", None, -1, 0, UNIFIED_PAD_FILL)
  if kind == "florence_vl":
    from jaxmodels.unified.florence_vl import florence_vl_config
    return unified_io(florence_vl_config(model), kind)
  from jaxmodels.unified.build import unified_config
  return unified_io(unified_config(model))
