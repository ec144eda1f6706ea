"""The unified model: one composition of understanding and generation, parts chosen by config.

  understanding   image [B,H,W,3] -> und_encoder -> a×a pool -> projector -> image tokens spliced into
                  the LLM sequence at `image_token_id` placeholders -> next-token loss on answer tokens.
                  und_encoder is a SigLIP/CLIP ViT, the Qwen2.5-VL tower (BLIP3-o: the frozen MLLM's
                  own; images renormalised to its CLIP mean/std, its merger already outputs the LLM
                  width, so und_projector="none" splices its tokens as Qwen2.5-VL does) or Florence-VL's
                  DBFusion (its own projector; see encoders.py).
  generation      prompt ids -> LLM with N learnable queries appended -> last-layer (post-norm) hidden
                  states at the queries [B, N, D] -> connector -> flow DiT condition -> velocity on the
                  *target*: pixels, or frozen gen-encoder features pooled a×a (BLIP3-o / Pisces);
                  or gen_target="patch_tokens": the LLM itself draws the image as sparse palette-patch
                  tokens after the prompt (patch_tokens.py; CE, no DiT, decoded exactly);
                  or none at all: gen_target="none" (Florence-VL, florence_vl.py) builds only the
                  understanding path.

Batches are dicts; each path runs when its keys are present (mixtures train both):
  und_image [B,H,W,3] float in [-1,1], und_ids [B,T] int32 (placeholders included), und_mask [B,T]
  (1 = token), und_loss_mask [B,T] (1 where the token is an answer token to predict);
  gen_ids [B,T] int32 left-padded prompt, gen_mask [B,T], gen_image [B,H,W,3] float in [-1,1].

    model = UnifiedModel(config, rngs=nnx.Rngs(0))
    loss, metrics = model.loss(batch, jax.random.key(0))
    images = model.generate_image(ids, mask, jax.random.key(1), num_steps=30, guidance=3.0)
    tokens = model.answer(images, ids, mask, max_new_tokens=8)

Paper parts as config choices (config.py's tables): `queries` "learnable" | "vocab" (MetaQuery:
new vocabulary rows <img0..N-1>,<boi>,<eoi> in their own trainable table, so only they train while the
LLM embedding stays frozen) | "image_tokens" (BLIP3o-NEXT: discrete image tokens in the LLM vocabulary,
joint CE + flow loss on teacher-forced image-token states, sampling draws tokens then runs the DiT) |
"none" (LaTtE-Flow: the generation stack reads the LLM's per-layer prompt states); `dit.type` "lumina"
| "sana" | "latte"; `connector` "identity" | "mlp" | "mlp_norm" | "transformer"; `cfg_null` "zeros" |
"empty_caption"; gen_target "latents" encodes gen_image with the model's frozen DC-AE (config `vae`,
latent_codec.py; `generate_image` then decodes to pixels [B, H, W, 3] in [-1, 1]), or without one reads
precomputed scaled latents from batch["gen_latents"] [B, s, s, C]. Editing inputs: gen_ids may hold
`image_token_id` placeholders filled from batch["gen_cond_image"] (MetaQuery: encoder tokens, sampling
with `cond_images` uses 3-way image+text guidance; BLIP3o-NEXT: the reference's discrete tokens, plus its
DC-AE latents in the condition and/or noise space per `edit_latents`, 2-way CFG against the zero null).

How each family learns, samples and forms its condition is its `GenerationPath` (generation_paths.py,
chosen by `UnifiedConfig.generation_path`), the queries' parameter, suffix and states their `QueryKind`
(queries.py), the flow target's encoding and decoding its `Target` (generation_paths.py), and the flow
head's class dits.py's; this module holds the parts they share.

Choices where the papers are silent (UNCONFIRMED in the spec; all config fields): Pisces' generation
target is taken to be its pooled generation-encoder features, as in BLIP3-o by the same authors;
classifier-free guidance uses the all-zero null condition of BLIP3-o.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxmodels.generate import generate
from jaxmodels.layers import Linear, get_activation, splice_image_tokens
from jaxmodels.llm import LLM
from jaxmodels.unified.config import UnifiedConfig, dit_cond_dim
from jaxmodels.unified.connector import Connector
from jaxmodels.unified.dense_head import DenseLabelHead
from jaxmodels.unified.dits import build_dit
from jaxmodels.unified.encoders import build_encoder, encoder_tokens, encoder_width, understanding_positions
from jaxmodels.unified import edit_canvas, latent_codec, patch_tokens
from jaxmodels.unified.generation_paths import PATHS, TARGETS
from jaxmodels.unified.image_tokenizer import SimVQTokenizer
from jaxmodels.unified.model_io import unified_num_image_tokens
from jaxmodels.unified.patch_autoencoder import PatchAutoencoder
from jaxmodels.unified.queries import QUERY_KINDS
from jaxmodels.vision import avg_pool_tokens


class Projector(nnx.Module):
  """[..., D_in] -> [..., D_out]: "linear", or "mlp2x_gelu" (Linear -> GELU -> Linear, LLaVA-style).
  (und_projector="none" builds no projector: the encoder's tokens already have the LLM width.)"""

  def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp2x_gelu", *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(in_dim, out_dim, axes=("embed", "mlp"), **kw)
    self.fc2 = Linear(out_dim, out_dim, axes=("mlp", "embed"), **kw) if kind == "mlp2x_gelu" else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.fc1(x)
    return h if self.fc2 is None else self.fc2(get_activation("gelu")(h))


def answer_loss(llm: LLM, embeds: jax.Array, ids: jax.Array, mask: jax.Array,
                loss_mask: jax.Array) -> tuple[jax.Array, dict]:
  """Next-token cross-entropy on the tokens where `loss_mask` is 1 (answers), from embeddings
  [B, T, D]; also token accuracy and whole-answer accuracy."""
  logits = llm(None, attention_mask=mask, inputs_embeds=embeds)[:, :-1]
  targets, weight = ids[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
  # optax's logsumexp − label-logit form: the gather-from-log_softmax form's backward (a scatter into
  # [B, T, V] then the log_softmax VJP) cost ~2x the head's matmuls on CPU (BENCHMARKS.md, issue 9).
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  denom = jnp.maximum(weight.sum(), 1.0)
  loss = (nll * weight).sum() / denom
  right = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  token_acc = (right * weight).sum() / denom
  answer_acc = jnp.mean(jnp.all((right > 0) | (weight == 0), axis=1))
  return loss, {"und_loss": loss, "und_token_acc": token_acc, "und_answer_acc": answer_acc}


class _ImageTokenLM(nnx.Module):
  """The LLM seen by `generate` with logits restricted to the image-token ids [lo, hi)."""

  def __init__(self, llm: LLM, lo: int, hi: int):
    self.llm, self.lo, self.hi = llm, lo, hi
    self.config = llm.config

  def init_cache(self, *a, **k):
    return self.llm.init_cache(*a, **k)

  def forward(self, *a, **k):
    return self.llm.forward(*a, **k)

  def logits(self, hidden):
    logits = self.llm.logits(hidden)
    ids = jnp.arange(logits.shape[-1])
    return jnp.where((ids >= self.lo) & (ids < self.hi), logits, jnp.finfo(jnp.float32).min)


@functools.lru_cache(maxsize=8)
def _patch_tokenizer(config) -> patch_tokens.PatchTokenizer:
  return patch_tokens.PatchTokenizer(config)


_positions = patch_tokens.positions_of


class UnifiedModel(nnx.Module):
  """See the module docstring. `config` is a `UnifiedConfig`."""

  def __init__(self, config: UnifiedConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.llm.dtype), jnp.dtype(c.llm.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    d = c.llm.hidden_size
    self.llm = LLM(c.llm, rngs=rngs)
    # und_encoder: a ViT, or the Qwen2.5-VL tower (see encoders.py); the projector maps its output width
    # (Qwen: the merger's out_hidden_size) to the LLM's, or is absent for und_projector="none".
    self.und_encoder = build_encoder(c.und_encoder, rngs=rngs)
    self.und_projector = (Projector(encoder_width(c.und_encoder), d, c.und_projector, **kw)
                          if c.und_encoder and c.und_projector != "none" else None)
    self.und_dense = (DenseLabelHead(encoder_width(c.und_encoder), c.und_dense_classes, **kw)
                      if c.und_dense_weight else None)
    self.gen_encoder = build_encoder(c.gen_encoder, rngs=rngs)
    # Pisces' decoupled input path: image inputs of generation prompts (editing) are read by the
    # generation encoder, a×a pooled (gen_pool), through their own projector.
    self.gen_projector = (Projector(c.gen_encoder.hidden_size, d, c.und_projector, **kw)
                          if c.gen_projector else None)
    # The "queries" path's parameter (queries.py): BLIP3-o's learnable `queries` or MetaQuery's
    # `query_embed` rows; None for the others.
    for name, kind in QUERY_KINDS.items():
      setattr(self, kind.attribute, kind.init(c, rngs) if c.queries == name else None)
    t = c.image_tokenizer
    self.image_tokenizer = (SimVQTokenizer(t.encoder, t.codebook_size, t.code_dim, l2_norm=t.l2_norm,
                                           proj_bias=t.codebook_proj_bias, rngs=rngs) if t is not None else None)
    cond_dim = dit_cond_dim(c.dit)
    self.connector = (None if c.connector == "identity" or c.dit is None else
                      Connector(c.connector, d, cond_dim, num_layers=c.connector_layers,
                                norm_init=c.connector_norm_init, per_head_gamma=c.connector_per_head_gamma,
                                **kw))
    self.autoencoder = PatchAutoencoder(c.autoencoder, rngs=rngs) if c.autoencoder else None
    self.vae, self.edit_latents = latent_codec.build(c, rngs=rngs)   # frozen DC-AE; editing injection
    self.dit = build_dit(c.dit, rngs=rngs)   # dits.py: Lumina-Next, SANA or LaTtE-Flow's stack
    # gen_target="patch_tokens": the LLM draws sparse palette-patch tokens (patch_tokens.py).
    pt = c.patch_tokens
    self.patch_head = (None if pt is None else
                       patch_tokens.PatchTokenHead(pt, d, self.patch_tokenizer.codebook_size,
                                                   self.patch_tokenizer.num_colours, **kw))

  @property
  def patch_tokenizer(self) -> "patch_tokens.PatchTokenizer | None":
    """The (parameter-free) tokenizer of gen_target="patch_tokens", shared by every model of a config."""
    return None if self.config.patch_tokens is None else _patch_tokenizer(self.config.patch_tokens)

  # ---------------------------------------------------------------- understanding
  @property
  def num_image_tokens(self) -> int:
    """Placeholder tokens one image occupies in an understanding sequence (model_io.py states it)."""
    return unified_num_image_tokens(self.config)

  def image_tokens(self, images: jax.Array, *, with_features: bool = False):
    """images [B, H, W, 3] in [-1, 1] -> LLM-space image tokens [B, n, D] (the understanding encoder, or
    the embeddings of the image's discrete tokens when the model only has an image tokenizer).

    Encoder path: und_encoder (Qwen2.5-VL and CLIP-family towers first renormalise the images to their
    processor's OpenAI-CLIP mean/std, `encoders.encoder_pixels`) -> a×a pool -> und_projector.
    with_features: also return the encoder's unpooled tokens [B, g², D_enc] (None without an encoder),
    which the dense auxiliary head reads."""
    if self.und_encoder is None:
      tokens = self.llm.embed(self.image_codes(images) + self.config.image_vocab_offset)
      return (tokens, None) if with_features else tokens
    feats = encoder_tokens(self.und_encoder, images, 1, last_block=False)
    pool = self.config.und_pool
    tokens = avg_pool_tokens(feats, pool) if pool > 1 else feats
    tokens = tokens if self.und_projector is None else self.und_projector(tokens)
    return (tokens, feats) if with_features else tokens

  def und_embeddings(self, ids: jax.Array, images: jax.Array) -> jax.Array:
    """Token embeddings [B, T, D] with the i-th placeholder of a row replaced by its i-th image token."""
    return splice_image_tokens(self.llm.embed(ids), ids, self.image_tokens(images),
                               self.config.image_token_id)

  def understanding_loss(self, batch) -> tuple[jax.Array, dict]:
    """Answer-token CE, plus und_dense_weight × the dense label loss when the batch has und_labels."""
    ids = batch["und_ids"]
    tokens, feats = self.image_tokens(batch["und_image"], with_features=True)
    embeds = splice_image_tokens(self.llm.embed(ids), ids, tokens, self.config.image_token_id)
    loss, metrics = answer_loss(self.llm, embeds, ids, batch["und_mask"], batch["und_loss_mask"])
    if self.und_dense is not None and "und_labels" in batch:
      dense, m = self.und_dense.loss(feats, batch["und_labels"])
      loss, metrics = loss + self.config.und_dense_weight * dense, {**metrics, **m}
    return loss, metrics

  @property
  def answer_image_size(self) -> int:
    """Side of the square images [B, S, S, 3] the understanding path reads."""
    if self.und_encoder is None:
      return self.config.image_tokenizer.encoder.image_size
    return self.config.und_encoder.image_size

  def answer_positions(self, ids: jax.Array, mask: jax.Array) -> jax.Array | None:
    """Rotary positions of an understanding prompt: M-RoPE [3, B, T] when a Qwen2.5-VL tower reads the
    images for an M-RoPE LLM (`encoders.understanding_positions`), else None (0..T−1)."""
    if self.und_encoder is None:
      return None
    return understanding_positions(self.config.und_encoder, ids, mask, image_token_id=self.config.image_token_id,
                                   uses_mrope=self.config.llm.mrope_section is not None)

  def answer(self, images: jax.Array, ids: jax.Array, mask: jax.Array, max_new_tokens: int,
             **generate_kwargs) -> jax.Array:
    """Greedy (or sampled) answer tokens [B, max_new_tokens] for left-padded prompts with images."""
    embeds = self.und_embeddings(ids, images)
    out = generate(self.llm, ids, max_new_tokens, attention_mask=mask, inputs_embeds=embeds,
                   positions=self.answer_positions(ids, mask), **generate_kwargs)
    return out[:, ids.shape[1]:]

  # ---------------------------------------------------------------- generation: conditions
  def embed_tokens(self, ids: jax.Array) -> jax.Array:
    """LLM embeddings [B, T, D]; with queries="vocab", ids >= vocab_size use the query table."""
    v = self.config.llm.vocab_size
    base = self.llm.embed(jnp.minimum(ids, v - 1))
    if self.query_embed is None:
      return base
    extra = jnp.take(self.query_embed[...], jnp.clip(ids - v, 0, None), axis=0).astype(base.dtype)
    return jnp.where((ids >= v)[..., None], extra, base)

  @property
  def num_edit_image_tokens(self) -> int:
    """Placeholders an edit prompt's source image occupies: the patch-token reference's slots
    (patch_tokens.edit_reference "patch_tokens" or "copy"), else num_image_tokens."""
    return self.patch_tokenizer.config.num_slots if self._patch_reference else self.num_image_tokens

  @property
  def _patch_reference(self) -> bool:
    pt = self.config.patch_tokens
    return pt is not None and pt.reference_tokens

  def patch_prompt(self, ids: jax.Array, mask: jax.Array, images: jax.Array | None
                   ) -> "tuple[jax.Array, edit_canvas.ReferenceCanvas | None]":
    """A patch-token prompt's embeddings [B, T, D] and the copy path's view of its edit sources `images`
    [B, S, S, 3] (patch_tokens.edit_reference="copy"; None otherwise), the sources tokenized once for
    both. Rows whose ids [B, T] keep an unmasked placeholder have a source."""
    if images is None or not self._patch_reference:
      return self.prompt_embeddings(ids, images), None
    tokens = self.patch_tokenizer.encode(images)
    embeds = self.prompt_embeddings(ids, images, source_tokens=tokens)
    if self.patch_head.copy_gate is None:
      return embeds, None
    slot = (ids == self.config.image_token_id) & (mask > 0)
    has = jnp.any(slot, axis=1)
    # The prompt position of the i-th placeholder (the i-th source token; splice_image_tokens' order).
    rank = jnp.where(slot, jnp.cumsum(slot, axis=1) - 1, tokens[0].shape[1])
    rows = jnp.arange(ids.shape[0])[:, None]
    where = jnp.zeros(tokens[0].shape, jnp.int32).at[rows, rank].set(
        jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape), mode="drop")
    return embeds, edit_canvas.ReferenceCanvas.of(*tokens, has, self.config.patch_tokens.eoi, where)

  def prompt_image_tokens(self, images: jax.Array, source_tokens=None) -> jax.Array:
    """LLM-space tokens [B, n, D] of a generation prompt's input images: the understanding encoder's
    (shared), with `gen_projector` the pooled generation encoder's (Pisces, decoupled), or with a
    patch-token reference the images' own patch tokens [B, num_slots, D] (`source_tokens`: those
    tokens, already encoded)."""
    if self._patch_reference:
      tokens = self.patch_tokenizer.encode(images) if source_tokens is None else source_tokens
      return self.patch_head.reference_embed(*tokens)
    if self.gen_projector is None:
      return self.image_tokens(images)
    return self.gen_projector(encoder_tokens(self.gen_encoder, images, self.config.gen_pool,
                                             last_block=False))

  def prompt_embeddings(self, ids: jax.Array, images: jax.Array | None, source_tokens=None) -> jax.Array:
    """Prompt embeddings; `image_token_id` placeholders are filled from `images` (editing inputs)."""
    if images is None:
      return self.embed_tokens(ids)
    return splice_image_tokens(self.embed_tokens(ids), ids, self.prompt_image_tokens(images, source_tokens),
                               self.config.image_token_id)

  def condition(self, ids: jax.Array, mask: jax.Array, images: jax.Array | None = None) -> jax.Array:
    """Prompt [B, T] (left-padded) -> DiT condition of the config's generation path: [B, N, C] at the
    query positions (queries.py), or for queries="none" the LLM's per-layer prompt states [B, L, T, D]."""
    return self._path().condition(self, ids, mask.astype(jnp.int32), images)

  def null_condition(self, cond: jax.Array) -> jax.Array:
    """CFG null: zeros, or the condition of an empty caption (MetaQuery), [1, ...] broadcastable."""
    if self.config.cfg_null == "zeros":
      return jnp.zeros((1,) + cond.shape[1:], cond.dtype)
    return self.condition(jnp.zeros((1, 0), jnp.int32), jnp.zeros((1, 0), jnp.int32)).astype(cond.dtype)

  # BLIP3o-NEXT ------------------------------------------------------
  def image_codes(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] in [-1, 1] (resized to the tokenizer's side) -> codebook indices [B, n]
    (frozen tokenizer)."""
    s = self.config.image_tokenizer.encoder.image_size
    if images.shape[1:3] != (s, s):
      images = jax.image.resize(images, (images.shape[0], s, s, images.shape[-1]), "linear")
    return self.image_tokenizer.encode(images, self.config.image_tokenizer.scale)

  def _image_prefix_ids(self, b: int) -> jax.Array:
    c, t = self.config, self.config.image_tokenizer
    o = c.image_vocab_offset + t.codebook_size
    im_start, scale_tok = o + t.num_scale_tokens, o + t.scale - 1
    return jnp.broadcast_to(jnp.array([im_start, scale_tok], jnp.int32)[None], (b, 2))

  def with_reference_codes(self, ids: jax.Array, ref_images: jax.Array | None) -> jax.Array:
    """ids [B, T] with the `image_token_id` placeholders replaced, in order, by the discrete token ids
    of `ref_images` (BLIP3o-NEXT editing: the reference's tokens are AR inputs; rows hold n of them)."""
    if ref_images is None:
      return ids
    codes = self.image_codes(ref_images) + self.config.image_vocab_offset
    return splice_image_tokens(ids[..., None], ids, codes[..., None], self.config.image_token_id)[..., 0]

  def reference_latents(self, ref_images: jax.Array | None) -> jax.Array | None:
    """Scaled DC-AE latents [B, s, s, C] of editing references (None without `edit_latents`)."""
    if ref_images is None or self.edit_latents is None:
      return None
    return latent_codec.encode(self.vae, ref_images, self.config)

  def image_token_forward(self, ids, mask, codes, ref_images=None):
    """Teacher-forced pass over [prompt, <im_start>, <S_k>, image tokens] -> (sequence [B, T'], its
    mask, hidden states [B, T', D], condition [B, 1 + n (+ s²), C], reference latents [B, s, s, C] or
    None). condition = connector(states of <S_k> and the image tokens); for editing (`ref_images`
    [B, H, W, 3]: their tokens fill the prompt's placeholders) with edit_latents "cond"/"cond_noise"
    the reference's projected latent tokens go through the connector too and are appended."""
    b, n = codes.shape
    ids = self.with_reference_codes(ids.astype(jnp.int32), ref_images)
    seq = jnp.concatenate([ids, self._image_prefix_ids(b), codes + self.config.image_vocab_offset], axis=1)
    full_mask = jnp.concatenate([mask.astype(jnp.int32), jnp.ones((b, n + 2), jnp.int32)], axis=1)
    hidden = self.llm.forward(seq, _positions(full_mask), full_mask).hidden
    cond, ref = hidden[:, -(n + 1):], self.reference_latents(ref_images)
    extra = None if ref is None else self.edit_latents.cond_tokens(ref)
    if extra is not None:
      cond = jnp.concatenate([cond, extra.astype(cond.dtype)], axis=1)
    cond = cond if self.connector is None else self.connector(cond)
    return seq, full_mask, hidden, cond, ref

  def image_token_condition(self, ids, mask, codes, ref_images=None) -> jax.Array:
    """The DiT condition [B, 1 + n (+ s²), C] of `image_token_forward`."""
    return self.image_token_forward(ids, mask, codes, ref_images)[3]

  # ---------------------------------------------------------------- generation: flow
  def target_images(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] resized to the side the pixel / autoencoder target works at."""
    c = self.config
    s = c.autoencoder.image_size if c.gen_target == "autoencoder" else c.gen_image_size
    if images.shape[1:3] != (s, s):
      images = jax.image.resize(images, (images.shape[0], s, s, images.shape[-1]), "linear")
    return images

  def target(self, images: jax.Array) -> jax.Array:
    """Clean flow target x₀ [B, h, w, C] for images [B, H, W, 3] in [-1, 1] (generation_paths.TARGETS)."""
    return TARGETS[self.config.gen_target].x0(self, images)

  def batch_target(self, batch) -> jax.Array:
    """x₀ of a batch: gen_latents when the target is latents and the model has no vae, else
    target(gen_image)."""
    return TARGETS[self.config.gen_target].batch_x0(self, batch)

  def velocity(self, x: jax.Array, sigma: jax.Array, cond: jax.Array, cond_mask=None) -> jax.Array:
    """The flow head's velocity ε − x₀ [B, h, w, C] at σ [B] under `cond` (every head of dits.py takes
    the same arguments)."""
    return self.dit.velocity(x, sigma, cond, cond_mask)

  def _edit_inputs(self, rng, batch):
    """MetaQuery's edit dropout: caption masked / input images black / both (config edit_drop)."""
    c = self.config
    ids, mask, images = batch["gen_ids"], batch["gen_mask"].astype(jnp.int32), batch.get("gen_cond_image")
    if images is None:
      return ids, mask, None
    p_cap, p_img, p_both = c.edit_drop
    u = jax.random.uniform(rng, (ids.shape[0],))
    drop_cap = (u < p_cap) | ((u >= p_cap + p_img) & (u < p_cap + p_img + p_both))
    drop_img = u >= p_cap
    drop_img &= u < p_cap + p_img + p_both
    is_img = ids == c.image_token_id
    mask = jnp.where(drop_cap[:, None] & ~is_img, 0, mask)
    # A dropped image is black for the encoders; a patch-token reference drops to the empty canvas (the
    # background colour: no patches), as black is a palette colour there.
    null = (jnp.asarray(c.patch_tokens.palette[0], images.dtype) / 127.5 - 1.0 if self._patch_reference
            else -1.0)
    images = jnp.where(drop_img[:, None, None, None], null, images)
    return ids, mask, images

  def _path(self):
    path = self.config.generation_path
    if path is None:
      raise ValueError("this model does not generate images (config.model.gen_target='none')")
    return PATHS[path]

  def generation_loss(self, batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """The loss of the config's generation path (generation_paths.PATHS) on the batch's gen_* rows."""
    return self._path().loss(self, batch, rng)

  def sample_image_tokens(self, ids, mask, rng, *, temperature: float = 1.0, ref_images=None) -> jax.Array:
    """BLIP3o-NEXT: codes [B, n] drawn after [prompt, <im_start>, <S_k>] (top-k / top-p); `ref_images`
    fill the prompt's placeholders with their tokens (editing)."""
    c = self.config
    b = ids.shape[0]
    n = self.image_tokenizer.grid_size(c.image_tokenizer.scale) ** 2
    ids = self.with_reference_codes(ids.astype(jnp.int32), ref_images)
    prefix = jnp.concatenate([ids, self._image_prefix_ids(b)], axis=1)
    pmask = jnp.concatenate([mask.astype(jnp.int32), jnp.ones((b, 2), jnp.int32)], axis=1)
    lo = c.image_vocab_offset
    lm = _ImageTokenLM(self.llm, lo, lo + c.image_tokenizer.codebook_size)
    out = generate(lm, prefix, n, attention_mask=pmask, temperature=temperature,
                   top_k=min(c.image_top_k, c.image_tokenizer.codebook_size), top_p=c.image_top_p, rng=rng,
                   eos_token_id=[], pad_token_id=lo)
    return out[:, prefix.shape[1]:] - lo

  def generate_image(self, ids: jax.Array, mask: jax.Array, rng: jax.Array, *, num_steps: int = 30,
                     guidance: float = 3.0, solver: str = "euler", shift: float = 1.0,
                     cond_images: jax.Array | None = None, image_guidance: float = 1.5,
                     return_codes: bool = False):
    """Samples targets [B, h, w, C] for prompts: pixels in [-1, 1] for the pixel target, and images
    [B, H, W, 3] in [-1, 1] decoded by the autoencoder / in-model DC-AE (latents without a vae).

    cond_images (editing inputs, placeholders in `ids`): 3-way guidance (`flow.image_text_guidance`)
    with text scale `guidance` and image scale `image_guidance`. queries="image_tokens": image tokens
    are sampled first (return_codes=True also returns them); an edit's reference tokens and latents are
    in both CFG branches except the zero-null condition (`image_guidance` is unused).
    gen_target="patch_tokens": tokens drawn at `patch_tokens.temperature` with CFG scale `guidance`
    against the empty prompt, decoded to [B, S, S, 3]; `num_steps`, `solver`, `shift` are unused and
    edits condition on the reference at the placeholders (its understanding tokens, or its own patch
    tokens, which the copy path also reads)."""
    x, codes = self._path().sample(
        self, ids, mask, rng, num_steps=num_steps, guidance=guidance, solver=solver, shift=shift,
        cond_images=cond_images, image_guidance=image_guidance)
    return (x, codes) if return_codes else x

  # ---------------------------------------------------------------- training entry point
  def loss(self, batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    """Weighted sum of the losses whose inputs are in `batch`; metrics for each part."""
    c = self.config
    total, metrics = jnp.zeros((), jnp.float32), {}
    if "und_ids" in batch:
      loss, m = self.understanding_loss(batch)
      total, metrics = total + c.und_weight * loss, {**metrics, **m}
    if "gen_ids" in batch:
      loss, m = self.generation_loss(batch, rng)
      total, metrics = total + c.gen_weight * loss, {**metrics, **m}
      if self.autoencoder is not None:
        loss, m = self.autoencoder.reconstruction_loss(self.target_images(batch["gen_image"]))
        total, metrics = total + c.ae_weight * loss, {**metrics, **m}
    return total, metrics
