"""Florence-VL (spec §6): DBFusion visual tokens spliced into a decoder LLM, next-token loss on answers.

    model = FlorenceVL(florence_vl_config(config.model), rngs=nnx.Rngs(0))
    loss, metrics = model.loss(batch, jax.random.key(0))
    tokens = model.answer(images, ids, mask, max_new_tokens=8)

Batches (as `jaxmodels.unified.model`): und_image [B, H, W, 3] float in [-1, 1], und_ids [B, T] int32
with `image_token_id` placeholders (exactly `num_image_tokens` per row), und_mask [B, T] (1 = token),
und_loss_mask [B, T] (1 on answer tokens). Images are mapped from [-1, 1] to Florence-2's processor
normalisation (ImageNet mean/std) inside the model; H = W = `dbfusion.image_size` (768).

Parameters: `dbfusion/florence/...` (Florence-2 vision tower + encoder, no decoder),
`dbfusion/projector/...` (mlp3x_gelu) and `llm/...`. Stage 2 freezes `dbfusion/florence/.*`; stage 1
trains everything unless `freeze_florence` (the released code's effective behaviour, see the configs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.generate import generate
from jaxmodels.layers.execution import apply_execution, check_execution
from jaxmodels.llm import LLM, LLMConfig
from jaxmodels.unified.dbfusion import DBFusion, DBFusionConfig, resolve_prompt_ids
from jaxmodels.layers import splice_image_tokens
from jaxmodels.unified.model import answer_loss
from jaxmodels.vision.davit import DaViTConfig
from jaxmodels.vision.florence2 import Florence2Config, florence2_preset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class FlorenceVLConfig:
  llm: LLMConfig = LLMConfig()
  dbfusion: DBFusionConfig = DBFusionConfig()
  image_token_id: int = 128_011

  def __post_init__(self):
    if self.dbfusion.out_dim != self.llm.hidden_size:
      raise ConfigError(f"FlorenceVLConfig: dbfusion.out_dim {self.dbfusion.out_dim} != llm.hidden_size "
                        f"{self.llm.hidden_size}")


def florence_vl_config(model: Mapping[str, Any], *,
                       require_prompt_ids: bool = False) -> FlorenceVLConfig:
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
  return FlorenceVLConfig(llm=llm, dbfusion=fusion, image_token_id=d.get("image_token_id", 128_011))


class FlorenceVL(nnx.Module):
  """See the module docstring."""

  def __init__(self, config: FlorenceVLConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.dbfusion = DBFusion(config.dbfusion, rngs=rngs)
    self.llm = LLM(config.llm, rngs=rngs)

  @property
  def num_image_tokens(self) -> int:
    return self.config.dbfusion.num_tokens

  @property
  def answer_image_size(self) -> int:
    """Side of the square images [B, S, S, 3] the understanding path reads."""
    return self.config.dbfusion.image_size

  def image_tokens(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] in [-1, 1] -> LLM-space visual tokens [B, num_image_tokens, D]."""
    x = (images.astype(jnp.float32) + 1.0) * 0.5
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return self.dbfusion(x)

  def und_embeddings(self, ids: jax.Array, images: jax.Array) -> jax.Array:
    return splice_image_tokens(self.llm.embed(ids), ids, self.image_tokens(images), self.config.image_token_id)

  def loss(self, batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    del rng
    embeds = self.und_embeddings(batch["und_ids"], batch["und_image"])
    loss, metrics = answer_loss(self.llm, embeds, batch["und_ids"], batch["und_mask"], batch["und_loss_mask"])
    return loss, metrics

  def answer(self, images: jax.Array, ids: jax.Array, mask: jax.Array, max_new_tokens: int,
             **generate_kwargs) -> jax.Array:
    """Greedy (or sampled) answer tokens [B, max_new_tokens] for left-padded prompts with images."""
    embeds = self.und_embeddings(ids, images)
    out = generate(self.llm, ids, max_new_tokens, attention_mask=mask, inputs_embeds=embeds, **generate_kwargs)
    return out[:, ids.shape[1]:]
