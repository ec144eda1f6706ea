"""Config of a unified (understanding + generation) model: which parts, and how they connect.

The paper models are *choices* in one composition (see `jaxmodels.unified.model`):

  field               Pisces                 BLIP3-o                 shapes_tiny (embedded default)
  und_encoder         SigLIP-so400m          Qwen2.5-VL's ViT        tiny SigLIP-style ViT
  und_projector       mlp2x_gelu             "none" (merger output)  mlp2x_gelu
  gen_encoder         CLIP-style, pooled 4×4 EVA-CLIP, pooled 4×4    none
  gen_target          "gen_encoder"          "gen_encoder"           "autoencoder" (patch AE)
  queries             64 learnable           64 learnable            16 learnable
  connector           "mlp"                  "identity"              "mlp"
  dit                 Lumina-style           Lumina (BLIP3-o var.)   tiny Lumina over the AE latent
  freeze              —                      llm, encoders           —

  field               MetaQuery               BLIP3o-NEXT                     LaTtE-Flow
  queries             "vocab" (N=256 new ids) "image_tokens" (TA-Tok codes)   "none" (per-layer states)
  connector           "transformer"           "mlp_norm"                      "identity"
  dit                 SANA-1.6B               SANA-1.6B (caption parts train) "latte" (K groups)
  gen_target          "latents" (DC-AE)       "latents" + in-model DC-AE      "latents"
  cfg_null            "empty_caption"         "zeros"                         "zeros"
  freeze              llm, und encoder        tokenizer, SANA but caption,    llm, und encoder
                                              vae

  field               Florence-VL (understanding only)
  und_encoder         DBFusion (Florence-2 streams + its mlp3x_gelu projector)
  und_projector       "none"
  gen_target          "none" (no DiT, no queries: queries="none")

gen_target="latents": with `vae` (a DCAEConfig) the model holds a frozen DC-AE (latent_codec.py): the
target is (vae.encode(gen_image) − vae_shift) · scaling_factor and `generate_image` decodes to pixels;
without it the batch carries precomputed latents (batch["gen_latents"]) and sampling returns latents.
`edit_latents` (BLIP3o-NEXT editing, UNCONFIRMED equations): how the reference image's scaled DC-AE
latents enter the flow head besides its discrete tokens in the prompt: "cond" (projected latent tokens
appended to the DiT condition), "noise" (added to the noisy latent through a zero-initialised 1×1
projection), "cond_noise" (both, the released edit recipe's name), "none".
"""
from __future__ import annotations

import dataclasses
from typing import Any

from jaxmodels.errors import ConfigError
from jaxmodels.flow.dcae import DCAEConfig
from jaxmodels.llm import LLMConfig
from jaxmodels.unified.dbfusion import DBFusionConfig
from jaxmodels.unified.encoders import encoder_width, is_dbfusion
from jaxmodels.unified.patch_autoencoder import PatchAutoencoderConfig
from jaxmodels.unified.patch_tokens import PatchTokensConfig
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionConfig
from jaxmodels.vision.vit import VisionConfig

GEN_TARGETS = ("pixels", "gen_encoder", "latents", "autoencoder", "patch_tokens", "none")   # none: no generation
CONNECTORS = ("identity", "mlp", "mlp_norm", "transformer")
PROJECTORS = ("linear", "mlp2x_gelu", "none")   # none: identity (encoder width == LLM width)
CFG_NULLS = ("zeros", "empty_caption")
QUERIES = ("learnable", "vocab", "image_tokens", "none")
EDIT_LATENTS = ("none", "cond", "noise", "cond_noise")


def dit_cond_dim(dit: Any) -> int:
  """Width of the condition a DiT config takes (Lumina cross_attention_dim, SANA caption_channels,
  LaTtE context_dim); None without a DiT."""
  if dit is None:
    return None
  return getattr(dit, "caption_channels", None) or dit.cross_attention_dim


@dataclasses.dataclass(frozen=True)
class ImageTokenizerConfig:
  """Discrete image tokenizer (BLIP3o-NEXT: TA-Tok = SigLIP2 + SimVQ; see image_tokenizer.py)."""
  encoder: VisionConfig
  codebook_size: int = 65536
  code_dim: int = 64                  # UNCONFIRMED in the spec (stored in TA-Tok's checkpoint args)
  l2_norm: bool = True
  num_scale_tokens: int = 3           # <S0> <S1> <S2>
  scale: int = 1                      # pool scale used (1: 27×27 = 729 tokens)
  codebook_proj_bias: bool = False    # SimVQ codebook projection with a bias (TA-Tok's embedding_proj)


@dataclasses.dataclass(frozen=True)
class UnifiedConfig:
  """Parts and wiring. Sub-configs are the towers' own frozen configs (hashable)."""
  llm: LLMConfig
  dit: Any                                   # LuminaConfig (SANA configs plug in the same way);
                                             # None for gen_target "patch_tokens" and "none"
  # a ViT, the Qwen2.5-VL tower, or Florence-VL's DBFusion
  und_encoder: VisionConfig | Qwen25VisionConfig | DBFusionConfig | None = None
  und_projector: str = "mlp2x_gelu"          # "none": tokens used as they are (Qwen2.5-VL's merger)
  und_pool: int = 1                          # a×a pooling of understanding tokens (1 = none)
  image_token_id: int = -1                   # placeholder id in und sequences (one per image token)
  gen_encoder: VisionConfig | None = None    # frozen target encoder for gen_target="gen_encoder"
  gen_pool: int = 4                          # a×a pooling of its patch tokens (BLIP3-o/Pisces: 4)
  gen_projector: bool = False                # Pisces: image inputs of generation prompts go through
                                             # the pooled gen encoder + its own projector
  gen_target: str = "pixels"
  gen_image_size: int = 32                   # pixels target: images are resized to this side
  num_queries: int = 64
  connector: str = "mlp"
  connector_layers: int = 24                 # "transformer" connector depth (MetaQuery: 24)
  connector_norm_init: float = 5.5 ** 0.5    # final RMSNorm weight init (√5.5 for SANA)
  connector_per_head_gamma: bool = False     # "transformer" connector: QK-norm γ per head [heads, d_h]
                                             # (the released MetaQuery's layout) instead of one [d_h]
  queries: str = "learnable"                 # see the table above
  # queries="vocab": ids vocab_size .. vocab_size+N+1 are <img0..N-1>, <boi>, <eoi> (own trainable table)
  # queries="image_tokens": LLM vocab = image_vocab_offset + codebook + scale tokens + <im_start>,<im_end>
  image_tokenizer: ImageTokenizerConfig | None = None
  image_vocab_offset: int = 0
  image_top_k: int = 1200
  image_top_p: float = 0.95
  flow_weight: float = 1.0                   # image_tokens: weight of the flow loss next to the CE
  latent_size: int = 16                      # gen_target="latents": [B, s, s, latent_channels]
  latent_channels: int = 32
  vae: DCAEConfig | None = None              # frozen in-model DC-AE for "latents" (else gen_latents)
  vae_shift: float = 0.0                     # z₀ = (latent − shift) · scaling_factor (SANA: shift 0)
  edit_latents: str = "none"                 # image_tokens editing: see the module docstring
  # gen_target="autoencoder": a jointly trained per-patch autoencoder (patch_autoencoder.py); the flow
  # head generates its latent grid and sampling decodes it to pixels.
  autoencoder: PatchAutoencoderConfig | None = None
  ae_weight: float = 1.0
  # gen_target="patch_tokens": the LLM draws the image as sparse palette-patch tokens (patch_tokens.py),
  # decoded exactly; no DiT, queries="none" (the head reads the LLM's states at the image tokens).
  patch_tokens: PatchTokensConfig | None = None
  # Pixel-class loss on the flow head's clean-latent estimate x̂₀ = x_σ − σ·v̂ decoded by the (frozen
  # for this term) palette decoder, weighted per example by (1 − σ)^2: supervises what sampling's
  # last steps decode to, not only the latent's MSE (off at 0; needs a palette autoencoder).
  gen_decoder_weight: float = 0.0
  edit_drop: tuple = (0.2, 0.2, 0.1)         # (caption only, image only, both) drop probs, edit inputs
  # Flow objective (jaxmodels.flow conventions).
  sigma_sampling: str = "uniform"            # uniform | logit_normal | mode
  train_shift: float = 1.0
  cond_dropout: float = 0.1                  # classifier-free guidance training (zero-null)
  cfg_null: str = "zeros"
  # Loss weights (a missing part of the batch contributes nothing).
  und_weight: float = 1.0
  gen_weight: float = 1.0
  # Auxiliary dense labels on the understanding encoder's tokens (dense_head.py; off at 0): classes per
  # label channel, background included, e.g. (7, 11) for ShapesWorld's shapes and colours.
  und_dense_weight: float = 0.0
  und_dense_classes: tuple[int, ...] = ()

  def __post_init__(self):
    def check(field, allowed):
      if getattr(self, field) not in allowed:
        raise ConfigError(f"config.model.{field}={getattr(self, field)!r}: expected one of {allowed}")
    check("gen_target", GEN_TARGETS)
    check("connector", CONNECTORS)
    check("und_projector", PROJECTORS)
    check("cfg_null", CFG_NULLS)
    check("queries", QUERIES)
    check("edit_latents", EDIT_LATENTS)
    self._check_und_encoder()
    if self.gen_target == "gen_encoder" and self.gen_encoder is None:
      raise ConfigError("config.model.gen_target='gen_encoder' needs config.model.gen_encoder")
    if self.gen_projector and self.gen_encoder is None:
      raise ConfigError("config.model.gen_projector=True needs config.model.gen_encoder")
    if (self.gen_target == "autoencoder") != (self.autoencoder is not None):
      raise ConfigError("config.model.gen_target='autoencoder' goes with config.model.autoencoder "
                        "(and only it)")
    if self.gen_decoder_weight and not (self.autoencoder is not None and self.autoencoder.palette
                                        and self.queries in ("learnable", "vocab")):
      raise ConfigError(f"config.model.gen_decoder_weight={self.gen_decoder_weight}: needs "
                        "gen_target='autoencoder' with a palette and queries 'learnable' or 'vocab'")
    self._check_vae()
    self._check_patch_tokens()
    if self.dit is not None and self.connector == "identity" and self.llm.hidden_size != dit_cond_dim(self.dit):
      raise ConfigError(f"config.model.connector='identity' needs llm.hidden_size "
                        f"({self.llm.hidden_size}) == the DiT condition width ({dit_cond_dim(self.dit)})")
    if self.queries == "image_tokens":
      t = self.image_tokenizer
      if t is None:
        raise ConfigError("config.model.queries='image_tokens' needs config.model.image_tokenizer")
      need = self.image_vocab_offset + t.codebook_size + t.num_scale_tokens + 2
      if self.llm.vocab_size != need:
        raise ConfigError(f"config.model.llm.vocab_size={self.llm.vocab_size}: image_tokens needs "
                          f"image_vocab_offset + codebook + scale tokens + 2 = {need}")
    is_latte = type(self.dit).__name__ == "LatteConfig"
    if is_latte != (self.queries == "none" and self.gen_target not in ("patch_tokens", "none")):
      raise ConfigError("config.model: dit.type='latte' goes with queries='none' (and only it)")
    if is_latte and self.dit.num_layers != self.llm.num_layers:
      raise ConfigError(f"config.model.dit.num_layers={self.dit.num_layers} must equal "
                        f"llm.num_layers={self.llm.num_layers} (layer ℓ reads LLM layer ℓ)")

  def _check_vae(self):
    if self.vae is not None:
      if self.gen_target != "latents":
        raise ConfigError("config.model.vae (a DC-AE) goes with gen_target='latents'")
      if self.vae.latent_channels != self.latent_channels:
        raise ConfigError(f"config.model.vae.latent_channels={self.vae.latent_channels} must equal "
                          f"config.model.latent_channels={self.latent_channels}")
    if self.edit_latents != "none" and (self.vae is None or self.queries != "image_tokens"):
      raise ConfigError(f"config.model.edit_latents={self.edit_latents!r} needs config.model.vae and "
                        f"queries='image_tokens' (BLIP3o-NEXT editing)")

  def _check_patch_tokens(self):
    tokens = self.gen_target == "patch_tokens"
    if tokens != (self.patch_tokens is not None):
      raise ConfigError("config.model.gen_target='patch_tokens' goes with config.model.patch_tokens "
                        "(and only it)")
    if tokens and (self.dit is not None or self.queries != "none"):
      raise ConfigError("config.model.gen_target='patch_tokens': the LLM draws the image itself; "
                        "leave config.model.dit unset and set queries='none'")
    if self.gen_target == "none":
      parts = [k for k in ("dit", "gen_encoder", "autoencoder", "vae", "image_tokenizer")
               if getattr(self, k) is not None] + (["gen_projector"] if self.gen_projector else [])
      if parts:
        raise ConfigError(f"config.model.gen_target='none' (understanding only): leave "
                          f"config.model.{parts[0]} unset")
      if self.queries != "none":
        raise ConfigError("config.model.gen_target='none' (understanding only) takes queries='none'")
      if self.und_encoder is None:
        raise ConfigError("config.model.gen_target='none' (understanding only) needs config.model.und_encoder")
    elif self.dit is None and not tokens:
      raise ConfigError(f"config.model.dit is needed for gen_target={self.gen_target!r}")

  def _check_und_encoder(self):
    enc = self.und_encoder
    if enc is not None:
      width = encoder_width(enc)
      if self.und_projector == "none" and width != self.llm.hidden_size:
        raise ConfigError(f"config.model.und_projector='none' needs the und_encoder's output width "
                          f"({width}) == llm.hidden_size ({self.llm.hidden_size})")
      if is_dbfusion(enc) and (self.und_projector != "none" or self.und_pool != 1):
        raise ConfigError("config.model.und_encoder: DBFusion projects its own tokens to the LLM width; "
                          "set und_projector='none' and und_pool=1")
      if isinstance(enc, Qwen25VisionConfig) and enc.image_size % enc.image_multiple:
        raise ConfigError(f"config.model.und_encoder.image_size={enc.image_size}: must be a multiple of "
                          f"patch_size × spatial_merge_size = {enc.image_multiple}")
      if not is_dbfusion(enc) and enc.grid_size % self.und_pool:
        raise ConfigError(f"config.model.und_pool={self.und_pool} must divide the und_encoder's token "
                          f"grid side {enc.grid_size}")
    if self.und_dense_weight and (not self.und_dense_classes or self.und_encoder is None):
      raise ConfigError("config.model.und_dense_weight > 0 needs an und_encoder and und_dense_classes "
                        "(classes per label channel, e.g. [7, 11])")
    if self.gen_projector and self.und_projector == "none":
      raise ConfigError("config.model.gen_projector=True takes its kind from und_projector; "
                        "und_projector='none' is not one (use 'linear' or 'mlp2x_gelu')")

  @property
  def generates(self) -> bool:
    """Whether the model has a generation path at all (gen_target="none": understanding only)."""
    return self.gen_target != "none"

  @property
  def generation_path(self) -> str | None:
    """The key of the generation path this config trains and samples with (generation_paths.PATHS);
    None for an understanding-only model."""
    if self.gen_target == "none":
      return None
    if self.gen_target == "patch_tokens":
      return "patch_tokens"
    return {"image_tokens": "image_tokens", "none": "layerwise"}.get(self.queries, "queries")

  @property
  def target_channels(self) -> int:
    if self.gen_target == "pixels":
      return 3
    if self.gen_target == "latents":
      return self.latent_channels
    if self.gen_target == "autoencoder":
      return self.autoencoder.latent_channels
    if self.gen_target == "patch_tokens":
      return 3
    return self.gen_encoder.hidden_size

  @property
  def target_side(self) -> int:
    if self.gen_target == "pixels":
      return self.gen_image_size
    if self.gen_target == "latents":
      return self.latent_size
    if self.gen_target == "autoencoder":
      return self.autoencoder.grid_size
    if self.gen_target == "patch_tokens":
      return self.patch_tokens.image_size
    return self.gen_encoder.grid_size // self.gen_pool

  @property
  def output_image_size(self) -> int:
    """Side of the images `generate_image` returns when `generates_pixels` (with a vae: the side its
    latents decode to, latent_size · compression)."""
    if self.vae is not None:
      return self.latent_size * self.vae.spatial_compression_ratio
    if self.gen_target == "patch_tokens":
      return self.patch_tokens.image_size
    return self.autoencoder.image_size if self.gen_target == "autoencoder" else self.gen_image_size

  @property
  def generates_pixels(self) -> bool:
    """Whether `generate_image` returns images (pixels, or the (DC-)autoencoder's decoded latents)."""
    return self.gen_target in ("pixels", "autoencoder", "patch_tokens") or self.vae is not None

  def replace(self, **kw: Any) -> "UnifiedConfig":
    return dataclasses.replace(self, **kw)
