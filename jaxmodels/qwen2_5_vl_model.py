"""Qwen2.5-VL as a whole model: the vision tower, its merged tokens spliced into the prompt, and the
Qwen2 language model with M-RoPE (HF `Qwen2_5_VLForConditionalGeneration`).

Prompt layout (what Qwen's processor writes for every image): `<|vision_start|>`, then one
`<|image_pad|>` (config `image_token_id`) per merged token (t·h·w / merge² for a grid_thw row (t, h,
w) in patches), then `<|vision_end|>` (`Qwen25VLConfig.image_placeholder_ids`). The vision tower's
merged tokens replace the pad embeddings in order: image by image, row by row of the batch.

Positions (`mrope_positions`, transformers' `Qwen2_5_VLModel.get_rope_index`): [3, B, T] (temporal,
height, width). Text tokens get one running id on all three axes; an image's tokens get (p + t', p +
h', p + w') over its merged t × (h/m) × (w/m) grid, p being the running id where the image starts,
and the text after it continues at p + max(h, w) / m. Padding (attention_mask 0) is skipped and gets
0. `rope_deltas` = (largest position + 1) − real length, per row: a token decoded with a KV cache at
real index n sits at position n + rope_deltas on every axis (`jaxmodels.generate.next_positions`).
Videos are not supported (a `JaxModelsError`).

    model = jaxmodels.hf.from_pretrained("/ckpts/Qwen2.5-VL-7B-Instruct")    # -> Qwen25VLModel
    logits = model(input_ids, pixel_values, image_grid_thw)                  # [B, T, V]
    out = model.generate(input_ids, 32, pixel_values, image_grid_thw)         # [B, T + 32], greedy

`pixel_values` [N, C·T·p·p] and `image_grid_thw` [num_images, 3] are what `Qwen2VLImageProcessor`
returns (`jaxmodels.vision.qwen2_5_vl.images_to_patches` makes them from images); the grid must be
concrete (host values): it fixes the tower's window layout and the image positions.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmodels.errors import ConfigError, JaxModelsError
from jaxmodels.generate import generate, next_positions
from jaxmodels.llm import LLM, KVCache, LLMConfig, LMOutput
from jaxmodels.vision.qwen2_5_vl import Qwen25VisionConfig, Qwen25VisionTransformer, check_grid


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  """Qwen2.5-VL: the language model (`text`, Qwen2 with `mrope_section`) and the vision tower
  (`vision`, whose merger outputs the LM width), plus the special token ids of config.json."""
  text: LLMConfig
  vision: Qwen25VisionConfig
  image_token_id: int = 151655              # <|image_pad|>
  video_token_id: int = 151656              # <|video_pad|>
  vision_start_token_id: int = 151652       # <|vision_start|>
  vision_end_token_id: int = 151653         # <|vision_end|>
  model_type: str = "qwen2_5_vl"

  def __post_init__(self):
    if self.text.mrope_section is None:
      raise ConfigError("Qwen25VLConfig.text: Qwen2.5-VL's language model needs mrope_section (M-RoPE)")
    if self.vision.out_hidden_size != self.text.hidden_size:
      raise ConfigError(f"Qwen25VLConfig: vision out_hidden_size {self.vision.out_hidden_size} must equal "
                        f"the language model's hidden_size {self.text.hidden_size}")

  def image_placeholder_ids(self, grid_thw) -> list[int]:
    """The ids the processor writes for one image of grid (t, h, w) patches: vision_start, one
    image pad per merged token, vision_end."""
    t, h, w = (int(v) for v in grid_thw)
    n = t * h * w // self.vision.merge_unit
    return [self.vision_start_token_id] + [self.image_token_id] * n + [self.vision_end_token_id]

  def replace(self, **kw: Any) -> "Qwen25VLConfig":
    return dataclasses.replace(self, **kw)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_no_video(input_ids, video_token_id: int) -> None:
  if _is_concrete(input_ids) and bool(np.any(np.asarray(input_ids) == video_token_id)):
    raise JaxModelsError(f"Qwen2.5-VL: input_ids hold video tokens (video_token_id {video_token_id}); "
                         "video inputs are not supported, only images")


def _check_image_count(input_ids, image_token_id: int, expected: int, what: str) -> None:
  """Raises unless concrete input_ids hold `expected` image pads (`what` says where that number is from)."""
  if _is_concrete(input_ids):
    count = int(np.sum(np.asarray(input_ids) == image_token_id))
    if count != expected:
      raise ValueError(f"input_ids hold {count} image tokens (image_token_id {image_token_id}) but {what} "
                       f"has {expected} merged tokens")


def _image_tables(grid: np.ndarray, merge: int) -> tuple[np.ndarray, np.ndarray]:
  """Per merged image token (all images in order): its (t, h, w) offset in the image's grid [N, 3],
  and how far the running position advances after it [N] (max(h, w) / merge at each image's last
  token, else 0)."""
  offsets, advance = [], []
  for t, h, w in grid:
    gh, gw = h // merge, w // merge
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
    offsets.append(np.stack([tt, hh, ww], -1).reshape(-1, 3))
    step = np.zeros(t * gh * gw, np.int32)
    step[-1] = max(gh, gw)
    advance.append(step)
  return np.concatenate(offsets).astype(np.int32), np.concatenate(advance)


def mrope_positions(input_ids: jax.Array, image_grid_thw=None, attention_mask: jax.Array | None = None, *,
                    image_token_id: int, spatial_merge_size: int,
                    video_token_id: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Qwen2.5-VL's M-RoPE positions (see the module docstring): input_ids [B, T], image_grid_thw
  [num_images, 3] (concrete; None: a text-only batch), attention_mask [B, T] -> (positions [3, B, T]
  int32, rope_deltas [B] int32). Traceable in input_ids / attention_mask (the grid is static)."""
  ids = jnp.asarray(input_ids)
  if video_token_id is not None:
    _check_no_video(input_ids, video_token_id)
  real = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask) > 0
  is_image = ids == image_token_id
  if image_grid_thw is None:
    _check_image_count(input_ids, image_token_id, 0, "image_grid_thw=None")
    step = real.astype(jnp.int32)
  else:
    grid = check_grid(image_grid_thw, spatial_merge_size)
    offsets, advance = _image_tables(grid, spatial_merge_size)
    _check_image_count(input_ids, image_token_id, len(offsets), f"image_grid_thw {grid.tolist()}")
    index = image_index(is_image, len(offsets))
    step = jnp.where(is_image, jnp.asarray(advance)[index], real.astype(jnp.int32))
  step = jnp.where(real, step, 0)
  start = jnp.cumsum(step, axis=-1) - step                  # running id before each token [B, T]
  positions = jnp.broadcast_to(start[None], (3,) + ids.shape)
  if image_grid_thw is not None:
    grid_offsets = jnp.moveaxis(jnp.asarray(offsets)[index], -1, 0)           # [3, B, T]
    positions = jnp.where(is_image[None], positions + grid_offsets, positions)
  positions = jnp.where(real[None], positions, 0).astype(jnp.int32)
  deltas = next_positions(positions, real.astype(jnp.int32)) - real.sum(-1).astype(jnp.int32)
  return positions, deltas


def image_index(is_image: jax.Array, num_features: int) -> jax.Array:
  """For each position of is_image [B, T]: the index of its image feature when the features fill the
  image positions in order, batch row after batch row (clipped into range elsewhere) -> [B, T]."""
  flat = jnp.cumsum(is_image.reshape(-1).astype(jnp.int32)) - 1
  return jnp.clip(flat, 0, max(num_features - 1, 0)).reshape(is_image.shape)


class Qwen25VLModel(nnx.Module):
  """Qwen2.5-VL: `visual` (Qwen25VisionTransformer) + `llm` (LLM with M-RoPE)."""

  def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.visual = Qwen25VisionTransformer(config.vision, rngs=rngs)
    self.llm = LLM(config.text, rngs=rngs)

  def image_features(self, pixel_values: jax.Array, image_grid_thw) -> jax.Array:
    """Processor patches [N, C·T·p·p] + grid [num_images, 3] -> merged tokens [N / m², D] (all images)."""
    return self.visual.encode_patches(pixel_values, image_grid_thw)

  def embed(self, input_ids: jax.Array, pixel_values: jax.Array | None = None, image_grid_thw=None, *,
            image_features: jax.Array | None = None) -> jax.Array:
    """Token embeddings [B, T, D] with the image pads replaced by the images' merged tokens (from
    pixel_values + image_grid_thw, or given as image_features [N_img_tokens, D])."""
    c = self.config
    _check_no_video(input_ids, c.video_token_id)
    x = self.llm.embed(input_ids)
    if image_features is None and pixel_values is None:
      return x
    if image_features is None:
      image_features = self.image_features(pixel_values, image_grid_thw)
    _check_image_count(input_ids, c.image_token_id, image_features.shape[0], "image_features")
    is_image = input_ids == c.image_token_id
    index = image_index(is_image, image_features.shape[0])
    return jnp.where(is_image[..., None], image_features.astype(x.dtype)[index], x)

  def rope_index(self, input_ids: jax.Array, image_grid_thw=None,
                 attention_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(positions [3, B, T], rope_deltas [B]): `mrope_positions` with this model's token ids."""
    c = self.config
    return mrope_positions(input_ids, image_grid_thw, attention_mask, image_token_id=c.image_token_id,
                           spatial_merge_size=c.vision.spatial_merge_size, video_token_id=c.video_token_id)

  def forward(self, input_ids: jax.Array | None = None, pixel_values: jax.Array | None = None,
              image_grid_thw=None, attention_mask: jax.Array | None = None,
              positions: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None,
              cache: KVCache | None = None, cache_index=0, return_layer_outputs: bool = False) -> LMOutput:
    """The trunk: `LMOutput.hidden` [B, T, D] is the last layer's output after the final norm.

    inputs_embeds [B, T, D] (e.g. `embed(...)` with some rows edited) replaces the embedding of
    input_ids. positions default: `rope_index` when image_grid_thw is given, else 0..T−1 on every
    axis (what transformers' forward does for a text-only batch). attention_mask and the cache are
    as in `LLM.forward`."""
    if inputs_embeds is None:
      inputs_embeds = self.embed(input_ids, pixel_values, image_grid_thw)
    if positions is None and image_grid_thw is not None:
      if input_ids is None:
        raise ValueError("M-RoPE positions come from input_ids: pass input_ids or positions")
      positions = self.rope_index(input_ids, image_grid_thw, attention_mask)[0]
    return self.llm.forward(None, positions, attention_mask, inputs_embeds=inputs_embeds, cache=cache,
                            cache_index=cache_index, return_layer_outputs=return_layer_outputs)

  def __call__(self, input_ids: jax.Array | None = None, pixel_values: jax.Array | None = None,
               image_grid_thw=None, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, *, inputs_embeds: jax.Array | None = None) -> jax.Array:
    """Logits [B, T, V] (float32); arguments as `forward`."""
    out = self.forward(input_ids, pixel_values, image_grid_thw, attention_mask, positions,
                       inputs_embeds=inputs_embeds)
    return self.logits(out.hidden)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, V] (float32)."""
    return self.llm.logits(hidden)

  def generate(self, input_ids: jax.Array, max_new_tokens: int, pixel_values: jax.Array | None = None,
               image_grid_thw=None, *, attention_mask: jax.Array | None = None, **options) -> jax.Array:
    """Decodes `max_new_tokens` after the prompt input_ids [B, T] (left-padded where attention_mask
    is 0) with its images -> [B, T + max_new_tokens] int32. The prompt embeddings and M-RoPE positions
    are computed once (one compiled program per grid); decoding is `jaxmodels.generate.generate` on
    the language model (`options`: temperature, top_p, top_k, rng, eos_token_id, pad_token_id, ...)."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    _check_no_video(input_ids, self.config.video_token_id)
    mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    grid = None if image_grid_thw is None else tuple(map(tuple, np.asarray(image_grid_thw).tolist()))
    if grid is not None:
      grid_array = check_grid(np.asarray(grid), self.config.vision.spatial_merge_size)
      n = int(np.prod(grid_array, -1).sum()) // self.config.vision.merge_unit
      _check_image_count(input_ids, self.config.image_token_id, n, f"image_grid_thw {grid_array.tolist()}")
    embeds, positions = _prompt_inputs(self, input_ids, pixel_values, mask, grid=grid)
    return generate(self.llm, input_ids, max_new_tokens, attention_mask=mask, inputs_embeds=embeds,
                    positions=positions, **options)


@nnx.jit(static_argnames=("grid",))
def _prompt_inputs(model: Qwen25VLModel, input_ids, pixel_values, attention_mask, *, grid):
  """(inputs_embeds [B, T, D], positions [3, B, T]) of a prompt; `grid` a tuple of (t, h, w) or None."""
  grid_array = None if grid is None else np.asarray(grid, np.int64)
  embeds = model.embed(input_ids, pixel_values, grid_array)
  return embeds, model.rope_index(input_ids, grid_array, attention_mask)[0]
