"""Florence-VL's depth-breadth fusion (DBFusion) of Florence-2 features (spec §6.1).

    fusion = DBFusion(config, rngs=nnx.Rngs(0))
    tokens = fusion(images)        # [B, 768, 768, 3] (Florence-2-normalised) -> [B, 576, D_llm]

Per image, four streams of n = (H/32)² tokens, each of Florence-2's width d (1024 for -large):
  depth     the projected DaViT image features (`Florence2.image_features`);
  breadth   Florence-2's encoder last hidden state at the image positions, one stream per task prompt
            (config `prompt_ids`: detailed caption, OCR, region grounding by default).
The vision tower runs once on the B images; the encoder runs once on 3·B rows (prompt-major: rows
k·B .. (k+1)·B−1 hold prompt k), each row being [1 + n image placeholders ; prompt ids ; pad], with
the prompts right-padded to a common length and masked.

Image-position slicing (UNCONFIRMED in the spec; the modified modeling file of the release is not
public): the image features occupy encoder slots 0 .. n (slot 0 is Florence-2's global mean token,
which the projector prepends); with `drop_global_token=True` (default) slot 0 is dropped and slots
1 .. n are kept — 576 tokens at 768 px, the paper's "# Vis tok." — for the depth stream too. With
False, all 1 + n slots are kept (577 tokens).

Fusion (`mode`): "channel_concat" (default, [B, n, 4d]), "token_concat" ([B, 4n, d], stream-major:
depth, prompt 1, 2, 3) or "average" ([B, n, d]); then the `mlp3x_gelu` projector
Linear(in -> D) -> GELU -> Linear(D -> D) -> GELU -> Linear(D -> D) into the LLM width D.
`frozen=True` puts a stop_gradient on the Florence-2 features (the released FlorenceVisionTower runs
under no_grad); also freeze its parameters in the optimizer (configs do: `und_encoder/florence/.*`, its
path as the unified model's understanding encoder, see encoders.py).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels.errors import ConfigError
from jaxmodels.layers import Linear, get_activation
from jaxmodels.vision.florence2 import Florence2, Florence2Config

FUSION_MODES = ("channel_concat", "token_concat", "average")
# The three task prompts of Florence-VL (spec §6.1), as the config stores them.
DEFAULT_PROMPTS = ("Describe in detail what is shown in the image.", "What is the text in the image?",
                   "Locate the objects in the image, with their descriptions.")
# Florence-2's processor normalisation (ImageNet mean / std per RGB channel, on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DBFusionConfig:
  florence: Florence2Config = Florence2Config(decoder=False)
  out_dim: int = 4096                        # the LLM width
  mode: str = "channel_concat"
  projector: str = "mlp3x_gelu"
  image_size: int = 768
  prompts: tuple[str, ...] = DEFAULT_PROMPTS
  # Tokenised prompts (Florence-2 tokenizer, with its <s> ... </s>), one tuple per prompt. Must be set
  # before the model is called: `resolve_prompt_ids` fills them from a tokenizer (configs: the local
  # path `config.model.dbfusion.tokenizer`, read by `florence_vl_config`).
  prompt_ids: tuple[tuple[int, ...], ...] | None = None
  drop_global_token: bool = True
  frozen: bool = False

  def __post_init__(self):
    if isinstance(self.florence, dict):
      object.__setattr__(self, "florence", Florence2Config(**self.florence))
    object.__setattr__(self, "prompts", tuple(self.prompts))
    if self.prompt_ids is not None:
      object.__setattr__(self, "prompt_ids", tuple(tuple(int(i) for i in p) for p in self.prompt_ids))
      if len(self.prompt_ids) != len(self.prompts):
        raise ConfigError(f"DBFusionConfig: {len(self.prompt_ids)} prompt_ids for {len(self.prompts)} prompts")
    if self.mode not in FUSION_MODES:
      raise ConfigError(f"DBFusionConfig.mode={self.mode!r}; expected one of {FUSION_MODES}")
    if self.projector != "mlp3x_gelu":
      raise ConfigError(f"DBFusionConfig.projector={self.projector!r}; only 'mlp3x_gelu' is built")
    if self.image_size % self.florence.vision.stride:
      raise ConfigError(f"DBFusionConfig.image_size {self.image_size} is not a multiple of the DaViT "
                        f"stride {self.florence.vision.stride}")

  @property
  def num_streams(self) -> int:
    return 1 + len(self.prompts)

  @property
  def grid_tokens(self) -> int:
    return (self.image_size // self.florence.vision.stride) ** 2

  @property
  def num_tokens(self) -> int:
    """Visual tokens per image handed to the LLM."""
    n = self.grid_tokens + (0 if self.drop_global_token else 1)
    return n * self.num_streams if self.mode == "token_concat" else n

  @property
  def projector_in(self) -> int:
    d = self.florence.d_model
    return d * self.num_streams if self.mode == "channel_concat" else d

  def replace(self, **kw) -> "DBFusionConfig":
    return dataclasses.replace(self, **kw)


def resolve_prompt_ids(config: DBFusionConfig, tokenizer, *,
                       key: str = "config.model.dbfusion.tokenizer") -> DBFusionConfig:
  """Fills `prompt_ids` by tokenising `prompts` with Florence-2's (BART) tokenizer, whose
  post-processor adds <s> ... </s>. `tokenizer`: a local path (a Florence-2 checkpoint folder with
  tokenizer.json, or the file; read with the `tokenizers` library), a `tokenizers.Tokenizer`, an object
  with `encode(text, add_special_tokens=True) -> ids` (input_pipeline's HFTokenizer), or a transformers
  tokenizer. A missing path raises a one-line ConfigError naming `key`."""
  if tokenizer is None or isinstance(tokenizer, str):
    import os
    import tokenizers
    if not tokenizer:
      raise ConfigError(f"{key} is not set: give the local Florence-2 checkpoint (tokenizer.json) "
                        "to tokenise dbfusion.prompts, or set dbfusion.prompt_ids")
    path = os.path.join(tokenizer, "tokenizer.json") if os.path.isdir(tokenizer) else tokenizer
    if not os.path.exists(path):
      raise ConfigError(f"{key}={tokenizer!r}: no such file or folder (Florence-2 tokenizer.json)")
    try:
      tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f"{key}={tokenizer!r}: {path} is not a tokenizer.json ({e})") from None
  if hasattr(tokenizer, "encode_batch"):                                       # tokenizers.Tokenizer
    ids = [tokenizer.encode(p, add_special_tokens=True).ids for p in config.prompts]
  elif hasattr(tokenizer, "tokenizer") and hasattr(tokenizer, "encode"):        # our HFTokenizer
    ids = [tokenizer.encode(p, add_special_tokens=True) for p in config.prompts]
  else:                                                                        # transformers
    ids = [tokenizer(p)["input_ids"] for p in config.prompts]
  return config.replace(prompt_ids=tuple(tuple(int(i) for i in p) for p in ids))


class MLPProjector(nnx.Module):
  """mlp{depth}x_gelu: Linear(in -> out), then (GELU, Linear(out -> out)) × (depth − 1)."""

  def __init__(self, in_dim: int, out_dim: int, depth: int = 3, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.layers = nnx.List([Linear(in_dim if i == 0 else out_dim, out_dim,
                                   axes=("mlp" if i else "embed", "embed" if i == depth - 1 else "mlp"), **kw)
                            for i in range(depth)])

  def __call__(self, x: jax.Array) -> jax.Array:
    gelu = get_activation("gelu")
    for i, layer in enumerate(self.layers):
      x = layer(gelu(x) if i else x)
    return x


class DBFusion(nnx.Module):
  """Florence-2 (vision + encoder) -> fused streams -> projector. See the module docstring."""

  def __init__(self, config: DBFusionConfig, *, rngs: nnx.Rngs, florence: Florence2 | None = None):
    """`florence`: an already built (e.g. `jaxmodels.hf.from_pretrained(..., decoder=False)`) Florence-2
    to use instead of a freshly initialised one; its config must equal `config.florence`."""
    self.config = c = config
    fc = c.florence
    if florence is not None and florence.config != fc:
      raise ConfigError("DBFusion: the given Florence2's config differs from config.florence")
    self.florence = florence if florence is not None else Florence2(fc, rngs=rngs)
    self.projector = MLPProjector(c.projector_in, c.out_dim, 3, dtype=jnp.dtype(fc.dtype),
                                  param_dtype=jnp.dtype(fc.param_dtype), rngs=rngs)

  def prompt_batch(self, num_image_features: int) -> tuple[jax.Array, jax.Array]:
    """Encoder ids/mask [P, 1 + n + L] for the P prompts: placeholders, prompt, right padding."""
    c, fc = self.config, self.config.florence
    if c.prompt_ids is None:
      raise ConfigError("DBFusionConfig.prompt_ids is not set: tokenise config.prompts with the Florence-2 "
                        "tokenizer (jaxmodels.unified.dbfusion.resolve_prompt_ids)")
    length = max(len(p) for p in c.prompt_ids)
    ids = [[fc.image_token_id] * num_image_features + list(p) + [fc.pad_token_id] * (length - len(p))
           for p in c.prompt_ids]
    mask = [[1] * (num_image_features + len(p)) + [0] * (length - len(p)) for p in c.prompt_ids]
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)

  def streams(self, images: jax.Array) -> list[jax.Array]:
    """[depth, breadth_1, ..., breadth_P], each [B, n, d] (n = 576 at 768 px with the global token
    dropped)."""
    c = self.config
    feats = self.florence.image_features(images)                    # [B, 1 + n, d]
    b, m = feats.shape[:2]
    ids, mask = self.prompt_batch(m)
    p = ids.shape[0]
    ids = jnp.repeat(ids, b, axis=0)                                 # prompt-major rows [P·B, T]
    mask = jnp.repeat(mask, b, axis=0)
    enc = self.florence.encode(ids, mask, image_features=jnp.tile(feats, (p, 1, 1)))
    start = 1 if c.drop_global_token else 0
    out = [feats[:, start:]] + [enc[k * b:(k + 1) * b, start:m] for k in range(p)]
    if c.frozen:
      out = [jax.lax.stop_gradient(s) for s in out]
    return out

  def fuse(self, streams: list[jax.Array]) -> jax.Array:
    mode = self.config.mode
    if mode == "channel_concat":
      return jnp.concatenate(streams, axis=-1)
    if mode == "token_concat":
      return jnp.concatenate(streams, axis=1)
    return jnp.mean(jnp.stack(streams), axis=0)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] normalised for Florence-2 (`florence_pixels`) -> LLM-space visual tokens
    [B, num_tokens, D]."""
    return self.projector(self.fuse(self.streams(images)))


def florence_pixels(images: jax.Array) -> jax.Array:
  """images [B, H, W, 3] in [-1, 1] -> Florence-2's processor normalisation (float32)."""
  x = (images.astype(jnp.float32) + 1.0) * 0.5
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
