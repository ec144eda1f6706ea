"""Config of a unified (understanding + generation) model: which parts, and how they connect.

The paper models are *choices* in one composition (see `jaxmodels.unified.model`):

  field               Pisces                 BLIP3-o                 shapes_tiny (embedded default)
  und_encoder         SigLIP-so400m          (inside Qwen2.5-VL)     tiny SigLIP-style ViT
  gen_encoder         CLIP-style, pooled 4×4 EVA-CLIP, pooled 4×4    none
  gen_target          "gen_encoder"          "gen_encoder"           "pixels"
  queries             64 learnable           64 learnable            16 learnable
  connector           "mlp"                  "identity"              "mlp"
  dit                 Lumina-style           Lumina (BLIP3-o var.)   tiny Lumina over pixel patches
  freeze              —                      llm, encoders           —
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxmodels.errors import ConfigError
from jaxmodels.llm import LLMConfig
from jaxmodels.vision.vit import VisionConfig

GEN_TARGETS = ("pixels", "gen_encoder", "latents")
CONNECTORS = ("identity", "mlp")
PROJECTORS = ("linear", "mlp2x_gelu")
CFG_NULLS = ("zeros",)


@dataclasses.dataclass(frozen=True)
class UnifiedConfig:
  """Parts and wiring. Sub-configs are the towers' own frozen configs (hashable)."""
  llm: LLMConfig
  dit: Any                                   # LuminaConfig (SANA configs plug in the same way)
  und_encoder: VisionConfig | None = None
  und_projector: str = "mlp2x_gelu"
  und_pool: int = 1                          # a×a pooling of understanding tokens (1 = none)
  image_token_id: int = -1                   # placeholder id in und sequences (one per image token)
  gen_encoder: VisionConfig | None = None    # frozen target encoder for gen_target="gen_encoder"
  gen_pool: int = 4                          # a×a pooling of its patch tokens (BLIP3-o/Pisces: 4)
  gen_projector: bool = False                # Pisces: pooled gen features -> LLM input projector
  gen_target: str = "pixels"
  gen_image_size: int = 32                   # pixels target: images are resized to this side
  num_queries: int = 64
  connector: str = "mlp"
  # Flow objective (jaxmodels.flow conventions).
  sigma_sampling: str = "uniform"            # uniform | logit_normal | mode
  train_shift: float = 1.0
  cond_dropout: float = 0.1                  # classifier-free guidance training (zero-null)
  cfg_null: str = "zeros"
  # Loss weights (a missing part of the batch contributes nothing).
  und_weight: float = 1.0
  gen_weight: float = 1.0

  def __post_init__(self):
    def check(field, allowed):
      if getattr(self, field) not in allowed:
        raise ConfigError(f"config.model.{field}={getattr(self, field)!r}: expected one of {allowed}")
    check("gen_target", GEN_TARGETS)
    check("connector", CONNECTORS)
    check("und_projector", PROJECTORS)
    check("cfg_null", CFG_NULLS)
    if self.gen_target == "gen_encoder" and self.gen_encoder is None:
      raise ConfigError("config.model.gen_target='gen_encoder' needs config.model.gen_encoder")
    if self.gen_target == "latents":
      raise ConfigError("config.model.gen_target='latents' (DC-AE latents) is not wired yet; "
                        "use 'pixels' or 'gen_encoder'")
    if self.connector == "identity" and self.llm.hidden_size != self.dit.cross_attention_dim:
      raise ConfigError(f"config.model.connector='identity' needs llm.hidden_size "
                        f"({self.llm.hidden_size}) == dit.cross_attention_dim ({self.dit.cross_attention_dim})")

  @property
  def target_channels(self) -> int:
    if self.gen_target == "pixels":
      return 3
    return self.gen_encoder.hidden_size

  def replace(self, **kw: Any) -> "UnifiedConfig":
    return dataclasses.replace(self, **kw)
