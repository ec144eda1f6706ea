"""The unified model: one composition of understanding and generation, parts chosen by config.

  understanding   image [B,H,W,3] -> und_encoder -> a×a pool -> projector -> image tokens spliced into
                  the LLM sequence at `image_token_id` placeholders -> next-token loss on answer tokens.
  generation      prompt ids -> LLM with N learnable queries appended -> last-layer (post-norm) hidden
                  states at the queries [B, N, D] -> connector -> flow DiT condition -> velocity on the
                  *target*: pixels, or frozen gen-encoder features pooled a×a (BLIP3-o / Pisces).

Batches are dicts; each path runs when its keys are present (mixtures train both):
  und_image [B,H,W,3] float in [-1,1], und_ids [B,T] int32 (placeholders included), und_mask [B,T]
  (1 = token), und_loss_mask [B,T] (1 where the token is an answer token to predict);
  gen_ids [B,T] int32 left-padded prompt, gen_mask [B,T], gen_image [B,H,W,3] float in [-1,1].

    model = UnifiedModel(config, rngs=nnx.Rngs(0))
    loss, metrics = model.loss(batch, jax.random.key(0))
    images = model.generate_image(ids, mask, jax.random.key(1), num_steps=30, guidance=3.0)
    tokens = model.answer(images, ids, mask, max_new_tokens=8)

Choices where the papers are silent (UNCONFIRMED in the spec; all config fields): Pisces' generation
target is taken to be its pooled generation-encoder features, as in BLIP3-o by the same authors;
classifier-free guidance uses the all-zero null condition of BLIP3-o.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmodels import flow
from jaxmodels.flow.lumina import LuminaNextDiT
from jaxmodels.generate import generate
from jaxmodels.layers import Linear, get_activation, param
from jaxmodels.llm import LLM
from jaxmodels.unified.config import UnifiedConfig
from jaxmodels.vision.vit import VisionTransformer, avg_pool_tokens


class Projector(nnx.Module):
  """[..., D_in] -> [..., D_out]: "linear", or "mlp2x_gelu" (Linear -> GELU -> Linear, LLaVA-style)."""

  def __init__(self, in_dim: int, out_dim: int, kind: str = "mlp2x_gelu", *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = Linear(in_dim, out_dim, axes=("embed", "mlp"), **kw)
    self.fc2 = Linear(out_dim, out_dim, axes=("mlp", "embed"), **kw) if kind == "mlp2x_gelu" else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.fc1(x)
    return h if self.fc2 is None else self.fc2(get_activation("gelu")(h))


def _encoder_tokens(encoder: VisionTransformer, images: jax.Array, pool: int, *, last_block: bool) -> jax.Array:
  """Patch tokens [B, N', D] of a ViT: class token dropped, optionally the last block's output
  without the final norm (BLIP3-o's target), a×a average pooled."""
  if last_block:
    tokens = encoder(images, output_hidden_states=True).hidden_states[-1]
  else:
    tokens = encoder(images)
  if encoder.config.is_clip:
    tokens = tokens[:, 1:]
  return avg_pool_tokens(tokens, pool) if pool > 1 else tokens


def splice_image_tokens(text: jax.Array, ids: jax.Array, image_tokens: jax.Array,
                        image_token_id: int) -> jax.Array:
  """text [B, T, D] with the i-th `image_token_id` placeholder of each row replaced by
  image_tokens[b, i] ([B, n, D]); rows must hold exactly n placeholders (extra ones repeat the last)."""
  is_img = ids == image_token_id
  index = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, image_tokens.shape[1] - 1)
  spliced = jnp.take_along_axis(image_tokens.astype(text.dtype), index[..., None], axis=1)
  return jnp.where(is_img[..., None], spliced, text)


def answer_loss(llm: LLM, embeds: jax.Array, ids: jax.Array, mask: jax.Array,
                loss_mask: jax.Array) -> tuple[jax.Array, dict]:
  """Next-token cross-entropy on the tokens where `loss_mask` is 1 (answers), from embeddings
  [B, T, D]; also token accuracy and whole-answer accuracy."""
  logits = llm(None, attention_mask=mask, inputs_embeds=embeds)[:, :-1]
  targets, weight = ids[:, 1:], loss_mask[:, 1:].astype(jnp.float32)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
  denom = jnp.maximum(weight.sum(), 1.0)
  loss = -(logp * weight).sum() / denom
  right = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  token_acc = (right * weight).sum() / denom
  answer_acc = jnp.mean(jnp.all((right > 0) | (weight == 0), axis=1))
  return loss, {"und_loss": loss, "und_token_acc": token_acc, "und_answer_acc": answer_acc}


class UnifiedModel(nnx.Module):
  """See the module docstring. `config` is a `UnifiedConfig`."""

  def __init__(self, config: UnifiedConfig, *, rngs: nnx.Rngs):
    self.config = c = config
    dtype, pdtype = jnp.dtype(c.llm.dtype), jnp.dtype(c.llm.param_dtype)
    kw = dict(dtype=dtype, param_dtype=pdtype, rngs=rngs)
    d = c.llm.hidden_size
    self.llm = LLM(c.llm, rngs=rngs)
    self.und_encoder = VisionTransformer(c.und_encoder, rngs=rngs) if c.und_encoder else None
    self.und_projector = (Projector(c.und_encoder.hidden_size, d, c.und_projector, **kw)
                          if c.und_encoder else None)
    self.gen_encoder = VisionTransformer(c.gen_encoder, rngs=rngs) if c.gen_encoder else None
    # BLIP3-o initialises its latent queries with randn.
    self.queries = param(rngs, nnx.initializers.normal(1.0), (c.num_queries, d), (None, "embed"), pdtype)
    self.connector = (Projector(d, c.dit.cross_attention_dim, "mlp2x_gelu", **kw)
                      if c.connector == "mlp" else None)
    self.dit = LuminaNextDiT(c.dit, rngs=rngs)

  # ---------------------------------------------------------------- understanding
  @property
  def num_image_tokens(self) -> int:
    """Placeholder tokens one image occupies in an understanding sequence."""
    enc = self.config.und_encoder
    return (enc.grid_size // self.config.und_pool) ** 2

  def image_tokens(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, 3] -> LLM-space image tokens [B, n, D]."""
    tokens = _encoder_tokens(self.und_encoder, images, self.config.und_pool, last_block=False)
    return self.und_projector(tokens)

  def und_embeddings(self, ids: jax.Array, images: jax.Array) -> jax.Array:
    """Token embeddings [B, T, D] with the i-th placeholder of a row replaced by its i-th image token."""
    return splice_image_tokens(self.llm.embed(ids), ids, self.image_tokens(images),
                               self.config.image_token_id)

  def understanding_loss(self, batch) -> tuple[jax.Array, dict]:
    embeds = self.und_embeddings(batch["und_ids"], batch["und_image"])
    return answer_loss(self.llm, embeds, batch["und_ids"], batch["und_mask"], batch["und_loss_mask"])

  def answer(self, images: jax.Array, ids: jax.Array, mask: jax.Array, max_new_tokens: int,
             **generate_kwargs) -> jax.Array:
    """Greedy (or sampled) answer tokens [B, max_new_tokens] for left-padded prompts with images."""
    embeds = self.und_embeddings(ids, images)
    out = generate(self.llm, ids, max_new_tokens, attention_mask=mask, inputs_embeds=embeds,
                   **generate_kwargs)
    return out[:, ids.shape[1]:]

  # ---------------------------------------------------------------- generation
  def condition(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Prompt [B, T] (left-padded) -> DiT condition [B, N, C] from the query positions."""
    b = ids.shape[0]
    n = self.config.num_queries
    prompt = self.llm.embed(ids)
    queries = jnp.broadcast_to(self.queries[...].astype(prompt.dtype)[None], (b, n, prompt.shape[-1]))
    embeds = jnp.concatenate([prompt, queries], axis=1)
    full_mask = jnp.concatenate([mask.astype(jnp.int32), jnp.ones((b, n), jnp.int32)], axis=1)
    positions = jnp.maximum(jnp.cumsum(full_mask, axis=1) - 1, 0)
    hidden = self.llm.forward(None, positions, full_mask, inputs_embeds=embeds).hidden[:, -n:]
    return hidden if self.connector is None else self.connector(hidden)

  def target(self, images: jax.Array) -> jax.Array:
    """Clean flow target x₀ [B, h, w, C] for images [B, H, W, 3] in [-1, 1]."""
    c = self.config
    if c.gen_target == "pixels":
      s = c.gen_image_size
      if images.shape[1:3] != (s, s):
        images = jax.image.resize(images, (images.shape[0], s, s, images.shape[-1]), "linear")
      return images
    tokens = _encoder_tokens(self.gen_encoder, images, c.gen_pool, last_block=True)
    g = int(round(tokens.shape[1] ** 0.5))
    return jax.lax.stop_gradient(tokens.reshape(tokens.shape[0], g, g, -1))

  def velocity(self, x: jax.Array, sigma: jax.Array, cond: jax.Array) -> jax.Array:
    return self.dit.velocity(x, sigma, cond)

  def generation_loss(self, batch, rng: jax.Array) -> tuple[jax.Array, dict]:
    c = self.config
    k_drop, k_sigma, k_noise = jax.random.split(rng, 3)
    cond = self.condition(batch["gen_ids"], batch["gen_mask"])
    cond = flow.drop_condition(k_drop, cond, c.cond_dropout, null="zeros")
    x0 = self.target(batch["gen_image"])
    sigmas = flow.sample_training_sigmas(k_sigma, x0.shape[0], c.sigma_sampling, shift=c.train_shift)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    v = self.velocity(flow.noisy_input(x0, noise, sigmas), sigmas, cond)
    loss = flow.flow_matching_loss(v, x0, noise)
    return loss, {"gen_loss": loss}

  def generate_image(self, ids: jax.Array, mask: jax.Array, rng: jax.Array, *, num_steps: int = 30,
                     guidance: float = 3.0, solver: str = "euler", shift: float = 1.0) -> jax.Array:
    """Samples targets [B, h, w, C] for prompts (pixels in [-1, 1] for the pixel target)."""
    c = self.config
    cond = self.condition(ids, mask)
    side = c.gen_image_size if c.gen_target == "pixels" else c.gen_encoder.grid_size // c.gen_pool
    x_init = jax.random.normal(rng, (ids.shape[0], side, side, c.target_channels), jnp.float32)

    def velocity_fn(x, t, cond_):
      return self.velocity(x, t / flow.NUM_TRAIN_TIMESTEPS, cond_)

    if guidance == 1.0:
      vfn = lambda x, t: velocity_fn(x, t, cond)  # noqa: E731
    else:
      vfn = flow.cfg_velocity_fn(velocity_fn, cond, jnp.zeros_like(cond), guidance)
    x = flow.sample(vfn, x_init, num_steps=num_steps, solver=solver, shift=shift)
    return jnp.clip(x, -1.0, 1.0) if c.gen_target == "pixels" else x

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
    return total, metrics
