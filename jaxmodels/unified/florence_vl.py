"""Florence-VL (spec §6) as an understanding-only unified model: DBFusion visual tokens spliced into a
decoder LLM, next-token loss on answers.

    model = UnifiedModel(florence_vl_config(config.model), rngs=nnx.Rngs(0))
    loss, metrics = model.loss(batch, jax.random.key(0))
    tokens = model.answer(images, ids, mask, max_new_tokens=8)

`config.model.type="florence_vl"` writes the model in Florence-VL's own terms (llm / florence /
dbfusion / image_token_id); `florence_vl_config` turns them into a `UnifiedConfig` whose und_encoder is
the DBFusion (encoders.py: Florence-2's ImageNet normalisation, its own mlp3x_gelu projector, so
und_projector="none") and gen_target="none". Batches are the understanding rows of
`jaxmodels.unified.model`, with H = W = `dbfusion.image_size` (768) and `num_image_tokens` placeholders
per row.

Parameters: `und_encoder/florence/...` (Florence-2 vision tower + encoder, no decoder),
`und_encoder/projector/...` (mlp3x_gelu) and `llm/...`. Stage 2 freezes `und_encoder/florence/.*`;
stage 1 trains everything unless `freeze_florence` (the released code's effective behaviour, see the
configs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from jaxmodels.errors import ConfigError
from jaxmodels.layers.execution import apply_execution, check_execution
from jaxmodels.llm import LLMConfig
from jaxmodels.unified.config import UnifiedConfig
from jaxmodels.unified.dbfusion import DBFusionConfig, resolve_prompt_ids
from jaxmodels.vision.davit import DaViTConfig
from jaxmodels.vision.florence2 import florence2_preset, Florence2Config

IMAGE_TOKEN_ID = 128_011        # <image> placeholder: a reserved Llama-3 special token (the 8B configs')


def florence_vl(llm: LLMConfig, fusion: DBFusionConfig, image_token_id: int = IMAGE_TOKEN_ID) -> UnifiedConfig:
  """The understanding-only UnifiedConfig of Florence-VL: `fusion` (its out_dim the LLM width) as the
  und_encoder, spliced at `image_token_id`."""
  if fusion.out_dim != llm.hidden_size:
    raise ConfigError(f"config.model.dbfusion: out_dim {fusion.out_dim} != llm.hidden_size {llm.hidden_size}")
  return UnifiedConfig(llm=llm, dit=None, und_encoder=fusion, und_projector="none", und_pool=1,
                       image_token_id=image_token_id, gen_target="none", queries="none")


def florence_vl_config(model: Mapping[str, Any], *,
                       require_prompt_ids: bool = False) -> UnifiedConfig:
  """From `config.model` = dict(llm=dict(preset=..., ...), florence=dict(preset=..., vision=dict(...),
  ...), dbfusion=dict(mode=..., prompts=..., prompt_ids=..., tokenizer=..., ...), image_token_id=...).

  `dbfusion.tokenizer` (a local Florence-2 checkpoint folder or tokenizer.json) fills `prompt_ids`
  when they are not given; `require_prompt_ids` (the trainer) raises a ConfigError naming that key
  when neither is set."""
  from jaxmodels.unified.build import _plain, llm_config, make_dataclass
  def plain(x):
    return {k: plain(v) for k, v in x.items()} if hasattr(x, "keys") else x

  d = _plain(plain(model))
  d.pop("type", None)
  execution = check_execution(d.pop("execution", None))   # every tower's (layers/execution.py)
  unknown = sorted(set(d) - {"llm", "florence", "dbfusion", "image_token_id"})
  if unknown:
    raise ConfigError(f"config.model.{unknown[0]}: unknown field for Florence-VL "
                      f"(known: dbfusion, florence, image_token_id, llm)")
  llm = llm_config(d["llm"])
  llm = apply_execution(llm, execution) if execution else llm
  f = dict(d.get("florence") or {})
  vision = f.pop("vision", None)
  if vision is not None and not isinstance(vision, dict):
    raise ConfigError("config.model.florence.vision must be a dict of DaViTConfig fields")
  bad = sorted(set(vision or {}) - {x.name for x in dataclasses.fields(DaViTConfig)})
  bad += [f"{k}" for k in sorted(set(f) - {x.name for x in dataclasses.fields(Florence2Config)} - {"preset"})]
  if bad:
    raise ConfigError(f"config.model.florence: unknown field {bad[0]!r}")
  florence = florence2_preset(f.pop("preset", "florence2-large"), decoder=False,
                              **({"vision": vision} if vision else {}), **f)
  if execution:
    florence = apply_execution(dataclasses.replace(florence, vision=apply_execution(florence.vision, execution)),
                               execution)
  fusion_d = dict(d.get("dbfusion") or {})
  tokenizer = fusion_d.pop("tokenizer", None)
  fusion = make_dataclass(DBFusionConfig, {**fusion_d, "florence": florence,
                                           "out_dim": llm.hidden_size}, "model.dbfusion")
  if fusion.prompt_ids is None and (tokenizer or require_prompt_ids):
    fusion = resolve_prompt_ids(fusion, tokenizer)
  return florence_vl(llm, fusion, d.get("image_token_id", IMAGE_TOKEN_ID))
