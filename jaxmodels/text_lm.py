"""A text-only language model for supervised fine-tuning (`config.model.type = "lm"`): the LLM tower
alone, trained with next-token cross-entropy on the response tokens (MCTune, GenQA SFT).

    config.model = dict(type="lm", llm=dict(preset="llama3.1-8b", scan_layers=True))
    model = TextLM(text_lm_config(config.model), rngs=nnx.Rngs(0))
    loss, metrics = model.loss(batch, jax.random.key(0))
    tokens = model.answer(ids, mask, max_new_tokens=64)    # left-padded prompts [B, T] -> [B, 64]

Batches are the understanding rows without an image: und_ids [B, T] int32, und_mask [B, T] (1 =
token), und_loss_mask [B, T] (1 on the tokens to predict); any und_image is ignored. Same loss and
metrics as the unified model's understanding path (`unified.model.answer_loss`), so train.py, its
metrics and checkpoints need nothing new.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.generate import generate
from jaxmodels.llm import LLM, LLMConfig


@dataclasses.dataclass(frozen=True)
class TextLMConfig:
  llm: LLMConfig = LLMConfig()


def text_lm_config(model: Mapping[str, Any]) -> TextLMConfig:
  """config.model = dict(type="lm", llm=dict(preset=..., ...overrides)) -> TextLMConfig."""
  from jaxmodels.unified.build import _plain, llm_config
  d = _plain(model)
  d.pop("type", None)
  unknown = sorted(set(d) - {"llm"})
  if unknown:
    raise ConfigError(f"config.model.{unknown[0]}: unknown field for model.type='lm' (known: llm)")
  if "llm" not in d:
    raise ConfigError("config.model.llm is not set (model.type='lm')")
  return TextLMConfig(llm=llm_config(d["llm"]))


class TextLM(nnx.Module):
  """See the module docstring."""

  num_image_tokens = 0      # train.py's data builders ask every model for this

  def __init__(self, config: TextLMConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.llm = LLM(config.llm, rngs=rngs)

  def loss(self, batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    del rng
    from jaxmodels.unified.model import answer_loss
    ids = batch["und_ids"]
    return answer_loss(self.llm, self.llm.embed(ids), ids, batch["und_mask"], batch["und_loss_mask"])

  def answer(self, ids: jax.Array, mask: jax.Array, max_new_tokens: int, **generate_kwargs) -> jax.Array:
    """Greedy (or sampled) continuation tokens [B, max_new_tokens] of left-padded prompts [B, T]."""
    out = generate(self.llm, ids, max_new_tokens, attention_mask=mask, **generate_kwargs)
    return out[:, ids.shape[1]:]
